"""`make demo`: Label Studio and the backend on the embedded defaults, with two pre-annotated projects.

    make demo          (= .venv/bin/python scripts/demo.py start)   set up, start, create, wait, print
    make demo-stop     (= .venv/bin/python scripts/demo.py stop)    stop what `make demo` started

It runs the stack without Redis (`scripts/stack.py`, `STACK_REDIS=false`, folder `.demo/`): Label
Studio from its own venv with its SSRF guard lifted for the backend on loopback, and the backend with
its in-process job runner and embedded model. Then, through Label Studio's API (label-studio-sdk),
two projects — English news topics and Chinese hotel-review sentiment, 200 tasks each from the
samples in `demo/data/` — are created, get their tasks and are connected to the backend, whose
background job pre-annotates every task. A progress bar follows that job; at the end the URL, the
login and what to look at are printed. Running it again reuses what exists (projects are found by
title, tasks imported once, the connection made once).

Ports: `DEMO_LS_PORT` (8080) for Label Studio, `PORT` (9090) for the backend; `DEMO_DIR` (.demo) the
folder of pid files, logs and data; `DEMO_TASKS` (all) tasks per project.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from scripts import stack  # noqa: E402

DEMO_DIR = Path(os.environ.get("DEMO_DIR") or REPO_ROOT / ".demo").resolve()
DEMO_TASKS = int(os.environ.get("DEMO_TASKS") or 0)  # 0 = every row of each sample (tests use a few)
WAIT_S = 3600  # the embedded model pre-annotates a few tasks a second on a laptop CPU


@dataclass(frozen=True)
class DemoProject:
    title: str
    config: str  # a file in labeling_configs/
    data: str  # JSONL of {"text": ...} under demo/data/
    look_at: str


PROJECTS = (
    DemoProject("Demo: English news topics", "topic_en.xml", "topics_en.jsonl",
                "the topic pre-selected on each task, its score in the Data Manager's Prediction score column"),
    DemoProject("Demo: Chinese hotel reviews", "sentiment_zh.xml", "reviews_zh.jsonl",
                "正面/负面 pre-annotations of Chinese reviews, and the 'Review queue' tab (unlabeled tasks, lowest score first)"),
)


def demo_config() -> stack.StackConfig:
    env = {**os.environ, "STACK_DIR": str(DEMO_DIR), "STACK_REDIS": "false",
           "STACK_LS_PORT": os.environ.get("DEMO_LS_PORT", "8080")}
    env.setdefault("MODEL_DIR", str(DEMO_DIR / "model_store"))
    return stack.StackConfig.from_env(env)


def _tasks(path: Path) -> list[dict]:
    rows = [{"text": json.loads(line)["text"]} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:DEMO_TASKS] if DEMO_TASKS > 0 else rows


def ensure_project(client, demo: DemoProject, backend_url: str) -> int:
    """The project with this title (created, filled and connected once); returns its id."""
    project = next((p for p in client.projects.list() if p.title == demo.title), None)
    if project is None:
        config = (REPO_ROOT / "labeling_configs" / demo.config).read_text(encoding="utf-8")
        project = client.projects.create(title=demo.title, label_config=config)
        print(f"event=demo_project_created project={project.id} title={demo.title!r}")
    if not (client.projects.get(id=project.id).task_number or 0):
        tasks = _tasks(REPO_ROOT / "demo" / "data" / demo.data)
        client.projects.import_tasks(id=project.id, request=tasks)
        print(f"event=demo_tasks_imported project={project.id} tasks={len(tasks)}")
    if not list(client.ml.list(project=project.id)):
        # Label Studio calls the backend's /setup here; /setup starts the background pre-annotation.
        client.ml.create(url=backend_url, project=project.id, title="LLM backend", is_interactive=False)
        print(f"event=demo_backend_connected project={project.id} backend={backend_url}")
    return int(project.id)


def task_counts(client, project_ids: list[int]) -> dict[int, int]:
    return {pid: int(client.projects.get(id=pid).task_number or 0) for pid in project_ids}


def _status(backend_url: str, project_id: int) -> dict:
    import requests

    try:
        return requests.get(f"{backend_url}/preannotate/status", params={"project": project_id}, timeout=10).json()
    except (requests.RequestException, ValueError):
        return {}


def wait_for_predictions(backend_url: str, tasks_per_project: dict[int, int]) -> dict[int, dict]:
    """A progress bar over every demo task until each project's job is done (a project whose job
    has not started yet counts 0; a finished one all its tasks)."""
    from tqdm import tqdm

    deadline = time.monotonic() + WAIT_S
    with tqdm(total=sum(tasks_per_project.values()), unit="task", desc="pre-annotating", dynamic_ncols=True) as bar:
        while True:
            statuses = {pid: _status(backend_url, pid) for pid in tasks_per_project}
            finished = {pid: s.get("state") == "done" and not s.get("queued_job") and not s.get("running_job")
                        for pid, s in statuses.items()}
            bar.n = sum(count if finished[pid] else min(count, int(statuses[pid].get("done") or 0))
                        for pid, count in tasks_per_project.items())
            bar.set_postfix_str(" ".join(f"#{pid}:{s.get('state', '?')}" for pid, s in statuses.items()))
            bar.refresh()
            if all(finished.values()):
                return statuses
            if any(s.get("state") == "failed" for s in statuses.values()):
                raise SystemExit(f"error: a pre-annotation job failed: {json.dumps(statuses)[:800]}; "
                                 f"see {DEMO_DIR / 'logs' / 'backend.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"error: pre-annotation not done after {WAIT_S} s; see {DEMO_DIR / 'logs'}")
            time.sleep(2)


def start() -> int:
    started = time.monotonic()
    config = demo_config()
    if stack.start(config) != 0:
        print(f"error: the demo stack did not start; logs in {config.logs}", file=sys.stderr)
        return 1
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=config.ls_url, api_key=config.ls_token, timeout=120)
    ids = [ensure_project(client, demo, config.backend_url) for demo in PROJECTS]
    browsable_s = time.monotonic() - started
    print(f"event=demo_browsable s={browsable_s:.1f} url={config.ls_url} (pre-annotations arrive while you look)")
    statuses = wait_for_predictions(config.backend_url, task_counts(client, ids))
    print(f"event=demo_timing browsable_s={browsable_s:.1f} pre_annotated_s={time.monotonic() - started:.1f}")
    print("\nThe demo is ready.\n")
    print(f"  Label Studio   {config.ls_url}   login {stack.DEFAULT_LS_USER} / {stack.DEFAULT_LS_PASSWORD}")
    print(f"  Backend        {config.backend_url}   (GET /metrics, GET /report?project=ID)")
    for demo, project_id in zip(PROJECTS, ids):
        version = statuses[project_id].get("model_version")
        print(f"  Project {project_id:<4} {demo.title}: {config.ls_url}/projects/{project_id}/data  "
              f"(model version {version})")
        print(f"               look at: {demo.look_at}")
    print("\n  Label Stream (the 'Label All Tasks' button) serves the least-likely-right task first.")
    print("  Annotate ~10 tasks and the backend trains its small model and republishes; `make demo-stop` stops it all.")
    return 0


def stop() -> int:
    return stack.stop(demo_config())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop"])
    args = parser.parse_args(argv)
    return start() if args.command == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
