"""The rq runner against a real Redis: coalescing, and a real rq worker running a job (fast, no model)."""

from __future__ import annotations

import time

import pytest

from ml_backend.config import Settings
from ml_backend.jobs import JobContext, RqRunner, run_job
from ml_backend.kv import RedisKV

pytestmark = pytest.mark.integration


def record_call(name, *, context):
    context.kv.sadd("lsllm:test:calls", [name])
    return name


_worker_context: dict[str, JobContext] = {}


def worker_entry(func_path, args, coalesce_key, job_id):
    """What the rq worker runs: the composition root's role (`ml_backend.wiring.run_job`) for these tests."""
    return run_job(func_path, args, coalesce_key, job_id, context=_worker_context["context"])


@pytest.fixture
def rq_context(redis_url, tmp_path):
    settings = Settings(model_dir=tmp_path, redis_url=redis_url, rq_queue=f"test-{time.time_ns()}", job_retries=0)
    kv = RedisKV.from_url(redis_url)
    kv.client.flushdb()
    context = JobContext(settings=settings, kv=kv)
    context.runner = RqRunner(settings, kv, entry_point=f"{__name__}.worker_entry")
    _worker_context["context"] = context
    return context


def test_at_most_one_queued_rq_job_per_key(rq_context):
    runner = rq_context.runner
    first = runner.enqueue(f"{__name__}.record_call", "a", coalesce_key="project:3")
    second = runner.enqueue(f"{__name__}.record_call", "b", coalesce_key="project:3")
    other = runner.enqueue(f"{__name__}.record_call", "c", coalesce_key="project:4")
    assert second.coalesced and second.job_id == first.job_id
    assert not other.coalesced
    assert runner.queue.count == 2
    assert runner.job_status(first.job_id)["status"] == "queued"


def test_a_real_rq_worker_runs_the_job_and_frees_the_key(rq_context):
    from rq.worker import SimpleWorker

    runner = rq_context.runner
    job = runner.enqueue(f"{__name__}.record_call", "a", coalesce_key="project:3")
    SimpleWorker([runner.queue], connection=runner.connection).work(burst=True)
    assert runner.job_status(job.job_id)["status"] == "finished"
    assert rq_context.kv.smembers("lsllm:test:calls") == {"a"}
    assert runner.queued_job("project:3") is None and runner.running_job("project:3") is None
    # the key is free again: a new request queues a new job
    assert not runner.enqueue(f"{__name__}.record_call", "b", coalesce_key="project:3").coalesced


def test_a_stale_queued_marker_does_not_swallow_new_requests(rq_context):
    runner = rq_context.runner
    rq_context.kv.set("lsllm:queued:project:5", "job-that-no-longer-exists")
    assert not runner.enqueue(f"{__name__}.record_call", "a", coalesce_key="project:5").coalesced


def test_redis_lease_is_renewed_and_released_only_by_its_owner(rq_context):
    kv = rq_context.kv
    assert kv.set_nx("lsllm:lease", "owner-1", ttl_s=5)
    assert not kv.set_nx("lsllm:lease", "owner-2", ttl_s=5)
    assert not kv.renew("lsllm:lease", "owner-2", ttl_s=5)
    assert not kv.release("lsllm:lease", "owner-2")
    assert kv.renew("lsllm:lease", "owner-1", ttl_s=5)
    assert kv.release("lsllm:lease", "owner-1")
    assert kv.get("lsllm:lease") is None


def test_request_sets_merge_into_the_active_set(rq_context):
    kv = rq_context.kv
    kv.sadd("lsllm:active", ["1"])  # left by a killed job
    kv.sadd("lsllm:request", ["2", "3"])
    assert kv.move_set("lsllm:request", "lsllm:active") == {"1", "2", "3"}
    assert kv.smembers("lsllm:request") == set()


def test_run_job_waits_for_the_running_lease(rq_context):
    kv = rq_context.kv
    settings = rq_context.settings.model_copy(update={"job_lease_s": 2, "job_timeout_s": 30})
    context = JobContext(settings=settings, kv=kv, runner=rq_context.runner)
    kv.set("lsllm:running:project:9", "a-killed-job", ttl_s=1.5)  # its heartbeat died with it
    assert run_job(f"{__name__}.record_call", ["x"], "project:9", "job-2", context=context) == "x"
    assert kv.get("lsllm:running:project:9") is None  # taken after the dead job's lease expired, then released


def test_redis_claim_and_sadd_count_match_the_in_process_store(rq_context):
    kv = rq_context.kv
    assert kv.claim("lsllm:queued:p", "job-1", ttl_s=60) is None
    assert kv.claim("lsllm:queued:p", "job-2", ttl_s=60) == "job-1"
    assert 0 < kv.client.pttl("lsllm:queued:p") <= 60_000
    assert kv.sadd_count("lsllm:events", ["a", "b"]) == 2
    assert kv.sadd_count("lsllm:events", ["b", "c"]) == 3
    assert kv.sadd_count("lsllm:events", []) == 3
    assert kv.sadd_count("lsllm:empty", []) == 0


def test_a_coalesced_enqueue_of_a_job_whose_hash_is_gone_queues_a_new_one(rq_context):
    runner = rq_context.runner
    first = runner.enqueue(f"{__name__}.record_call", "a", coalesce_key="project:6")
    rq_context.kv.client.delete(f"rq:job:{first.job_id}")  # rq's job expired or its queue was flushed
    second = runner.enqueue(f"{__name__}.record_call", "b", coalesce_key="project:6")
    assert not second.coalesced and second.job_id != first.job_id
