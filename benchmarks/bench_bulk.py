"""Background pre-annotation, end to end: how many tasks per second reach Label Studio as stored
predictions (listing + scoring + bulk writes), and how fast a one-task /predict answers while
the job runs, against the same call on an idle backend.

    LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=<legacy token> \\
    .venv/bin/python benchmarks/bench_bulk.py [--tasks 1000] [--probe-interval 1.0]

Needs a running Label Studio 1.23 (started with USE_DEFAULT_BANNED_SUBNETS=false, so its
TASKS_CREATED webhook reaches our loopback backend) and the default model. Starts our backend
under gunicorn with the embedded in-process job runner, creates a project, connects the
backend and imports sst2 texts: the import webhook starts the job, nothing else. Prints a
table and writes benchmarks/results/bulk.json.
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


def predict_once(url: str, project_id: int, task_id: int) -> float:
    started = time.perf_counter()
    response = requests.post(
        f"{url}/predict",
        json={"tasks": [{"id": task_id, "data": {"text": PROBE_TEXT}}], "project": f"{project_id}.1"},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--probe-interval", type=float, default=1.0, help="seconds between /predict probes")
    parser.add_argument("--idle-probes", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="give up after this many seconds")
    args = parser.parse_args()

    from label_studio_sdk import LabelStudio

    ls_url = os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080")
    token = os.environ.get("LABEL_STUDIO_API_KEY", LEGACY_TEST_TOKEN)
    ls = LabelStudio(base_url=ls_url, api_key=token)
    texts = [row["text"] for row in load_split("sst2", "train", args.tasks)]
    if len(texts) < args.tasks:
        raise SystemExit(f"sst2 train has only {len(texts)} rows")

    workdir = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    env = {"MODEL_DIR": str(workdir / "store"), "REDIS_URL": "", "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token}
    backend, url = start_backend(env, workdir / "backend.log")
    try:
        config = (REPO_ROOT / "labeling_configs" / "sentiment_en.xml").read_text(encoding="utf-8")
        project = ls.projects.create(title=f"bench bulk {args.tasks}", label_config=config)
        ls.ml.create(url=url, project=project.id, title="llm", is_interactive=False)
        version = requests.post(f"{url}/setup", json={"project": str(project.id), "schema": config}, timeout=10).json()[
            "model_version"
        ]

        predict_once(url, project.id, 10**9)  # warm the project's prompt prefix
        idle = [predict_once(url, project.id, 10**9 + i) for i in range(args.idle_probes)]

        busy: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            i = 0
            while not stop.is_set():
                busy.append(predict_once(url, project.id, 2 * 10**9 + i))
                i += 1
                stop.wait(args.probe_interval)

        started = time.perf_counter()
        for start in range(0, len(texts), 500):  # Label Studio imports; each import sends TASKS_CREATED
            ls.projects.import_tasks(id=project.id, request=[{"text": t} for t in texts[start : start + 500]])
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        status: dict = {}
        while time.perf_counter() - started < args.timeout:
            status = requests.get(f"{url}/preannotate/status", params={"project": project.id}, timeout=10).json()
            # The first job's cold start changes the version /setup announced: follow the job's version.
            job_version = status.get("model_version")
            version = job_version or version
            job_idle = (
                status.get("state") == "done"
                and job_version is not None
                and not status.get("queued_job")
                and not status.get("running_job")
            )
            # Progress counts one run (each import starts its own): ask Label Studio what it holds.
            if job_idle and len({p.task for p in ls.predictions.list(project=project.id) if p.model_version == version}) >= args.tasks:
                break
            time.sleep(5 if job_idle else 1)
        elapsed = time.perf_counter() - started
        stop.set()
        prober.join(timeout=130)

        stored = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
        covered = len({p.task for p in stored})
        if covered != args.tasks:
            print(f"warning: {covered}/{args.tasks} tasks hold a {version} prediction", file=sys.stderr)
    finally:
        backend.terminate()
        backend.wait(timeout=30)

    idle_stats, busy_stats = percentiles(idle), percentiles(busy)
    rows = [
        {
            "tasks": args.tasks,
            "covered": covered,
            "import→all stored (s)": round(elapsed, 1),
            "tasks/s end to end": round(covered / elapsed, 3),
            "job rate (tasks/s)": round(status.get("rate") or float("nan"), 3),
        }
    ]
    latency_rows = [
        {"/predict, 1 task": "idle backend", **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in idle_stats.items()}},
        {"/predict, 1 task": "while the job runs", **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in busy_stats.items()}},
    ]
    print_table("Bulk pre-annotation, end to end (in-process runner, default model)", rows)
    print_table("One-task /predict latency", latency_rows)
    write_results(
        "bulk",
        {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
            "settings": {"runner": "in-process", "model": "default", "llm_threads": os.environ.get("LLM_THREADS", "2")},
            "throughput": rows[0],
            "predict_latency": {"idle": idle_stats, "while_job_runs": busy_stats},
            "model_version": version,
        },
    )


if __name__ == "__main__":
    main()
