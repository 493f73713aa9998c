"""Deployment files without a Docker engine: the compose file through a real YAML parser (and
`docker compose config` where it is installed), the Dockerfile installing only through
`scripts/install.sh`, the same script the Makefile runs, and the stack script's wiring."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml_backend.config import Settings
from scripts import stack
from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTALL = REPO_ROOT / "scripts" / "install.sh"
# Settings the compose file may pass on that are not Settings fields (none today).
PENDING_SETTINGS: set[str] = set()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def env_of(service: dict) -> dict:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "write environment as a mapping (the tests read it)"
    return environment


def test_compose_has_every_piece_with_a_healthcheck(compose):
    services = compose["services"]
    assert set(services) == {"label-studio", "redis", "backend", "worker", "model-server"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["model-server"]["profiles"] == ["model-server"]
    assert "profiles" not in services["backend"] and "profiles" not in services["worker"]


def test_compose_label_studio_lifts_the_ssrf_guard_and_shares_the_token(compose):
    label_studio = env_of(compose["services"]["label-studio"])
    assert label_studio["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert label_studio["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for name in ("backend", "worker"):
        assert env_of(compose["services"][name])["LABEL_STUDIO_API_KEY"] == label_studio["LABEL_STUDIO_USER_TOKEN"]


def test_compose_backend_and_workers_are_wired_to_the_same_services(compose):
    services = compose["services"]
    backend, worker = env_of(services["backend"]), env_of(services["worker"])
    for env in (backend, worker):
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["MODEL_DIR"] == "/data/model_store"
        assert "LLM_BASE_URL" in env and env["LLM_BASE_URL"] is None  # passed on only when set
    # Both read and write the same per-project state and the same assembled model.
    assert services["backend"]["volumes"] == services["worker"]["volumes"]
    mounts = dict(volume.split(":", 1)[::-1] for volume in services["backend"]["volumes"])
    assert mounts["/data/model_store"] == "model-store"
    assert "/label-studio/data" in [v.split(":", 1)[1] for v in services["label-studio"]["volumes"]]
    assert services["worker"]["image"] == services["backend"]["image"]
    assert services["worker"]["command"] == stack.worker_argv("python")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_names_only_declared_volumes_and_real_settings(compose):
    used = {
        volume.split(":", 1)[0]
        for service in compose["services"].values()
        for volume in service.get("volumes") or []
    }
    assert used == set(compose["volumes"])
    settings = {name.upper() for name in Settings.model_fields}
    for name in ("backend", "worker"):
        unknown = set(env_of(compose["services"][name])) - settings - PENDING_SETTINGS
        assert not unknown, f"{name}: {unknown} are not settings of ml_backend/config.py"


def test_compose_targets_exist_in_the_dockerfile(compose):
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert stages[-1] == "backend"  # `docker build .` builds the backend
    for name in ("backend", "model-server"):
        assert compose["services"][name]["build"]["target"] in stages


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "model-server"]])
def test_docker_compose_accepts_the_file(profile):
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: only the YAML checks above ran")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), *profile, "config", "-q"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "LLM_BASE_URL": "http://model-server:8000/v1"},
    )
    assert result.returncode == 0, result.stderr


# --- one install procedure ---------------------------------------------------------------------------
def install_steps(text: str) -> list[str]:
    return [step for line in re.findall(r"scripts/install\.sh ([\w -]+)", text) for step in line.split()]


def test_dockerfile_installs_only_through_the_install_script():
    text = DOCKERFILE.read_text()
    runs = re.findall(r"^RUN (.+)$", text, flags=re.M)
    for run in runs:
        assert "pip install" not in run and "apt-get" not in run, f"install through scripts/install.sh: {run}"
    assert install_steps("\n".join(runs)) == ["build-tools", "python-deps", "encoders", "model-server"]
    assert "COPY scripts/install.sh scripts/install.sh" in text


def test_makefile_runs_the_same_steps():
    text = (REPO_ROOT / "Makefile").read_text()
    assert "INSTALL := PYTHON=$(VENV)/bin/python bash scripts/install.sh" in text
    assert "$(INSTALL) python-deps package" in text and "$(INSTALL) encoders" in text
    assert "pip install --progress-bar off -r requirements.txt" not in text


@pytest.mark.parametrize("script", ["scripts/install.sh", "scripts/stack", "scripts/start_label_studio.sh"])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / script)], capture_output=True).returncode == 0


def dry_run(*steps: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(INSTALL), *steps], capture_output=True, text=True, check=True,
        env={**os.environ, "INSTALL_DRY_RUN": "1", "PYTHON": "py"},
    )
    return result.stdout.splitlines()


def test_install_script_commands():
    assert dry_run("python-deps", "package", "encoders") == [
        "+ py -m pip install --progress-bar off -r requirements.txt",
        "+ py -m pip install --progress-bar off --no-deps -e .",
        "+ py -m ml_backend.encoders prepare",
    ]
    pin = re.search(r"^llama-cpp-python==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), flags=re.M)[1]
    assert dry_run("model-server") == [f"+ py -m pip install --progress-bar off llama-cpp-python[server]=={pin}"]


def test_install_script_rejects_an_unknown_step():
    result = subprocess.run(["bash", str(INSTALL), "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown step 'nope'" in result.stderr


# --- the stack script's wiring --------------------------------------------------------------------------
def test_stack_config_wires_backend_and_workers_to_its_services(tmp_path):
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_WORKERS": "3", "PORT": "9191"})
    env = config.backend_env()
    assert env["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert env["LABEL_STUDIO_URL"] == "http://127.0.0.1:8080"
    assert env["LABEL_STUDIO_API_KEY"] == stack.DEFAULT_LS_TOKEN
    assert env["MODEL_DIR"] == str(tmp_path / "model_store") and env["PORT"] == "9191"
    names = [service.name for service in stack.services(config)]
    assert names == ["redis", "label-studio", "backend", "worker-1", "worker-2", "worker-3"]
    label_studio = stack.services(config)[1]
    assert label_studio.env["USE_DEFAULT_BANNED_SUBNETS"] == "false" and "HOST" not in label_studio.env


def test_stack_config_names_a_wrong_variable():
    with pytest.raises(SystemExit, match="STACK_WORKERS='two' is not a whole number"):
        stack.StackConfig.from_env({"STACK_WORKERS": "two"})


def test_stack_status_of_nothing_running(tmp_path, capsys):
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_WORKERS": "1",
                                         "STACK_REDIS_PORT": "1", "STACK_LS_PORT": "1", "PORT": "1"})
    assert stack.status(config) == 1
    assert capsys.readouterr().out.count("not running") == 4
    assert stack.stop(config) == 0


def test_the_stack_without_redis_runs_the_backend_on_its_embedded_job_runner(tmp_path):
    with_redis = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_WORKERS": "2"})
    assert [s.name for s in stack.services(with_redis)] == ["redis", "label-studio", "backend", "worker-1", "worker-2"]
    assert with_redis.backend_env()["REDIS_URL"] == with_redis.redis_url
    embedded = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_WORKERS": "2", "STACK_REDIS": "false",
                                           "REDIS_URL": "redis://elsewhere:6379/0"})
    assert [s.name for s in stack.services(embedded)] == ["label-studio", "backend"]
    assert "REDIS_URL" not in embedded.backend_env()


def test_the_stack_with_a_model_server_points_every_process_at_it(tmp_path):
    gguf = tmp_path / "served.gguf"
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_WORKERS": "2", "STACK_MODEL_SERVER": "true",
                                         "STACK_MODEL_SERVER_PORT": "8111", "MODEL_SERVER_GGUF": str(gguf),
                                         "LLM_THREADS": "3"})
    services = stack.services(config)
    assert [s.name for s in services] == ["redis", "model-server", "label-studio", "backend", "worker-1", "worker-2"]
    assert [s.name for s in services if s.early] == ["redis", "model-server"]  # healthy before the backend loads
    server = services[1]
    assert server.argv[1:3] == ["-m", "ml_backend.llm.serve_gguf"] and str(gguf) in server.argv
    assert server.argv[server.argv.index("--port") + 1] == "8111"
    assert server.argv[server.argv.index("--n_threads") + 1] == "3"
    assert server.env["PORT"] == "8111"  # llama_cpp.server prefers PORT over --port: not the backend's
    for service in services[3:]:
        assert service.env["LLM_BASE_URL"] == "http://127.0.0.1:8111"
    without = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path)})
    assert without.model_server_port is None and "LLM_BASE_URL" not in without.backend_env()
    default = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "CACHE_DIR": str(tmp_path / "cache")})
    assert stack.default_model_file(default.env).parent == tmp_path / "cache"
