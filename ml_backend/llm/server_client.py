"""HTTP to a model server: a bounded pool of in-flight requests, a timeout on every call,
bounded retries with exponential backoff, and a circuit breaker.

Why here and not in the provider: these rules are the same for every endpoint the provider
calls (completions, tokenize, models), and a reader checking "what happens when the server is
down" should find it in one place:

* at most `max_in_flight` requests of this process are on the wire at once (a semaphore; httpx's
  connection pool has the same size), so N backends + M workers put at most Σ pools on the server;
* every request has `timeout_s` (connect, read, write, pool);
* 429, 5xx, connection errors and timeouts are retried `retries` times, waiting
  `backoff_s * 2**attempt` (+ up to 25 % jitter; a 429's Retry-After, if shorter than 30 s, wins);
  other 4xx are the request's fault and are not retried;
* after `breaker_failures` consecutive calls failed (all retries spent), the breaker opens: calls
  fail at once, without touching the network, for `breaker_cooldown_s`; then one trial call goes
  through (half-open) and closes it again on success.

A failed call raises `ModelServerUnavailable` (errors.py) with what happened and how to fix it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ml_backend.errors import ModelServerUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0  # a server's Retry-After above this is ignored (our own backoff applies)


class HTTPStatusRejected(Exception):
    """A 4xx answer that retrying will not fix (the request is wrong for this server)."""

    def __init__(self, status_code: int, body: str) -> None:
        super().__init__(f"HTTP {status_code}: {body[:300]}")
        self.status_code = status_code
        self.body = body


@dataclass(frozen=True)
class ClientPolicy:
    """How hard to try. Units: seconds and counts."""

    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5
    max_in_flight: int = 4
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0


class CircuitBreaker:
    """Closed → (N consecutive failures) → open for a cool-down → half-open (one trial) → closed.

    Thread-safe; `clock` is injectable so tests need not sleep."""

    def __init__(self, failures: int, cooldown_s: float, *, clock=time.monotonic) -> None:
        self.failures_to_open = max(1, int(failures))
        self.cooldown_s = float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and self._clock() - self._opened_at < self.cooldown_s

    def allow(self) -> bool:
        """Whether a call may go out now (in the half-open state: only one trial at a time)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self.cooldown_s or self._trial_running:
                return False
            self._trial_running = True
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("event=llm_breaker_closed")
            self._consecutive_failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive_failures += 1
            reopen = self._opened_at is not None  # a failed half-open trial
            self._trial_running = False
            if reopen or self._consecutive_failures >= self.failures_to_open:
                if not reopen:
                    log.warning(
                        "event=llm_breaker_open failures=%d cooldown_s=%.1f",
                        self._consecutive_failures, self.cooldown_s,
                    )
                self._opened_at = self._clock()


class ServerClient:
    """`post_json` / `get_json` against one OpenAI-compatible server, with the policy above."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        policy: ClientPolicy = ClientPolicy(),
        transport: httpx.BaseTransport | None = None,
        sleep=time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown_s)
        self._slots = threading.BoundedSemaphore(max(1, policy.max_in_flight))
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(policy.timeout_s),
            limits=httpx.Limits(max_connections=policy.max_in_flight, max_keepalive_connections=policy.max_in_flight),
            transport=transport,
        )
        self.requests_sent = 0  # every attempt, retries included (tests and the benchmark read it)

    def close(self) -> None:
        self._http.close()

    def post_json(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        return self._call("POST", path, body, retry=retry)

    def get_json(self, path: str, *, retry: bool = True) -> dict[str, Any]:
        return self._call("GET", path, None, retry=retry)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, *, retry: bool) -> dict[str, Any]:
        if not self.breaker.allow():
            raise ModelServerUnavailable(
                f"The model server at {self.base_url} failed {self.breaker.failures_to_open} calls in a row; "
                f"calls fail fast for {self.breaker.cooldown_s:.0f} s.",
                hint="Check that the server (LLM_BASE_URL) is running and answering; it is tried again after the cool-down.",
            )
        attempts = 1 + (max(0, self.policy.retries) if retry else 0)
        last_problem = ""
        for attempt in range(attempts):
            wait_s: float | None = None
            try:
                with self._slots:
                    self.requests_sent += 1
                    response = self._http.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                last_problem = f"no answer within LLM_TIMEOUT_S={self.policy.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last_problem = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if response.status_code < 400:
                    self.breaker.record_success()
                    return response.json()
                if response.status_code in (401, 403):  # the key, not the request: no task can be scored
                    self.breaker.record_success()
                    raise ModelServerUnavailable(
                        f"The model server at {self.base_url} refused the API key (HTTP {response.status_code}).",
                        hint="Set LLM_API_KEY to the key the server expects (vLLM's --api-key).",
                    )
                if response.status_code not in RETRYABLE_STATUS:
                    self.breaker.record_success()  # the server is up; the request is wrong
                    raise HTTPStatusRejected(response.status_code, response.text)
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                wait_s = _retry_after(response)
            if attempt + 1 < attempts:
                delay = wait_s if wait_s is not None else self.policy.backoff_s * (2**attempt)
                delay *= 1.0 + 0.25 * random.random()
                log.warning(
                    "event=llm_request_retry path=%s attempt=%d of=%d wait_s=%.2f problem=%r",
                    path, attempt + 1, attempts, delay, last_problem[:200],
                )
                self._sleep(delay)
        self.breaker.record_failure()
        raise ModelServerUnavailable(
            f"The model server at {self.base_url} did not answer {method} {path} after {attempts} attempt(s): {last_problem}",
            hint="Start the model server or fix LLM_BASE_URL; raise LLM_TIMEOUT_S for a slow server.",
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= MAX_RETRY_AFTER_S else None
