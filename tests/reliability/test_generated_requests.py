"""Generated requests (schemathesis, from the served /openapi.json) against a live gunicorn backend.

Schemathesis generates bodies and query strings that fit the description and ones that do not
(wrong types, missing keys, out-of-pattern ids). Whatever it sends, the backend must answer
below 500, with a status and a body the description lists, and stay healthy. The one 5xx
allowed is a described 503 with its {"error", "hint"} body: no Label Studio runs here, and
GET /report of a project /setup connected needs its API (counted apart in the figures). The number of
requests is `RELIABILITY_FUZZ_REQUESTS` (tests/reliability/conftest.py), spread over every
operation that takes input; operations without input are called once per phase.
"""

from __future__ import annotations

import math
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ml_backend.openapi import openapi_description
from tests.reliability.conftest import FUZZ_REQUESTS

pytestmark = pytest.mark.integration

# status_code_conformance: a 503 must be one the operation describes; response_schema_conformance: its body.
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
UPSTREAM_UNAVAILABLE = 503


def operations_with_input(description: dict) -> int:
    return sum(
        1
        for item in description["paths"].values()
        for operation in item.values()
        if operation.get("requestBody") or operation.get("parameters")
    )


EXAMPLES_PER_OPERATION = max(1, math.ceil(FUZZ_REQUESTS / operations_with_input(openapi_description())))


@pytest.fixture(scope="session")
def live_schema(live_backend):
    """The description as the live server serves it (its URL is the base URL of every call)."""
    return schemathesis.openapi.from_url(f"{live_backend}/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,  # latency is a figure here, not a pass/fail criterion
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_no_server_error(case, fuzz_figures):
    started = time.perf_counter()
    response = case.call(timeout=120)
    fuzz_figures.record(f"{case.method.upper()} {case.path}", response.status_code, time.perf_counter() - started)
    assert response.status_code < 500 or response.status_code == UPSTREAM_UNAVAILABLE, (
        f"{case.method.upper()} {case.path} answered {response.status_code}: {response.text[:300]}"
    )
    case.validate_response(response, checks=CHECKS)


def test_setup_naming_an_unreachable_label_studio_answers_and_webhooks_follow(live_backend):
    """Label Studio gives /setup 3 s and a webhook 1 s: neither may wait for a Label Studio that
    does not answer (the background job that needs it fails on its own)."""
    config = openapi_description()["paths"]["/setup"]["post"]["requestBody"]["content"]["application/json"]["example"]
    setup = {**config, "project": "41.1795457094", "hostname": "http://unreachable.invalid:8080"}
    started = time.perf_counter()
    response = requests.post(f"{live_backend}/setup", json=setup, timeout=30)
    print(f"/setup with an unreachable Label Studio: {response.status_code} in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert response.status_code == 200 and response.json()["model_version"]
    created = {"action": "TASKS_CREATED", "project": {"id": 41, "created_at": "2026-11-23T18:04:54Z"},
               "tasks": [{"id": 1, "data": {"text": "a"}}]}
    response = requests.post(f"{live_backend}/webhook", json=created, timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "queued"


def test_the_server_is_healthy_after_the_generated_requests(live_backend, fuzz_figures):
    """Runs after the generated requests (pytest keeps file order): the same process still answers."""
    response = requests.get(f"{live_backend}/health", timeout=5)
    fuzz_figures.healthy_after = response.ok and response.json().get("status") == "UP"
    assert fuzz_figures.healthy_after
    assert sum(fuzz_figures.statuses.values()) > 0, "no generated request was sent"
    summary = fuzz_figures.summary()
    assert summary["responses_5xx"] - summary["responses_503"] == 0, fuzz_figures.server_errors
