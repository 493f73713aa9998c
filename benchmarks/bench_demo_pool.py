"""Does choosing the cold start's demonstrations from a smaller pool cost quality? (issue 17)

    .venv/bin/python benchmarks/bench_demo_pool.py [--tasks 150] [--threads 2] [--datasets sst2,ag_news,chnsenticorp]

The service's cold start reads up to COLD_START_TASKS tasks under the final prompt (for the label
bias, and those scores are what the job writes), but scores only a *demonstration pool* zero-shot
to choose the 8 self-labeled demonstrations from: 8 candidates per demonstration, at least 64
(`cold_start.demonstration_pool_size`). This compares that rule with the old one (the whole
sample as the pool) on the same tasks, through the service's own `learn_target` and the
default correction: accuracy and balanced accuracy on the tasks not picked as demonstrations,
and how many tasks each rule scores before the final pass. Prints a table and writes
benchmarks/results/demo_pool.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import DATASETS, load_split, print_table, write_results  # noqa: E402
from ml_backend.cold_start import (  # noqa: E402
    cold_start_of,
    cold_start_targets,
    demonstration_pool_size,
    learn_target,
)
from ml_backend.config import Settings  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.model_store import ProjectState  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402

N_DEMONSTRATIONS = 8


def evaluate(scorer: LabelScorer, target, texts: list[str], gold: np.ndarray, learned: dict) -> dict:
    state = ProjectState(project_id="bench", cold_start={"basis": None, "targets": {target.from_name: learned}})
    cold = cold_start_of(state)[target.from_name]
    demo_texts = {d.text for d in cold.demonstrations}
    keep = np.array([text not in demo_texts for text in texts])
    probabilities = scorer.probabilities(
        target, texts, demonstrations=cold.demonstrations, label_bias=cold.label_bias
    )  # the final pass is in the scorer's memo: nothing is scored again
    predicted = probabilities.argmax(axis=1)[keep]
    truth = gold[keep]
    recalls = [np.mean(predicted[truth == label] == label) for label in np.unique(truth)]
    return {"accuracy": float(np.mean(predicted == truth)), "balanced_accuracy": float(np.mean(recalls)), "n": int(keep.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", default=",".join(name for name, _ in DATASETS))
    args = parser.parse_args()

    settings = Settings()
    runtime = LlamaCppRuntime(ensure_default_model(settings.cache_dir), n_ctx=2048, n_threads=args.threads, name="default")
    rows = []
    for dataset, config_name in DATASETS:
        if dataset not in args.datasets.split(","):
            continue
        spec = parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text(encoding="utf-8"))
        (target,) = cold_start_targets(spec)
        data = load_split(dataset, "test", args.tasks)
        texts = [row["text"] for row in data]
        index = {option.result_value: i for i, option in enumerate(target.options)}
        gold = np.array([index[row["label"]] for row in data])
        scorer = LabelScorer(runtime, PredictionOptions(), memo_size=10 * len(texts))
        for rule, pool in (
            ("rule: 8 per demonstration, >= 64", demonstration_pool_size(len(texts), N_DEMONSTRATIONS)),
            ("whole sample (before)", len(texts)),
        ):
            started = time.perf_counter()
            learned = learn_target(scorer, target, texts, N_DEMONSTRATIONS, pool_size=pool)
            seconds = time.perf_counter() - started
            rows.append({"dataset": dataset, "demonstration pool": rule, "pool tasks": pool,
                         **evaluate(scorer, target, texts, gold, learned), "cold start s (memo warm for 2nd)": round(seconds, 1)})
            print(rows[-1], flush=True)
    print_table("Demonstration pool size: quality of the service's cold start (default correction, 8 demos)", rows)
    write_results("demo_pool", {"tasks": args.tasks, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
