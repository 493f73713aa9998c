"""How much does the cold start's label-bias estimate depend on its random anchor inputs?

    .venv/bin/python -m benchmarks.slm_data llm      # the LLM read-outs, cached (bench_slm's cache)
    .venv/bin/python benchmarks/bench_anchor_draws.py [--draws 4] [--sizes 16,64]

The cold start divides the model's own label bias out of its read-out (`bias_correction.
estimated_prior_bias`). That bias is the mean prediction on inputs without label evidence: the
fixed content-free strings and `DOMAIN_CONTEXT_INPUTS` (16) random bags of the project's tokens
(`LLMProvider.domain_context_inputs`, seeded). Per dataset this scores --draws independent draws of
each anchor count (seeds 0, 1, ...; seed 0 with 16 inputs is what the cold start and bench_slm's
cache use) and reports the corrected labels' accuracy and balanced accuracy on bench_slm's 1,500
texts (1,000 train + 500 test), and their spread over draws. Only the anchors are scored (the
texts' read-outs come from the cache). Prints tables and writes benchmarks/results/anchor_draws.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import print_table, write_results  # noqa: E402
from benchmarks.slm_data import CONFIGS, DEFAULT_CACHE, load_llm_raw, scoring_order, texts_and_gold  # noqa: E402
from ml_backend import bias_correction  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.metrics import balanced_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--sizes", default="16,64", help="numbers of random-token anchor inputs to compare")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from ml_backend.config import Settings
    from ml_backend.llm.default_model import ensure_default_model
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime
    from ml_backend.predictor import LabelScorer, PredictionOptions

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=args.threads)
    # as benchmarks.slm_data scores the cached read-outs
    scorer = LabelScorer(runtime, PredictionOptions(bias_calibration="none", max_text_tokens=256))
    rows, spread = [], []
    for dataset in args.datasets.split(","):
        target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text()).targets[0]
        texts, gold_names, label_names = texts_and_gold(dataset, args.train, args.test)
        gold = np.array([label_names.index(g) for g in gold_names])
        raw, _ = load_llm_raw(args.cache_dir, dataset, texts)
        task_texts = [scorer.task_text(t) for t in scoring_order(dataset, args.train, args.test)]
        content_free = scorer.raw_probabilities(target, list(bias_correction.CONTENT_FREE_INPUTS))
        for size in sizes:
            scores = []
            for seed in range(args.draws):
                bags = scorer.provider.domain_context_inputs(task_texts, n_inputs=size, seed=seed)
                anchors = np.vstack([content_free, scorer.raw_probabilities(target, bags)])
                predicted = bias_correction.divide_out_prior(
                    raw, bias_correction.estimated_prior_bias(raw, anchors)).argmax(axis=1)
                prior = bias_correction.estimate_label_prior(raw, bias_correction.anchor_bias(anchors))
                row = {"dataset": dataset, "anchors": size, "seed": seed, "accuracy": float((predicted == gold).mean()),
                       "balanced_accuracy": balanced_accuracy(gold, predicted),
                       "prior": "/".join(f"{p:.2f}" for p in prior)}
                rows.append(row)
                scores.append(row["balanced_accuracy"])
                print_table(f"{dataset}: {size} anchors, seed {seed}", [row])
            spread.append({"dataset": dataset, "anchors": size, "draws": len(scores),
                           "bal_acc_min": min(scores), "bal_acc_max": max(scores),
                           "bal_acc_range": max(scores) - min(scores), "bal_acc_sd": float(np.std(scores, ddof=1))})
    print_table("Corrected labels per anchor draw", rows)
    print_table("Spread of balanced accuracy over draws", spread)
    write_results("anchor_draws", {"draws": args.draws, "sizes": sizes, "rows": rows, "spread": spread})


if __name__ == "__main__":
    main()
