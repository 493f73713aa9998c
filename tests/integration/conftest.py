"""Real services for integration tests: the default model, our backend as a real server, Label Studio.

Each is started by these fixtures (once per test session) from what `make test` installed;
nothing is mocked here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from scripts import stack

LS_TOKEN = stack.DEFAULT_LS_TOKEN
LS_USER = stack.DEFAULT_LS_USER
LS_PASSWORD = stack.DEFAULT_LS_PASSWORD


def require(condition: bool, reason: str) -> None:
    """Skip when a local developer lacks a service; under CI a missing service is a failure."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, *, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)






@pytest.fixture(scope="session")
def llama_runtime(default_model_path):
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime

    # LLM_THREADS=1 is much faster than 2 on a CPU shared with other jobs (llama.cpp threads spin).
    threads = int(os.environ.get("LLM_THREADS", "2"))
    return LlamaCppRuntime(default_model_path, n_ctx=2048, n_threads=threads, name="qwen-default")


@pytest.fixture(scope="session")
def backend_server(tmp_path_factory, default_model_path, model_cache_dir):
    """Our backend under gunicorn, the way `make run` starts it, with the embedded default model."""
    from tests.integration.services import backend_process

    env = {"MODEL_DIR": str(tmp_path_factory.mktemp("model_store")), "CACHE_DIR": str(model_cache_dir)}
    with backend_process(env, tmp_path_factory.mktemp("backend") / "backend.log") as url:
        yield url






@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A throw-away redis-server on a free port, no persistence (`.ci/run` installs Debian redis-server)."""
    import shutil

    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server not found: apt-get install redis-server (.ci/run does)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        stack.redis_argv(binary, port, workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    def answers() -> bool:  # refused until redis-server listens: keep waiting (a loaded CI machine is slow)
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_until(answers, timeout=20, what="redis-server", process=process)
    yield url
    stop(process)


@pytest.fixture(scope="session")
def embeddinggemma():
    """The real default SLM encoder, as `make encoders` prepared it (under CI a missing one fails)."""
    from ml_backend.encoders import embeddinggemma_dir, embeddinggemma_ready, load_encoder

    require(embeddinggemma_ready(), f"EmbeddingGemma-300M is not prepared in {embeddinggemma_dir()}: run `make encoders`")
    return load_encoder("embeddinggemma")
