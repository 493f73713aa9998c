"""The in-process job runner: coalescing per key, one running job per key, retries, visible failures."""

from __future__ import annotations

import threading
import time

import pytest

from ml_backend.config import Settings
from ml_backend.jobs import (
    InProcessRunner,
    JobContext,
    JobTimeout,
    check_deadline,
    retrying,
    run_job,
)
from ml_backend.kv import MemoryKV

# Job functions are looked up by dotted path, as rq does: they live at module level, named
# through __name__ (pytest may import this file under a different package name).
RELEASE = threading.Event()
EVENTS: list[tuple] = []
ACTIVE: list[str] = []
FAILURES_LEFT = {"n": 0}


def blocking_job(name, *, context):
    ACTIVE.append(name)
    EVENTS.append(("start", name, len(ACTIVE)))
    RELEASE.wait(10)
    ACTIVE.remove(name)
    EVENTS.append(("end", name))


def flaky_job(name, *, context):
    EVENTS.append(("try", name))
    if FAILURES_LEFT["n"] > 0:
        FAILURES_LEFT["n"] -= 1
        raise ConnectionError("Label Studio is restarting")
    return name


def slow_loop_job(*, context):
    while True:
        check_deadline()
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _reset():
    RELEASE.clear()
    EVENTS.clear()
    ACTIVE.clear()
    FAILURES_LEFT["n"] = 0
    yield
    RELEASE.set()


def make_runner(tmp_path, **overrides) -> InProcessRunner:
    settings = Settings(model_dir=tmp_path, redis_url=None, job_retry_backoff_s=0, **overrides)
    kv = MemoryKV()
    context = JobContext(settings=settings, kv=kv)
    context.runner = InProcessRunner(settings, kv, context)
    return context.runner


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_at_most_one_queued_and_one_running_per_key(tmp_path):
    runner = make_runner(tmp_path)
    first = runner.enqueue(f"{__name__}.blocking_job", "first", coalesce_key="project:1")
    wait_for(lambda: ACTIVE == ["first"])  # running: its queued marker is cleared
    second = runner.enqueue(f"{__name__}.blocking_job", "second", coalesce_key="project:1")
    third = runner.enqueue(f"{__name__}.blocking_job", "third", coalesce_key="project:1")
    other = runner.enqueue(f"{__name__}.blocking_job", "other", coalesce_key="project:2")

    assert not first.coalesced and not second.coalesced
    assert third.coalesced and third.job_id == second.job_id
    assert not other.coalesced
    assert runner.queued_job("project:1") == second.job_id
    assert runner.running_job("project:1") == first.job_id

    RELEASE.set()
    assert runner.wait_idle(10)
    started = [e[1] for e in EVENTS if e[0] == "start"]
    assert started == ["first", "second", "other"]
    assert max(e[2] for e in EVENTS if e[0] == "start") == 1  # never two at once
    assert runner.job_status(second.job_id)["status"] == "finished"
    assert runner.running_job("project:1") is None and runner.queued_job("project:1") is None


def test_a_failed_job_is_retried_then_succeeds(tmp_path):
    runner = make_runner(tmp_path, job_retries=2)
    FAILURES_LEFT["n"] = 1
    job = runner.enqueue(f"{__name__}.flaky_job", "x", coalesce_key="k")
    wait_for(lambda: (runner.job_status(job.job_id) or {}).get("status") == "finished")
    assert EVENTS == [("try", "x"), ("try", "x")]


def test_a_job_failing_every_retry_is_marked_failed_with_its_error(tmp_path):
    runner = make_runner(tmp_path, job_retries=1)
    FAILURES_LEFT["n"] = 5
    job = runner.enqueue(f"{__name__}.flaky_job", "x")
    wait_for(lambda: (runner.job_status(job.job_id) or {}).get("status") == "failed")
    status = runner.job_status(job.job_id)
    assert "Label Studio is restarting" in status["error"]
    assert status["attempts"] == 2


def test_a_failed_job_waiting_for_its_retry_says_when_and_a_final_failure_says_nothing(tmp_path):
    runner = make_runner(tmp_path, job_retries=1)
    runner.settings = runner.settings.model_copy(update={"job_retry_backoff_s": 30})
    FAILURES_LEFT["n"] = 5
    job = runner.enqueue(f"{__name__}.flaky_job", "x")
    wait_for(lambda: (runner.job_status(job.job_id) or {}).get("status") == "scheduled")
    shown = retrying(runner, job.job_id)
    assert shown["state"] == "retrying" and 29 <= shown["retry_in_s"] <= 30
    assert shown["retry"] == f"retrying in {shown['retry_in_s']} s"
    assert retrying(runner, None) == {} and retrying(runner, "no-such-job") == {}
    final = make_runner(tmp_path, job_retries=0)
    spent = final.enqueue(f"{__name__}.flaky_job", "y")
    wait_for(lambda: (final.job_status(spent.job_id) or {}).get("status") == "failed")
    assert retrying(final, spent.job_id) == {}


def test_a_job_past_its_timeout_stops_at_the_next_check(tmp_path):
    runner = make_runner(tmp_path, job_timeout_s=10)
    settings = runner.settings.model_copy(update={"job_timeout_s": 0})
    context = JobContext(settings=settings, kv=runner.kv, runner=runner)
    with pytest.raises(JobTimeout):
        run_job(f"{__name__}.slow_loop_job", [], "k", "job-1", context=context)
    assert runner.running_job("k") is None  # the lease is released on failure


def test_claim_sets_an_absent_key_and_names_the_holder_of_a_taken_one():
    kv = MemoryKV()
    assert kv.claim("lsllm:queued:p", "job-1", ttl_s=60) is None
    assert kv.claim("lsllm:queued:p", "job-2", ttl_s=60) == "job-1"
    assert kv.get("lsllm:queued:p") == "job-1"
    assert kv.release("lsllm:queued:p", "job-1")
    assert kv.claim("lsllm:queued:p", "job-2") is None


def test_sadd_count_adds_and_counts_distinct_members():
    kv = MemoryKV()
    assert kv.sadd_count("lsllm:events", ["a", "b"]) == 2
    assert kv.sadd_count("lsllm:events", ["b", "c"]) == 3
    assert kv.sadd_count("lsllm:events", []) == 3
    assert kv.sadd_count("lsllm:empty", []) == 0
    assert kv.smembers("lsllm:events") == {"a", "b", "c"}
