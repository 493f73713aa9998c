"""The training loop's cost: a retrain of a project's tasks, webhook → new version on every task,
`/predict` latency while training runs, peak memory with the LLM and the encoder in one process.

    .venv/bin/python benchmarks/bench_training.py [--dataset sst2] [--tasks 2000] [--human 200]

What runs is the product's own path, in one process: the app (in-process job runner), a
`START_TRAINING` webhook, the training job (`training.job`), the publication, the pre-annotation
job writing every unlabeled task (a publication always starts it; PREANNOTATE_AUTO is off only so
that connecting does not pre-annotate with the LLM first) — against an in-memory Label Studio (the unit tests' fake), so
Label Studio's own HTTP time is not counted. The LLM's label distributions are *cached* before
the run (as the pre-annotation job leaves them): here they are synthetic (the gold label with
probability 0.75, else a random one, with a random confidence), because this benchmark measures
time, not accuracy (benchmarks/bench_slm.py measures accuracy on the real LLM's distributions).
The encoder is real (EmbeddingGemma by default): run 1 embeds every task (nothing cached),
run 2 retrains after 10 more annotations (embeddings cached: what every later retrain costs).
`/predict` of one task (the real default LLM; a text outside the project, so it is really scored)
is timed idle and while each run goes on. Ratios matter, not seconds: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import DATASETS, load_split, print_table, write_results  # noqa: E402
from ml_backend.app import create_app  # noqa: E402
from ml_backend.config import Settings  # noqa: E402
from ml_backend.llm.default_model import DEFAULT_MODEL_FILE, ensure_default_model  # noqa: E402
from ml_backend.llm_cache import LLMDistributionCache  # noqa: E402
from ml_backend.versioning import llm_version  # noqa: E402
from ml_backend.wiring import build_services  # noqa: E402
from tests.fakes import FakeLabelStudio  # noqa: E402

PROJECT = "1.1796000000"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def synthetic_distributions(gold: list[int], n_labels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((len(gold), n_labels))
    for row, label in enumerate(gold):
        chosen = label if rng.uniform() < 0.75 else int(rng.integers(n_labels))
        top = rng.uniform(1.0 / n_labels + 0.05, 0.99)
        out[row] = (1 - top) / max(1, n_labels - 1)
        out[row, chosen] = top
    return out


class PredictProbe:
    """Times one-task /predict calls in a thread until stopped."""

    def __init__(self, client, label_config: str) -> None:
        self.client, self.label_config = client, label_config
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            task = {"id": 10**9 + i, "data": {"text": f"Probe review number {i}: a film I will not forget."}}
            started = time.perf_counter()
            self.client.post("/predict", json={"tasks": [task], "project": PROJECT, "label_config": self.label_config})
            self.samples.append(time.perf_counter() - started)
            self._stop.wait(0.5)

    def start(self) -> "PredictProbe":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=60)
        values = np.array(self.samples) if self.samples else np.array([np.nan])
        return {"n": len(self.samples), "p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sst2", choices=[name for name, _ in DATASETS])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--human", type=int, default=200, help="tasks with a human label (gold)")
    parser.add_argument("--encoder", default="embeddinggemma")
    args = parser.parse_args()

    config_name = dict(DATASETS)[args.dataset]
    label_config = (REPO_ROOT / "labeling_configs" / config_name).read_text(encoding="utf-8")
    rows = load_split(args.dataset, "train", args.tasks)
    real = Settings()
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    cache = work / "cache"  # a fresh embedding cache: run 1 embeds every task
    cache.mkdir()
    os.symlink(ensure_default_model(real.cache_dir), cache / DEFAULT_MODEL_FILE)
    settings = real.model_copy(update={
        "model_dir": work / "store", "cache_dir": cache, "slm_encoder_dir": real.encoder_dir(),
        "slm_encoder": args.encoder, "redis_url": None, "preannotate_auto": False, "preannotate_first_page": 0,
        "demonstrations": 0, "bias_calibration": "content_free", "job_retries": 0,
    })
    fake = FakeLabelStudio.with_texts([row["text"] for row in rows])
    services = build_services(settings, client_factory=lambda state: fake)
    client = create_app(services=services).test_client()
    client.post("/setup", json={"project": PROJECT, "schema": label_config})
    services.runner.wait_idle(60)
    profile = services.profiles.resolve(PROJECT)
    target = profile.spec.classification_targets[0]
    labels = target.result_values
    gold = [labels.index(row["label"]) for row in rows]
    LLMDistributionCache(services.kv, ttl_s=3600).put(
        PROJECT, llm_version(profile.version), target.from_name,
        [(task_id, row["text"], p) for task_id, row, p in zip(fake.task_data, rows, synthetic_distributions(gold, len(labels)))],
    )
    human = np.random.default_rng(0).choice(list(fake.task_data), size=args.human, replace=False)
    for task_id in human:
        fake.annotate(int(task_id), labels[gold[int(task_id) - 1]], from_name=target.from_name)
    services.inference.runtime  # the LLM loaded, as in a serving process
    idle = PredictProbe(client, label_config).start()
    time.sleep(15)
    results = {"idle": idle.stop()}
    table = []
    for run, more in (("1: first (embeds every task)", 0), ("2: retrain (embeddings cached)", 10)):
        unlabeled_before = [t for t in fake.task_data if not fake.annotations.get(t)]
        for task_id in unlabeled_before[:more]:
            fake.annotate(task_id, labels[gold[task_id - 1]], from_name=target.from_name)
        probe = PredictProbe(client, label_config).start()
        started = time.perf_counter()
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        services.runner.wait_idle(3600)
        services.runner.wait_idle(3600)
        total = time.perf_counter() - started
        latency = probe.stop()
        status = services.retraining.status(PROJECT)
        version = services.bulk.status(PROJECT)["model_version"]
        unlabeled = [t for t in fake.task_data if not fake.annotations.get(t)]
        covered = sum(1 for t in unlabeled if version in {p["model_version"] for p in fake.predictions.values() if p["task"] == t})
        timings = status.get("timings_s", {})
        train_s = sum(timings.values())
        table.append({
            "run": run, "state": status.get("state"), "train_s": round(train_s, 1), **{f"{k}_s": v for k, v in timings.items()},
            "webhook_to_every_task_s": round(total, 1), "tasks_covered": f"{covered}/{len(unlabeled)}",
            "predict_p50_s": round(latency["p50_s"], 2), "predict_p99_s": round(latency["p99_s"], 2),
            "predict_p99_vs_idle": round(latency["p99_s"] / results["idle"]["p99_s"], 2),
        })
        results[run] = {"status": status, "predict": latency, "total_s": total, "covered": covered}
    results["peak_rss_gb"] = peak_rss_gb()
    print_table(f"Training loop ({args.dataset}, {args.tasks} tasks, {args.human} human labels, encoder {args.encoder})", table)
    print(f"\n/predict idle: p50 {results['idle']['p50_s']:.2f} s, p99 {results['idle']['p99_s']:.2f} s "
          f"({results['idle']['n']} calls); peak RSS (LLM + encoder + app): {results['peak_rss_gb']:.2f} GB")
    write_results("training", {"dataset": args.dataset, "tasks": args.tasks, "human": args.human,
                               "encoder": args.encoder, "rows": table, "details": results})


if __name__ == "__main__":
    main()
