"""A switchable HTTP proxy in front of the real Label Studio, for the fault tests.

`forward` passes every request through; after `fail_after(path_part, count, mode)` has seen
`count` forwarded requests whose path contains `path_part`, every later request is
`hang` (accepted and never answered, so the client's LABEL_STUDIO_TIMEOUT_S fires) or `drop`
(the connection closed without an answer: Label Studio died). A failed request never reaches
Label Studio. `heal()` goes back to forwarding.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}
HANG_LIMIT_S = 120.0  # a hung request's thread gives up after this long (the client stopped waiting long before)


class LabelStudioProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "forward"
        self.forwarded: list[str] = []  # "METHOD path" of every request passed through
        self.failed: list[str] = []  # the ones hung or dropped
        self._trigger: tuple[str, int, str] | None = None
        self._healed = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="ls-proxy", daemon=True)

    def __enter__(self) -> "LabelStudioProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.heal()
        self.server.shutdown()
        self.server.server_close()

    def fail_after(self, path_part: str, count: int, mode: str) -> None:
        assert mode in ("hang", "drop")
        with self._lock:
            self._healed.clear()
            self._trigger = (path_part, count + sum(path_part in r for r in self.forwarded), mode)

    def heal(self) -> None:
        with self._lock:
            self.mode, self._trigger = "forward", None
            self._healed.set()

    def _decide(self, request_line: str) -> str:
        with self._lock:
            if self.mode == "forward" and self._trigger:
                path_part, count, mode = self._trigger
                if sum(path_part in r for r in self.forwarded) >= count:
                    self.mode = mode
            if self.mode == "forward":
                self.forwarded.append(request_line)
            else:
                self.failed.append(request_line)
            return self.mode

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = proxy._decide(f"{self.command} {self.path}")
                if mode == "hang":
                    proxy._healed.wait(HANG_LIMIT_S)
                    self.close_connection = True
                    return
                if mode == "drop":
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                          timeout=300, allow_redirects=False)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        return Handler
