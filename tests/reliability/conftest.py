"""The live backend the generated-request tests run against, and the figures they record.

`RELIABILITY_FUZZ_REQUESTS` sets how many requests schemathesis's fuzzing phase generates (300 in
`make test`, 10,000 in `make soak`); its coverage phase adds ~450 deterministic ones (every
undeclared method, boundary values), and the figures count every request actually sent.
`RELIABILITY_FIGURES_JSON`, set by `make soak`, is where the figures are written; they are
printed at the end of every run.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest


FUZZ_REQUESTS = int(os.environ.get("RELIABILITY_FUZZ_REQUESTS", "300"))
FIGURES_JSON = os.environ.get("RELIABILITY_FIGURES_JSON")  # unset: print only


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


_SUMMARY_LINES: list[str] = []  # filled when the figures fixture ends, printed by the terminal summary


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The figures at the end of every run that sent generated requests (`make test` and `make soak`)."""
    for line in _SUMMARY_LINES:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def summary_lines() -> list[str]:
    """The lines printed at the end of the run: a test module appends its figures. (Through a fixture:
    `tests/` is no package, so importing this conftest by name would give another copy of the list.)"""
    return _SUMMARY_LINES


@dataclass
class FuzzFigures:
    """What the generated requests got back: status counts per operation, latency of the rejections."""

    statuses: Counter = field(default_factory=Counter)
    per_operation: dict[str, Counter] = field(default_factory=dict)
    rejection_seconds: list[float] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # "POST /setup 500", bounded; 503s too
    healthy_after: bool | None = None

    def record(self, operation: str, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        self.per_operation.setdefault(operation, Counter())[status] += 1
        if 400 <= status < 500:
            self.rejection_seconds.append(seconds)
        if status >= 500 and len(self.server_errors) < 50:
            self.server_errors.append(f"{operation} {status}")

    def summary(self) -> dict:
        requests = sum(self.statuses.values())
        p50, p99 = percentile(self.rejection_seconds, 50), percentile(self.rejection_seconds, 99)
        return {
            "requests": requests,
            "requested": FUZZ_REQUESTS,
            "responses_5xx": sum(n for status, n in self.statuses.items() if status >= 500),
            "responses_503": self.statuses.get(503, 0),  # an upstream (Label Studio, model server) unreachable
            "responses_4xx": len(self.rejection_seconds),
            "responses_2xx": sum(n for status, n in self.statuses.items() if 200 <= status < 300),
            "rejection_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "rejection_p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "healthy_after": self.healthy_after,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_operation": {op: {str(k): v for k, v in sorted(c.items())} for op, c in sorted(self.per_operation.items())},
            "server_errors": self.server_errors,
        }


@pytest.fixture(scope="session")
def fuzz_figures():
    figures = FuzzFigures()
    yield figures
    if not figures.statuses:
        return
    summary = figures.summary()
    _SUMMARY_LINES.append(
        "reliability fuzz: {requests} requests, {responses_5xx} responses >= 500 ({responses_503} of them 503), "
        "{responses_4xx} rejections "
        "(p50 {rejection_p50_ms} ms, p99 {rejection_p99_ms} ms), healthy after: {healthy_after}".format(**summary)
        + (f"; figures written to {FIGURES_JSON}" if FIGURES_JSON else "")
    )
    if FIGURES_JSON:
        payload = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **summary}
        Path(FIGURES_JSON).parent.mkdir(parents=True, exist_ok=True)
        Path(FIGURES_JSON).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def live_backend(tmp_path_factory, default_model_path, model_cache_dir):
    """Our backend under gunicorn with the embedded default model, as `make run` starts it. No
    Label Studio runs: /setup names one at an unreachable host, so jobs it starts fail fast."""
    from tests.integration.services import backend_process

    env = {
        "MODEL_DIR": str(tmp_path_factory.mktemp("fuzz_store")), "CACHE_DIR": str(model_cache_dir),
        "WORKERS": "1", "THREADS": "4", "LLM_THREADS": "1", "JOB_RETRIES": "0", "LABEL_STUDIO_TIMEOUT_S": "2",
        "LOG_LEVEL": "WARNING",
    }
    with backend_process(env, tmp_path_factory.mktemp("fuzz_backend") / "backend.log") as url:
        yield url
