"""Row (b) of the SLM benchmark: the LLM with demonstrations learned from human labels (CORAL round 2).

    .venv/bin/python benchmarks/bench_learned_demos.py [--test 300] [--ks 200,50] [--seed 0] [--demos 8]

Per dataset and k: the same k "human-labeled" train tasks as bench_slm.py (seeded the same way);
`training.demo_selection.select_learned_demos` picks --demos of them (per-label k-medoids on the
EmbeddingGemma vectors, balanced, short texts first); the first --test test texts are scored by the
default LLM with those demonstrations in the prompt, and compared with (a), the same LLM zero-shot,
on the same texts, both with estimated-prior matching fit on those texts (so the two rows differ
only in the prompt). Also measured side by side: tasks/s of the two prompts on the same 25 texts
(each prompt warmed first, then alternated, best of two)
(the cost of a new prompt is re-scoring every task with it). Needs bench_slm's caches
(`benchmarks.slm_data llm` and `embed`); the scored rows are cached too, so a rerun resumes.
Prints a table and writes benchmarks/results/learned_demos.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import print_table, write_results  # noqa: E402
from benchmarks.bench_slm import CachedVectorsOnly, quality  # noqa: E402
from benchmarks.slm_data import CONFIGS, DEFAULT_CACHE, _save_npz, load_llm_raw, scoring_order, texts_and_gold  # noqa: E402
from training.demo_selection import select_learned_demos  # noqa: E402

CHUNK = 25


def scored_with_demos(scorer, target, texts: list[str], demos, path: Path, label: str) -> np.ndarray:
    """Raw LLM distributions of ``texts`` under the prompt with ``demos``, resumable from ``path``."""
    rows = dict(np.load(path, allow_pickle=False)) if path.exists() else {}
    rows = {str(k): v for k, v in rows.items()}
    todo = [i for i in range(len(texts)) if f"t{i}" not in rows]
    started = time.perf_counter()
    for start in range(0, len(todo), CHUNK):
        batch = todo[start:start + CHUNK]
        raw = scorer.raw_probabilities(target, [scorer.task_text(texts[i]) for i in batch], demonstrations=demos)
        rows.update({f"t{i}": r for i, r in zip(batch, raw)})
        _save_npz(path, **rows)
        done = start + len(batch)
        print(f"[demos] {label}: {done}/{len(todo)} scored ({done / (time.perf_counter() - started):.2f} tasks/s)",
              flush=True)
    return np.stack([rows[f"t{i}"] for i in range(len(texts))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="the project's tasks (human labels drawn from them)")
    parser.add_argument("--test", type=int, default=300, help="test texts scored with each learned prompt")
    parser.add_argument("--ks", default="200,50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=int, default=8)
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()

    from ml_backend import bias_correction
    from ml_backend.config import Settings
    from ml_backend.encoders import EmbeddingCache, embed_texts, embeddinggemma_encoder_id
    from ml_backend.label_config import parse_label_config
    from ml_backend.llm.default_model import ensure_default_model
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime
    from ml_backend.llm.prompts import Demonstration
    from ml_backend.predictor import LabelScorer, PredictionOptions

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=args.threads)
    scorer = LabelScorer(runtime, PredictionOptions(bias_calibration="none", max_text_tokens=256))
    encoder = CachedVectorsOnly(embeddinggemma_encoder_id(), 768)
    rows, costs = [], []
    for dataset in args.datasets.split(","):
        target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text()).targets[0]
        texts, gold_names, label_names = texts_and_gold(dataset, args.train, args.test)
        gold = np.array([label_names.index(g) for g in gold_names])
        train, test = np.arange(args.train), np.arange(args.train, len(texts))
        test_texts = [texts[i] for i in test]
        X_train = embed_texts(encoder, [texts[i] for i in train], EmbeddingCache(args.cache_dir / "embeddings"))
        raw_zero_shot, _ = load_llm_raw(args.cache_dir, dataset, test_texts)
        anchor_texts = list(bias_correction.CONTENT_FREE_INPUTS) + scorer.provider.domain_context_inputs(
            [scorer.task_text(t) for t in scoring_order(dataset, args.train, 500)])
        anchors = scorer.raw_probabilities(target, anchor_texts)  # the same anchors as (b), zero-shot
        a = bias_correction.prior_matching(raw_zero_shot, raw_zero_shot, anchor_probabilities=anchors)
        rows.append({"dataset": dataset, "k": 0, "row": "(a) LLM zero-shot", **quality(gold[test], a), "demos": ""})
        prompt_for_cost = None
        lengths = np.array([len(texts[i]) for i in train])
        for k in [int(k) for k in args.ks.split(",")]:
            human = np.full(args.train, -1)
            chosen = np.random.default_rng(1000 + args.seed).choice(args.train, size=k, replace=False)
            human[chosen] = gold[train][chosen]
            picked = select_learned_demos(X_train, human, k=args.demos, lengths=lengths, seed=args.seed)
            demos = tuple(Demonstration(text=texts[i], labels=(target.options[human[i]].prompt_name,)) for i in picked)
            prompt_for_cost = prompt_for_cost or demos
            tag = f"{dataset}_k{k}_s{args.seed}_d{args.demos}"
            raw_b = scored_with_demos(scorer, target, test_texts, demos,
                                      args.cache_dir / f"learned_demos_{tag}.npz", f"{dataset} k={k}")
            anchors_b = scorer.raw_probabilities(target, anchor_texts, demonstrations=demos)
            b = bias_correction.prior_matching(raw_b, raw_b, anchor_probabilities=anchors_b)
            rows.append({"dataset": dataset, "k": k, "row": "(b) LLM + learned demos", **quality(gold[test], b),
                         "demos": "/".join(str(int(human[i])) for i in picked)})
        if prompt_for_cost:
            sample = [scorer.task_text(t) for t in test_texts[:CHUNK]]
            prompts = (("zero-shot", ()), ("learned demos", prompt_for_cost))
            for _, demos in prompts:  # warm: the first call under a prompt evaluates its shared prefix
                scorer.raw_probabilities(target, sample[:1], demonstrations=demos)
            seconds: dict[str, list[float]] = {name: [] for name, _ in prompts}
            for _ in range(2):  # alternated, best of two: a shared machine's noise hits both
                for name, demos in prompts:
                    started = time.perf_counter()
                    scorer.raw_probabilities(target, sample, demonstrations=demos)
                    seconds[name].append(time.perf_counter() - started)
            timing = {name: len(sample) / min(values) for name, values in seconds.items()}
            costs.append({"dataset": dataset, "tasks_per_s_zero_shot": timing["zero-shot"],
                          "tasks_per_s_learned_demos": timing["learned demos"],
                          "slowdown": timing["zero-shot"] / timing["learned demos"]})
        print_table(f"LLM with learned demonstrations on {dataset} ({len(test)} test texts)",
                    [r for r in rows if r["dataset"] == dataset])
    print_table("Cost of the learned prompt (same 25 texts, side by side)", costs)
    write_results("learned_demos", {"seed": args.seed, "n_demos": args.demos, "rows": rows, "cost": costs})


if __name__ == "__main__":
    main()
