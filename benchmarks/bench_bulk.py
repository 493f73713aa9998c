"""Background pre-annotation, end to end: how many tasks per second reach Label Studio as stored
predictions (listing + scoring + bulk writes), and how fast a one-task /predict answers while
the job runs, against the same call on an idle backend.

    LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=<legacy token> \\
    .venv/bin/python benchmarks/bench_bulk.py [--sizes 300,1000] [--probe-interval 1.0]

Needs a running Label Studio 1.23 (started with USE_DEFAULT_BANNED_SUBNETS=false, so its
TASKS_CREATED webhook reaches our loopback backend) and the default model. Starts our backend
under gunicorn with the embedded in-process job runner, creates a project, connects the
backend and imports sst2 texts: the import webhook starts the job, nothing else. For each size:
time from the import to the first stored prediction (any, the provisional first page included), to
50% and 100% of the tasks holding the final version, when the cold start ended, the job's scoring
rate, and the end-to-end rate after the cold start as a fraction of it. Prints a table and writes
benchmarks/results/bulk.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402

LEGACY_TEST_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the token our test Label Studio uses
PROBE_TEXT = "An unexpectedly tender and funny film."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--config", "ml_backend/gunicorn_conf.py", "ml_backend.wsgi:app"],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"},
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"backend exited; see {log_path}")
        try:
            if requests.get(f"{url}/health", timeout=2).json().get("model_loaded"):
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"backend not ready; see {log_path}")


def predict_once(url: str, config: str, task_id: int) -> float:
    """A one-task /predict as Label Studio's page load sends it. No project: the probe measures
    scoring while the job runs, not the budget rules of the benchmark's project."""
    started = time.perf_counter()
    response = requests.post(
        f"{url}/predict",
        json={"tasks": [{"id": task_id, "data": {"text": PROBE_TEXT}}], "label_config": config},
        timeout=120,
    )
    response.raise_for_status()
    assert len(response.json()["results"]) == 1
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    values = np.asarray(samples)
    return {
        "n": len(samples),
        "p50_s": float(np.percentile(values, 50)),
        "p99_s": float(np.percentile(values, 99)),
        "max_s": float(values.max()),
    }


def stored_counts(ls, project_id: int) -> tuple[int, dict[str, int]]:
    """(tasks holding any prediction, tasks per model_version) as Label Studio has them now."""
    per_version: dict[str, set[int]] = {}
    tasks: set[int] = set()
    for prediction in ls.predictions.list(project=project_id):
        tasks.add(prediction.task)
        per_version.setdefault(prediction.model_version, set()).add(prediction.task)
    return len(tasks), {version: len(ids) for version, ids in per_version.items()}


def run_import(ls, url: str, config: str, texts: list[str], *, timeout_s: float, probe_interval: float) -> dict:
    """Create a project, connect the backend, import `texts`; follow until every task holds one
    prediction of the job's final version. Times are seconds from the import."""
    project = ls.projects.create(title=f"bench bulk {len(texts)}", label_config=config)
    ls.ml.create(url=url, project=project.id, title="llm", is_interactive=False)  # → /setup (no tasks yet)
    busy: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        i = 0
        while not stop.is_set():
            busy.append(predict_once(url, config, 2 * 10**9 + i))
            i += 1
            stop.wait(probe_interval)

    marks: dict[str, float] = {}
    phases: dict[str, float] = {}
    status: dict = {}
    started = time.perf_counter()
    for start in range(0, len(texts), 500):  # each import sends TASKS_CREATED
        ls.projects.import_tasks(id=project.id, request=[{"text": t} for t in texts[start : start + 500]])
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    last_ls_check = 0.0
    final_version = None
    try:
        while time.perf_counter() - started < timeout_s:
            now = time.perf_counter() - started
            status = requests.get(f"{url}/preannotate/status", params={"project": project.id}, timeout=10).json()
            phases.setdefault(status.get("phase") or "queued", now)
            if status.get("phase") == "predict":
                final_version = status.get("model_version")
            if now - last_ls_check >= 2.0 or status.get("state") == "done":
                last_ls_check = now
                any_stored, per_version = stored_counts(ls, project.id)
                if any_stored:
                    marks.setdefault("first", now)
                final = per_version.get(final_version, 0) if final_version else 0
                if final >= len(texts) / 2:
                    marks.setdefault("half", now)
                if final >= len(texts) and sum(per_version.values()) == len(texts):
                    marks.setdefault("all", now)
                    break
            time.sleep(1.0)
    finally:
        stop.set()
        prober.join(timeout=130)
    _, per_version = stored_counts(ls, project.id)
    predict_started = phases.get("predict", float("nan"))
    job_rate = status.get("rate") or float("nan")
    after_cold_start = marks.get("all", float("nan")) - predict_started
    n_after = len(texts)
    return {
        "tasks": len(texts),
        "first_s": marks.get("first", float("nan")),
        "half_s": marks.get("half", float("nan")),
        "all_s": marks.get("all", float("nan")),
        "cold_start_end_s": predict_started,
        "job_rate": job_rate,
        "e2e_rate_after_cold_start": n_after / after_cold_start if after_cold_start > 0 else float("nan"),
        "versions_stored": per_version,
        "busy_predict": percentiles(busy),
        "final_version": final_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="300,1000", help="comma-separated project sizes, one import each")
    parser.add_argument("--probe-interval", type=float, default=1.0, help="seconds between /predict probes")
    parser.add_argument("--idle-probes", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=3600, help="give up on one size after this many seconds")
    args = parser.parse_args()

    from label_studio_sdk import LabelStudio

    ls_url = os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080")
    token = os.environ.get("LABEL_STUDIO_API_KEY", LEGACY_TEST_TOKEN)
    ls = LabelStudio(base_url=ls_url, api_key=token)
    sizes = [int(size) for size in args.sizes.split(",")]
    # Disjoint texts per size: one backend process serves every run, and its scorer remembers what
    # it scored (the cold start's sample): a second project of the same texts would be free.
    texts = [row["text"] for row in load_split("sst2", "train", sum(sizes))]
    if len(texts) < sum(sizes):
        raise SystemExit(f"sst2 train has only {len(texts)} rows")
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    workdir = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    env = {"MODEL_DIR": str(workdir / "store"), "REDIS_URL": "", "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token}
    backend, url = start_backend(env, workdir / "backend.log")
    config = (REPO_ROOT / "labeling_configs" / "sentiment_en.xml").read_text(encoding="utf-8")
    try:
        predict_once(url, config, 10**9)  # warm the prompt prefix
        idle = [predict_once(url, config, 10**9 + i) for i in range(args.idle_probes)]
        runs = [
            run_import(ls, url, config, texts[offset : offset + size], timeout_s=args.timeout, probe_interval=args.probe_interval)
            for offset, size in zip(offsets, sizes)
        ]
    finally:
        backend.terminate()
        backend.wait(timeout=30)

    rows = []
    for run in runs:
        done_s = run["all_s"]
        scoring_only = run["tasks"] / run["job_rate"] if run["job_rate"] == run["job_rate"] else float("nan")
        rows.append(
            {
                "tasks": run["tasks"],
                "first stored (s)": round(run["first_s"], 1),
                "50% (s)": round(run["half_s"], 1),
                "100% (s)": round(done_s, 1),
                "cold start ends (s)": round(run["cold_start_end_s"], 1),
                "job rate (tasks/s)": round(run["job_rate"], 2),
                "e2e after cold start / job rate": round(run["e2e_rate_after_cold_start"] / run["job_rate"], 2),
                "100% / (tasks/rate + cold start)": round(done_s / (scoring_only + run["cold_start_end_s"]), 2),
            }
        )
    idle_stats = percentiles(idle)
    latency_rows = [
        {"/predict, 1 task": "idle backend", **_rounded(idle_stats)},
        *({"/predict, 1 task": f"while {run['tasks']} tasks are imported", **_rounded(run["busy_predict"])} for run in runs),
    ]
    print_table("Import → stored predictions (in-process runner, default model, cold start on)", rows)
    print_table("One-task /predict latency", latency_rows)
    write_results(
        "bulk",
        {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
            "settings": {"runner": "in-process", "model": "default", "llm_threads": os.environ.get("LLM_THREADS", "2")},
            "runs": runs,
            "table": rows,
            "predict_latency": {"idle": idle_stats},
            "goals": {"first_stored_s": "<= 60", "e2e_after_cold_start_over_job_rate": ">= 0.8"},
        },
    )


def _rounded(stats: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}


if __name__ == "__main__":
    main()
