"""`scripts/stack`: start the whole stack as a user without Docker would, check every piece, stop it.

Label Studio (~90 s to start on SQLite), redis-server, one model server (`STACK_MODEL_SERVER=true`:
llama-cpp-python's OpenAI-compatible server with the default GGUF), the backend under gunicorn and
two rq workers, each checked from the outside, not through the script's own `status`: Label Studio's
/health, the backend's /health, a Redis PING, the server's /v1/models, the workers registered in rq
under the pids of their pid files. Then the scale topology at work: a second backend process joins
(N backends + M workers + one model server), a project's background pre-annotation runs on a worker
through the server, and both backends answer /predict with the same version and the same scores.
Then `stop` must leave no process of any of their groups.
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
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import is_finished, preannotation_status, wait_for
from tests.integration.conftest import LS_TOKEN, free_port, require
from tests.integration.services import backend_process

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
    """Also the topology test of the scale path (README, "One model server for many workers")."""
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
        "STACK_MODEL_SERVER": "true",
        "STACK_MODEL_SERVER_PORT": str(free_port()),
        "CACHE_DIR": str(model_cache_dir),
        "LLM_THREADS": os.environ.get("LLM_THREADS", "1"),
    }
    env.pop("MODEL_DIR", None)
    config = stack.StackConfig.from_env(env)
    try:
        started = run_stack(env, "start", timeout=900)
        assert started.returncode == 0, started.stdout + started.stderr
        pids = stack.stack_pids(config)
        assert sorted(pids) == ["backend", "label-studio", "model-server", "redis", "worker-1", "worker-2"]

        assert requests.get(f"{config.ls_url}/health", timeout=5).status_code == 200
        health = wait_for(lambda: requests.get(f"{config.backend_url}/health", timeout=5).json(),
                          lambda h: h.get("model_loaded"), timeout=180, what="the backend's model (the server) loaded")
        assert health["status"] == "UP"
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
        assert backend_env["LLM_BASE_URL"] == config.model_server_url
        assert requests.get(f"{config.model_server_url}/v1/models", timeout=10).status_code == 200
        ls_env = psutil.Process(pids["label-studio"]).environ()
        assert ls_env["USE_DEFAULT_BANNED_SUBNETS"] == "false"

        shown = run_stack(env, "status", timeout=60)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert shown.stdout.count(" yes    yes ") == 6, shown.stdout

        again = run_stack(env, "start", timeout=120)  # idempotent: nothing started twice
        assert again.returncode == 0 and again.stdout.count("event=stack_already_running") == 6, again.stdout
        assert stack.stack_pids(config) == pids

        _two_backends_and_two_workers_share_one_model_server(config, tmp_path)
    finally:
        pgids = list(stack.stack_pids(config).values())
        stopped = run_stack(env, "stop", timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert group_processes(pgids) == []
    assert stack.stack_pids(config) == {}
    shown = run_stack(env, "status", timeout=60)
    assert shown.returncode == 1 and shown.stdout.count("not running") == 6, shown.stdout


def _two_backends_and_two_workers_share_one_model_server(config: stack.StackConfig, tmp_path) -> None:
    """N backends + M rq workers + one model server: a second backend with the same settings joins;
    Label Studio's project is pre-annotated by a worker through the server; both backends serve the
    same version and the same scores (one model, wherever the process runs)."""
    from label_studio_sdk import LabelStudio

    schema = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
    rows = load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=6)
    client = LabelStudio(base_url=config.ls_url, api_key=LS_TOKEN, timeout=300)
    project = client.projects.create(title="one model server", label_config=schema)
    client.ml.create(url=config.backend_url, project=project.id, title="llm", is_interactive=False)
    client.projects.import_tasks(id=project.id, request=[{"text": row["text"]} for row in rows])
    version = requests.post(f"{config.backend_url}/setup", json={"project": str(project.id), "schema": schema},
                            timeout=10).json()["model_version"]
    assert "-openai" in version  # scored by the server, never mistaken for the in-process model's
    # The job's cold start (demonstrations, label prior) leads to the version it then writes.
    status = wait_for(lambda: preannotation_status(config.backend_url, project.id),
                      lambda s: is_finished(s) and s.get("model_version")
                      and (s.get("last_write") or {}).get("model_version") == s["model_version"],
                      timeout=600, what="pre-annotation through the model server")
    version = status["model_version"]
    assert "-openai" in version
    stored = [p for p in client.predictions.list(project=project.id) if p.model_version == version]
    assert len(stored) == len(rows)
    workers_log = "".join((config.logs / f"worker-{i}.log").read_text(errors="replace") for i in (1, 2))
    assert "runtime=openai" in workers_log and "event=llm_provider_mode" in workers_log

    body = {"tasks": [{"id": 10**9, "data": {"text": "A gripping, beautifully acted story."}}], "project": project.id}
    with backend_process(config.backend_env(), tmp_path / "backend-2.log") as second:
        answers = [requests.post(f"{url}/predict", json=body, timeout=100).json() for url in (config.backend_url, second)]
    assert {a["model_version"] for a in answers} == {version}
    scores = [a["results"][0]["score"] for a in answers]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    labels = [[region["value"] for region in a["results"][0]["result"]] for a in answers]
    assert labels[0] == labels[1] and labels[0]
    assert "/v1/completions" in (config.logs / "model-server.log").read_text(errors="replace")
