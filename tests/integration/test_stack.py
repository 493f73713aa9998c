"""`scripts/stack`: start the whole stack as a user without Docker would, check every piece, stop it.

Label Studio (~90 s to start on SQLite), redis-server, the backend under gunicorn (loads the
default GGUF) and two rq workers, each checked from the outside, not through the script's own
`status`: Label Studio's /health, the backend's /health, a Redis PING, the workers registered in
rq under the pids of their pid files. Then `stop` must leave no process of any of their groups.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import psutil
import pytest
import redis
import requests

from scripts import stack
from tests.conftest import REPO_ROOT
from tests.integration.conftest import free_port, require

pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "scripts" / "stack"


def run_stack(env: dict[str, str], command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def group_processes(pgids: list[int]) -> list[str]:
    """Live processes in any of these process groups, as 'pid name'."""
    alive = []
    for process in psutil.process_iter(["pid", "name", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.info["pid"]) in pgids:
                alive.append(f"{process.info['pid']} {process.info['name']}")
        except (OSError, psutil.Error):
            continue
    return alive


def test_stack_start_status_stop(tmp_path, default_model_path, model_cache_dir):
    require(shutil.which("redis-server") is not None, "redis-server not found: bash scripts/install.sh redis")
    require(stack.label_studio_binary().exists(), "Label Studio venv missing: make label-studio (or LS_VENV)")
    env = {
        **os.environ,
        "STACK_DIR": str(tmp_path / "stack"),
        "STACK_PYTHON": sys.executable,
        "STACK_LS_PORT": str(free_port()),
        "STACK_REDIS_PORT": str(free_port()),
        "PORT": str(free_port()),
        "STACK_WORKERS": "2",
        "CACHE_DIR": str(model_cache_dir),
        "LLM_THREADS": os.environ.get("LLM_THREADS", "1"),
    }
    env.pop("MODEL_DIR", None)
    config = stack.StackConfig.from_env(env)
    try:
        started = run_stack(env, "start", timeout=900)
        assert started.returncode == 0, started.stdout + started.stderr
        pids = stack.stack_pids(config)
        assert sorted(pids) == ["backend", "label-studio", "redis", "worker-1", "worker-2"]

        assert requests.get(f"{config.ls_url}/health", timeout=5).status_code == 200
        health = requests.get(f"{config.backend_url}/health", timeout=5).json()
        assert health["status"] == "UP" and health["model_loaded"] is True
        assert redis.Redis.from_url(config.redis_url).ping()
        metrics = requests.get(f"{config.backend_url}/metrics", timeout=10).text
        assert 'lsllm_queue_depth{runner="rq"} 0.0' in metrics  # the backend enqueues to this Redis
        registered = stack.registered_worker_pids(config.redis_url, config.queue)
        assert registered == {pids["worker-1"], pids["worker-2"]}

        # The backend is wired to this stack: its jobs go to this Redis, its model store is in STACK_DIR.
        backend_env = psutil.Process(pids["backend"]).environ()
        assert backend_env["REDIS_URL"] == config.redis_url
        assert backend_env["LABEL_STUDIO_URL"] == config.ls_url
        assert backend_env["MODEL_DIR"] == str(config.root / "model_store")
        ls_env = psutil.Process(pids["label-studio"]).environ()
        assert ls_env["USE_DEFAULT_BANNED_SUBNETS"] == "false"

        shown = run_stack(env, "status", timeout=60)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert shown.stdout.count(" yes    yes ") == 5, shown.stdout

        again = run_stack(env, "start", timeout=120)  # idempotent: nothing started twice
        assert again.returncode == 0 and again.stdout.count("event=stack_already_running") == 5, again.stdout
        assert stack.stack_pids(config) == pids
    finally:
        pgids = list(stack.stack_pids(config).values())
        stopped = run_stack(env, "stop", timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert group_processes(pgids) == []
    assert stack.stack_pids(config) == {}
    shown = run_stack(env, "status", timeout=60)
    assert shown.returncode == 1 and shown.stdout.count("not running") == 5, shown.stdout
