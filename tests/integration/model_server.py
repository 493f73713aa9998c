"""A real OpenAI-compatible model server for tests and benchmarks: llama-cpp-python's
`python -m ml_backend.llm.serve_gguf` (its server with the plain CPU layout) on loopback with the embedded default GGUF (no network), and a small
fault-injecting proxy in front of it (500s, answers without logprobs, a slow server)."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import requests

from scripts import stack
from tests.integration.conftest import free_port, stop, wait_until


@contextlib.contextmanager
def llama_cpp_server(model_path: Path, log_path: Path, *, n_ctx: int = 1024, threads: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """The model server of `scripts/stack` in its own process group; yields (base URL, process) once it answers."""
    port = free_port()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            stack.model_server_argv(sys.executable, model_path, port, threads=threads, n_ctx=n_ctx),
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).status_code == 200, timeout=120,
                   what="llama_cpp.server", process=process)
        yield url, process
    except Exception:
        print(Path(log_path).read_text(errors="replace")[-3000:])
        raise
    finally:
        stop(process)


class FaultProxy:
    """Forwards to `upstream`; `fault` changes what /v1/completions answers:
    None (pass through), "500", "no_logprobs" (logprobs stripped), "slow" (sleeps `delay_s` first)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault: str | None = None
        self.delay_s = 2.0
        self.completions = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                is_completion = self.path.startswith("/v1/completions")
                if is_completion:
                    proxy.completions += 1
                    if proxy.fault == "500":
                        return self._send(500, b'{"error": "injected"}')
                    if proxy.fault == "slow":
                        time.sleep(proxy.delay_s)
                answer = httpx.request(method, proxy.upstream + self.path, content=body,
                                       headers={"content-type": "application/json"}, timeout=300)
                content = answer.content
                if is_completion and proxy.fault == "no_logprobs" and answer.status_code == 200:
                    data = answer.json()
                    for choice in data.get("choices", []):
                        choice["logprobs"] = None
                    content = json.dumps(data).encode()
                self._send(answer.status_code, content)

            def _send(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
