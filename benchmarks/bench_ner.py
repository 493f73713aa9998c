"""NER pre-annotation: entity-level quality, confidence quality and speed, ours vs a naive baseline.

    .venv/bin/python benchmarks/bench_ner.py [--tasks 50] [--shots 3]

For each of the shared English (CoNLL-2003) and Chinese (CLUENER) test sets, in one run on the
same model and the same generated answers:

* **ours**: generate candidates → align (all occurrences, boundaries) → score each span from
  logits (labels + none, one batched pass) → keep the generated label, region score =
  P(label). `ours (argmax)` is the "scored" policy: argmax label, spans where none wins dropped.
* **naive**: the same generated answers aligned the way most backends do (`str.find`, first
  exact occurrence, generated labels only), confidence = 1.0 for every region.

Metrics: nervaluate strict (exact span + label) and partial P/R/F1; AUROC of region scores for
"this region is exactly a gold entity" (a constant has AUROC 0.5); tasks/s (naive = generation
only, ours = generation + span scoring). Writes benchmarks/results/ner.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.metrics import auroc, ner_scores  # noqa: E402
from ml_backend.ner.alignment import align_proposals, first_occurrence_spans  # noqa: E402
from ml_backend.ner.extractor import NerExtractor, decide  # noqa: E402
from ml_backend.ner.prompts import demonstrations_from_rows  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402

NER_DATASETS = [("conll2003", "ner_en.xml"), ("cluener", "ner_zh.xml")]


def evaluate(rows, predicted, labels, seconds: float) -> dict:
    """predicted: per row a list of (start, end, label, score)."""
    gold = [[(e["start"], e["end"], e["label"]) for e in row["entities"]] for row in rows]
    scores = ner_scores(gold, [[p[:3] for p in row] for row in predicted], labels)
    region_scores, correct = [], []
    for gold_row, predicted_row in zip(gold, predicted):
        for start, end, label, score in predicted_row:
            region_scores.append(score)
            correct.append((start, end, label) in set(gold_row))
    return {
        "strict_p": scores["strict"]["precision"],
        "strict_r": scores["strict"]["recall"],
        "strict_f1": scores["strict"]["f1"],
        "partial_f1": scores["partial"]["f1"],
        "auroc": auroc(region_scores, correct) if region_scores else float("nan"),
        "regions": len(region_scores),
        "tasks_per_s": len(rows) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50, help="test texts per language")
    parser.add_argument("--shots", type=int, default=3, help="demonstrations from the train split (0 = zero-shot)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    runtime = LlamaCppRuntime(ensure_default_model(Path.home() / ".cache" / "ls-llm-backend"), n_threads=args.threads)
    extractor = NerExtractor(LabelScorer(runtime, PredictionOptions()))
    table, results = [], {}
    for dataset, config in NER_DATASETS:
        target = parse_label_config((REPO_ROOT / "labeling_configs" / config).read_text(encoding="utf-8")).span_targets[0]
        labels = target.result_values
        rows = load_split(dataset, "test", args.tasks)
        texts = [row["text"] for row in rows]
        demos = demonstrations_from_rows(load_split(dataset, "train"), target, args.shots)

        started = time.perf_counter()
        proposals = extractor.propose(target, texts, demonstrations=demos)
        generated_s = time.perf_counter() - started
        aligned = [align_proposals(text, p) for text, p in zip(texts, proposals)]
        started = time.perf_counter()
        probabilities, _p_any = extractor.score_spans(target, texts, [[s.surface for s in spans] for spans in aligned])
        scored_s = time.perf_counter() - started

        for text, spans in zip(texts, aligned):  # the contract every returned span must keep
            assert all(text[s.start : s.end] == s.surface for s in spans)

        methods = {}
        for name, policy in (("ours", "proposed"), ("ours (argmax)", "scored")):
            methods[name] = (
                [
                    [(e.start, e.end, e.label, e.score) for e in decide(spans, probs, target, policy=policy)]
                    for spans, probs in zip(aligned, probabilities)
                ],
                generated_s + scored_s,
            )
        methods["naive"] = (
            [
                [(s.start, s.end, s.label, 1.0) for s in first_occurrence_spans(text, [q for q in p if q.label])]
                for text, p in zip(texts, proposals)
            ],
            generated_s,
        )
        results[dataset] = {}
        for name, (predicted, seconds) in methods.items():
            metrics = evaluate(rows, predicted, labels, seconds)
            results[dataset][name] = metrics
            table.append({"dataset": dataset, "method": name, **metrics})
        print_table(f"NER on {dataset} ({len(rows)} test texts, {args.shots}-shot)", table[-3:])

    print_table("NER pre-annotation (all)", table)
    write_results(
        "ner",
        {
            "tasks_per_dataset": args.tasks,
            "shots": args.shots,
            "threads": args.threads,
            "model": runtime.name,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
