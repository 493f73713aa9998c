"""Bulk pre-annotation through one model server shared by rq workers vs one in-process worker.

    .venv/bin/python benchmarks/bench_topology.py [--tasks 40] [--projects 2] [--threads 2]

One Label Studio, in one run, the same sst2 texts and settings (the embedded defaults, cold start
included), each configuration given `--projects` fresh projects imported at the same moment (the
job runner runs one pre-annotation job per project, so several projects are what several workers
share). Measured: seconds from the import to every task of every project holding its final version.

* **2 workers + server**: `scripts/stack start` with `STACK_MODEL_SERVER=true STACK_WORKERS=2`
  (llama-cpp-python's, `ml_backend.llm.serve_gguf`, the backend and both workers scoring through it);
* **1 worker + server**: the same stack after one worker was stopped;
* **in-process**: a backend with the embedded in-process job runner and the model in its own
  process (what `make run` starts), pointed at the same Label Studio.

Every configuration gets the same `--threads` for llama.cpp (server or in-process). Ratios, not
seconds: the machine is shared. Writes benchmarks/results/topology.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402
from scripts import stack  # noqa: E402
from tests.integration.services import backend_process  # noqa: E402
from tests.integration.conftest import free_port  # noqa: E402

CONFIG = (REPO_ROOT / "labeling_configs" / "sentiment_en.xml").read_text(encoding="utf-8")


def finished(backend_url: str, project_id: int) -> bool:
    status = requests.get(f"{backend_url}/preannotate/status", params={"project": project_id}, timeout=10).json()
    return status.get("state") == "done" and not status.get("queued_job") and not status.get("running_job")


def stored_final(client, project_id: int, backend_url: str) -> int:
    version = requests.post(f"{backend_url}/setup", json={"project": str(project_id), "schema": CONFIG},
                            timeout=10).json()["model_version"]
    return len({p.task for p in client.predictions.list(project=project_id) if p.model_version == version})


def run(client, backend_url: str, label: str, batches: list[list[str]], timeout_s: float) -> dict:
    """Create one project per batch, connect them, import all at once; wait until each is done."""
    projects = []
    for number, texts in enumerate(batches):
        project = client.projects.create(title=f"bench topology {label} {number}", label_config=CONFIG)
        client.ml.create(url=backend_url, project=project.id, title="llm", is_interactive=False)
        projects.append((project.id, texts))
    started = time.perf_counter()
    for project_id, texts in projects:
        client.projects.import_tasks(id=project_id, request=[{"text": t} for t in texts])
    waiting = {project_id for project_id, _ in projects}
    while waiting and time.perf_counter() - started < timeout_s:
        waiting = {p for p in waiting if not finished(backend_url, p)}
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    total = sum(len(texts) for _, texts in projects)
    stored = sum(stored_final(client, project_id, backend_url) for project_id, _ in projects)
    print(f"[topology] {label}: {stored}/{total} tasks in {seconds:.1f} s", flush=True)
    return {"configuration": label, "tasks": total, "stored": stored, "seconds": round(seconds, 1),
            "tasks_per_s": round(stored / seconds, 3), "timed_out": bool(waiting)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40, help="tasks per project")
    parser.add_argument("--projects", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (server or in-process)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    from label_studio_sdk import LabelStudio

    texts = [row["text"] for row in load_split("sst2", "train", args.tasks * args.projects * 3)]
    chunks = [texts[i * args.tasks:(i + 1) * args.tasks] for i in range(args.projects * 3)]
    root = Path(tempfile.mkdtemp(prefix="bench-topology-"))
    env = {**os.environ, "STACK_DIR": str(root / "stack"), "STACK_PYTHON": sys.executable,
           "STACK_LS_PORT": str(free_port()), "STACK_REDIS_PORT": str(free_port()), "PORT": str(free_port()),
           "STACK_MODEL_SERVER": "true", "STACK_MODEL_SERVER_PORT": str(free_port()), "STACK_WORKERS": "2",
           "LLM_THREADS": str(args.threads), "RQ_QUEUE": f"bench-topology-{os.getpid()}"}
    env.pop("MODEL_DIR", None)
    config = stack.StackConfig.from_env(env)
    script = str(REPO_ROOT / "scripts" / "stack")
    rows = []
    try:
        started = subprocess.run([script, "start"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"scripts/stack start failed:\n{started.stdout}\n{started.stderr}")
        client = LabelStudio(base_url=config.ls_url, api_key=config.ls_token, timeout=300)
        per = args.projects
        rows.append(run(client, config.backend_url, "2 workers + server", chunks[0:per], args.timeout))
        os.killpg(stack.stack_pids(config)["worker-2"], signal.SIGTERM)
        time.sleep(5)
        rows.append(run(client, config.backend_url, "1 worker + server", chunks[per:2 * per], args.timeout))
        in_process = {key: value for key, value in config.backend_env().items()
                      if key not in ("REDIS_URL", "LLM_BASE_URL")}
        in_process["MODEL_DIR"] = str(root / "in_process_store")
        with backend_process(in_process, root / "in-process.log") as url:
            rows.append(run(client, url, "in-process (make run)", chunks[2 * per:], args.timeout))
    finally:
        subprocess.run([script, "stop"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    base = rows[-1]["tasks_per_s"]
    for row in rows:
        row["vs_in_process"] = round(row["tasks_per_s"] / base, 2) if base else None
    print_table(f"bulk pre-annotation, {args.projects} projects × {args.tasks} tasks, {args.threads} llama.cpp threads",
                rows)
    write_results("topology", {"tasks_per_project": args.tasks, "projects": args.projects, "threads": args.threads,
                               "cpus": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
