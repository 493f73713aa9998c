"""Start our backend (gunicorn) and rq workers as real processes with a given environment
(the command lines of `scripts/stack`, from `scripts/stack.py`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import requests

from scripts import stack
from tests.conftest import REPO_ROOT
from tests.integration.conftest import free_port, stop, wait_until


def start_backend(env: dict[str, str], log_path: Path, *, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Our backend under gunicorn, the way `make run` starts it (its own process group); returns
    the process and its URL once the model is loaded. Tests that kill it use this directly."""
    port = port or free_port()
    full_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            stack.backend_argv(sys.executable),
            cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/health", timeout=2).json().get("model_loaded"),
            timeout=180, what="backend", process=process,
        )
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        stop(process)
        raise
    return process, url


@contextlib.contextmanager
def backend_process(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Our backend under gunicorn, the way `make run` starts it; yields its URL once the model is loaded."""
    process, url = start_backend(env, log_path)
    try:
        yield url
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        stop(process)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m ml_backend.cli worker`: an rq SimpleWorker in its own process group."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            stack.worker_argv(sys.executable),
            cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL: no cleanup, no lease release, exactly like an OOM kill or a pulled plug."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml_backend.cli", *args],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
