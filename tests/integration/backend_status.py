"""Polling helpers shared by the integration tests that follow a background job in a real Label Studio.

Every wait is bounded and fails naming the step and the last value it saw, so a stalled CI run
says where it stalled.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, TypeVar

import requests

T = TypeVar("T")


def preannotation_status(backend_url: str, project_id: int) -> dict:
    """The backend's /preannotate/status for a Label Studio project id."""
    return requests.get(f"{backend_url}/preannotate/status", params={"project": project_id}, timeout=10).json()


def is_finished(status: dict, version: str | None = None) -> bool:
    """The job is done, nothing is queued or running, and (if given) it ran for `version`."""
    return (
        status.get("state") == "done"
        and not status.get("queued_job")
        and not status.get("running_job")
        and (version is None or status.get("model_version") == version)
    )


def wait_for(read: Callable[[], T], condition: Callable[[T], Any], *, timeout: float, what: str,
             interval: float = 1.0) -> T:
    """Poll `read()` until `condition(value)`; fail naming the step and the last value seen."""
    deadline = time.monotonic() + timeout
    value = read()
    while not condition(value):
        assert time.monotonic() < deadline, f"stalled after {timeout:.0f} s: {what}; last seen {value!r}"
        time.sleep(interval)
        value = read()
    return value


def wait_until_finished(backend_url: str, project_id: int, *, timeout: float, what: str,
                        version: str | None = None) -> dict:
    """Wait for the project's pre-annotation job to finish; return its last status."""
    return wait_for(lambda: preannotation_status(backend_url, project_id), lambda s: is_finished(s, version),
                    timeout=timeout, what=what)


def versions_per_task(ls_client, project_id: int) -> dict[int, Counter]:
    """Task id → how many stored predictions of each model version it holds."""
    per_task: dict[int, Counter] = {}
    for prediction in ls_client.predictions.list(project=project_id):
        per_task.setdefault(prediction.task, Counter())[prediction.model_version] += 1
    return per_task
