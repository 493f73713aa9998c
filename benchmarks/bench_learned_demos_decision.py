"""Would the service adopt row (b)'s prompt? `training.learned_demos`' decision per set and k,
next to the gain that prompt showed on test.

    .venv/bin/python benchmarks/bench_learned_demos_decision.py [--ks 50,200] [--seed 0] [--demos 8]

Per dataset and k: the same k "human-labeled" train tasks as bench_learned_demos.py (seeded the
same way). The serving prompt is row (a)'s (zero-shot, prior-matched on these tasks); the service's
own evaluation (`evaluate_learned_demos`: two folds stratified by label, at most 160 tasks, each fold
under --demos demonstrations picked from the other's labels, bias-corrected as served) decides.
Printed next to row (b) − row (a) on the 300 test texts (benchmarks/results/learned_demos.json,
same seed and demos): adopting is right where the test gain is clearly positive, rejecting where it
is not. Also the evaluation's seconds and what re-scoring --train tasks would then cost at its pace.
Writes benchmarks/results/demo_decision.json (and each cell's distributions, to try other rules
offline, in the bench cache: demo_decision_<set>_k<k>.npz).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import RESULTS_DIR, print_table, write_results  # noqa: E402
from benchmarks.slm_data import CONFIGS, DEFAULT_CACHE, texts_and_gold  # noqa: E402


def test_gains(seed: int, n_demos: int) -> dict[tuple[str, int], float]:
    """Row (b) − row (a), balanced accuracy on test, from bench_learned_demos' results."""
    path = RESULTS_DIR / "learned_demos.json"
    if not path.exists():
        return {}
    results = json.loads(path.read_text())
    if results.get("seed") != seed or results.get("n_demos") != n_demos:
        return {}
    zero_shot = {r["dataset"]: r["balanced_accuracy"] for r in results["rows"] if r["k"] == 0}
    return {(r["dataset"], r["k"]): r["balanced_accuracy"] - zero_shot[r["dataset"]]
            for r in results["rows"] if r["k"] > 0 and r["dataset"] in zero_shot}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="the project's tasks (human labels drawn from them)")
    parser.add_argument("--ks", default="50,200")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=int, default=8)
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from ml_backend.config import Settings
    from ml_backend.encoders import load_encoder
    from ml_backend.label_config import parse_label_config
    from ml_backend.llm.default_model import ensure_default_model
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime
    from ml_backend.predictor import LabelScorer, PredictionOptions
    from training.learned_demos import corrected_under, evaluate_learned_demos

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=args.threads)
    scorer = LabelScorer(runtime, PredictionOptions(bias_calibration="prior_matching", max_text_tokens=256),
                         memo_size=4096)
    encoder = load_encoder("embeddinggemma")
    gains = test_gains(args.seed, args.demos)
    rows = []
    for dataset in args.datasets.split(","):
        target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text()).targets[0]
        texts, gold_names, label_names = texts_and_gold(dataset, args.train, 0)
        gold = np.array([label_names.index(g) for g in gold_names])
        for k in [int(k) for k in args.ks.split(",")]:
            chosen = np.random.default_rng(1000 + args.seed).choice(args.train, size=k, replace=False)
            labeled = [texts[i] for i in chosen]  # the project's human-labeled tasks (the rest play no part)
            started = time.perf_counter()
            serving, _ = corrected_under(scorer, target, labeled, ())
            serving_s = time.perf_counter() - started
            evaluation = evaluate_learned_demos(scorer, target, labeled, encoder.encode(labeled), gold[chosen], serving,
                                                k=args.demos, seed=args.seed)
            DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
            learned = np.stack([evaluation.cross_fitted[i] for i in sorted(evaluation.cross_fitted)])
            np.savez(DEFAULT_CACHE / f"demo_decision_{dataset}_k{k}.npz", gold=gold[chosen], serving=serving,
                     rows=np.array(sorted(evaluation.cross_fitted)), learned=learned)  # to study other rules offline
            gain = gains.get((dataset, k))
            rows.append({"dataset": dataset, "k": k, "n_eval": evaluation.n_eval,
                         "bal_serving": evaluation.balanced_accuracy_serving,
                         "bal_learned": evaluation.balanced_accuracy_learned, "won": evaluation.wins,
                         "lost": evaluation.losses, "p": evaluation.p_value,
                         "decision": "adopt" if evaluation.adopt else "keep",
                         "test_gain": gain if gain is not None else float("nan"),
                         "eval_s": evaluation.seconds,
                         "rescore_estimate_s": args.train * evaluation.seconds_per_task,
                         "zero_shot_s_per_task": serving_s / k})
            print(f"[decision] {dataset} k={k}: {evaluation.reason}", flush=True)
    print_table("Round two's decision (cross-fitted on the k human labels) vs the gain on 300 test texts", rows)
    write_results("demo_decision", {"seed": args.seed, "n_demos": args.demos, "rows": rows})


if __name__ == "__main__":
    main()
