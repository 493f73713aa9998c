"""`make demo` as a newcomer runs it (its script, with a few tasks per project and free ports):
Label Studio and the backend start, two projects get pre-annotated tasks with scores, a second
run reuses everything, `demo-stop` leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from label_studio_sdk import LabelStudio

from tests.conftest import REPO_ROOT
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

TASKS = 12


def _demo(env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/demo.py", command], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)


def test_make_demo_pre_annotates_two_projects_and_reuses_them(tmp_path, model_cache_dir):
    from scripts import stack

    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_TASKS": str(TASKS),
           "DEMO_LS_PORT": str(free_port()), "PORT": str(free_port()), "CACHE_DIR": str(model_cache_dir)}
    env.pop("REDIS_URL", None)
    try:
        started = time.monotonic()
        first = _demo(env, "start")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        print(f"demo_timing start_to_pre_annotated_s={time.monotonic() - started:.1f} tasks={2 * TASKS}\n"
              + "\n".join(line for line in first.stdout.splitlines() if "event=demo_" in line))
        assert "event=demo_browsable" in first.stdout
        assert "The demo is ready" in first.stdout and "admin@example.com" in first.stdout
        client = LabelStudio(base_url=f"http://127.0.0.1:{env['DEMO_LS_PORT']}", api_key=stack.DEFAULT_LS_TOKEN)
        projects = {p.title: p.id for p in client.projects.list()}
        assert set(projects) == {"Demo: English news topics", "Demo: Chinese hotel reviews"}
        for project_id in projects.values():
            project = client.projects.get(id=project_id)
            predictions = [p for p in client.predictions.list(project=project_id)
                           if p.model_version == project.model_version]
            assert project.task_number == TASKS and len({p.task for p in predictions}) == TASKS
            assert all(0.0 <= p.score <= 1.0 for p in predictions) and len({round(p.score, 6) for p in predictions}) > 1
            assert project.sampling == "Uncertainty sampling"

        again = _demo(env, "start")  # reuses the running stack, the projects, their tasks and connections
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "event=demo_project_created" not in again.stdout and "event=demo_tasks_imported" not in again.stdout
        assert {p.title: p.id for p in client.projects.list()} == projects
        assert all(len(list(client.ml.list(project=pid))) == 1 for pid in projects.values())
    finally:
        pids = [int(path.read_text()) for path in (tmp_path / "demo").glob("*.pid")]
        stopped = _demo(env, "stop")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert sorted(path.stem for path in (tmp_path / "demo").glob("*.pid")) == []
    assert len(pids) == 2 and not [pid for pid in pids if psutil.pid_exists(pid) and
                                   psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
