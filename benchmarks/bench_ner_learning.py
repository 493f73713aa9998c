"""NER projects learning from their annotations: F1 with 0, 20 and 50 annotated tasks.

    .venv/bin/python benchmarks/bench_ner_learning.py [--tasks 20] [--annotated 0,20,50] [--k 3]

For CoNLL-2003 (English) and CLUENER (Chinese): the first K train rows stand for the project's
annotated tasks (their gold entities as annotations). The served path is used as it is: their
encoder embeddings form the version's examples (`slm_model.NerExamples`), and each test text's
prompt shows its `--k` nearest examples (`refinement.nearest_demonstrations`), then the
extractor generates, aligns and scores spans (`NerExtractor.predict`, default policy). K = 0 is
today's zero-shot prompt. Metrics: strict (exact span + label) and partial F1 (nervaluate).
Goal (issue 11): F1 with 50 annotated tasks ≥ 2 × F1 with none, on both sets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402
from ml_backend.config import Settings  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.metrics import ner_scores  # noqa: E402
from ml_backend.ner.extractor import NerExtractor  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402
from ml_backend.refinement import Encoders, nearest_demonstrations  # noqa: E402
from ml_backend.slm_model import NerExamples  # noqa: E402

NER_DATASETS = [("conll2003", "ner_en.xml"), ("cluener", "ner_zh.xml")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20, help="test texts per language")
    parser.add_argument("--annotated", default="0,20,50", help="numbers of annotated tasks to compare")
    parser.add_argument("--k", type=int, default=3, help="nearest examples per prompt (NER_DEMONSTRATIONS)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(part) for part in args.annotated.split(",")]

    settings = Settings()
    runtime = LlamaCppRuntime(ensure_default_model(settings.cache_dir), n_threads=args.threads)
    extractor = NerExtractor(LabelScorer(runtime, PredictionOptions()))
    encoders = Encoders(settings)
    table, results = [], {}
    for dataset, config in NER_DATASETS:
        target = parse_label_config((REPO_ROOT / "labeling_configs" / config).read_text(encoding="utf-8")).span_targets[0]
        labels = target.result_values
        rows = load_split(dataset, "test", args.tasks)
        texts = [row["text"] for row in rows]
        gold = [[(e["start"], e["end"], e["label"]) for e in row["entities"]] for row in rows]
        pool = load_split(dataset, "train", max(sizes))
        pool_embeddings = encoders.embed([row["text"] for row in pool]) if max(sizes) else None
        test_embeddings = encoders.embed(texts)
        results[dataset] = {}
        for size in sizes:
            per_text = None
            if size:
                examples = NerExamples(
                    version="bench", manifest={"target": target.from_name}, texts=[row["text"] for row in pool[:size]],
                    entities=[[(row["text"][e["start"]:e["end"]], e["label"]) for e in sorted(row["entities"], key=lambda e: e["start"])]
                              for row in pool[:size]],
                    embeddings=pool_embeddings[:size],
                )
                per_text = nearest_demonstrations(examples, target, test_embeddings, texts, args.k)
            started = time.perf_counter()
            predicted = extractor.predict(target, texts, per_text_demonstrations=per_text)
            seconds = time.perf_counter() - started
            scores = ner_scores(gold, [[(e.start, e.end, e.label) for e in p.entities] for p in predicted], labels)
            row = {"dataset": dataset, "annotated": size, "strict_f1": scores["strict"]["f1"],
                   "partial_f1": scores["partial"]["f1"], "strict_p": scores["strict"]["precision"],
                   "strict_r": scores["strict"]["recall"], "tasks_per_s": len(texts) / seconds}
            table.append(row)
            results[dataset][str(size)] = row
            print_table(f"NER {dataset}: {size} annotated tasks", [row])
        zero, most = results[dataset].get("0"), results[dataset].get(str(max(sizes)))
        if zero and most:
            ratio = most["strict_f1"] / zero["strict_f1"] if zero["strict_f1"] else float("inf")
            results[dataset]["goal"] = {"f1_ratio": ratio, "met": bool(ratio >= 2.0)}
    print_table(f"NER with annotated tasks as nearest demonstrations ({args.tasks} test texts, k={args.k})", table)
    for dataset, _ in NER_DATASETS:
        goal = results[dataset].get("goal")
        if goal:
            print(f"{dataset}: strict F1 at {max(sizes)} / at 0 = {goal['f1_ratio']:.2f} (goal >= 2: {'met' if goal['met'] else 'not met'})")
    write_results("ner_learning", {"tasks_per_dataset": args.tasks, "annotated": sizes, "k": args.k,
                                   "model": runtime.name, "encoder": settings.slm_encoder, "results": results})


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
