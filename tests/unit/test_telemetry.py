"""`GET /metrics` through the Flask test client: request metrics move with the requests, the
shared state (jobs, queue, progress, versions) is read from the stores at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ml_backend import telemetry
from ml_backend.app import services_of
from ml_backend.kv import MemoryKV
from tests.conftest import LABELING_CONFIGS, ls_payload

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """These tests read the process's own registry: no multiprocess folder from elsewhere."""
    monkeypatch.setenv(telemetry.MULTIPROC_ENV, "unset-by-the-fixture")
    monkeypatch.delenv(telemetry.MULTIPROC_ENV)


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ok_job(*, context):
    return "ok"


def failing_job(*, context):
    raise RuntimeError("boom")


def test_predict_latency_and_tasks_predicted(client):
    before = scrape(client)
    tasks = [{"id": 1, "data": {"text": "positive"}}, {"id": 2, "data": {"text": "negative"}}]
    for _ in range(3):
        assert client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN}).status_code == 200
    after = scrape(client)
    assert value(after, "lsllm_predict_seconds_count") - value(before, "lsllm_predict_seconds_count") == 3
    assert value(after, "lsllm_predict_seconds_sum") > value(before, "lsllm_predict_seconds_sum")
    scored = value(after, "lsllm_tasks_predicted_total", source="scored") - value(
        before, "lsllm_tasks_predicted_total", source="scored")
    assert scored == 6
    bucket = value(after, "lsllm_predict_seconds_bucket", le="+Inf") - value(
        before, "lsllm_predict_seconds_bucket", le="+Inf")
    assert bucket == 3


def test_webhook_events_by_action_with_bounded_labels(client):
    before = scrape(client)
    client.post("/webhook", json={"action": "PROJECT_CREATED", "project": {"id": 1}})
    client.post("/webhook", json={"action": "PROJECT_CREATED", "project": {"id": 1}})
    client.post("/webhook", json={"action": "drop table; --"})
    after = scrape(client)
    assert value(after, "lsllm_webhook_events_total", action="PROJECT_CREATED") - value(
        before, "lsllm_webhook_events_total", action="PROJECT_CREATED") == 2
    assert value(after, "lsllm_webhook_events_total", action="invalid") - value(
        before, "lsllm_webhook_events_total", action="invalid") == 1


def test_action_labels_stop_growing(monkeypatch):
    monkeypatch.setattr(telemetry, "_seen_actions", {"X" * (i + 1) for i in range(telemetry.MAX_ACTIONS)})
    assert telemetry.action_label("XX") == "XX"
    assert telemetry.action_label("BRAND_NEW") == "other"
    assert telemetry.action_label("lower") == "invalid"


def test_model_version_per_project_as_a_label(client):
    body = ls_payload("setup_1.json")
    version = client.post("/setup", json=body).json["model_version"]
    samples = scrape(client)
    versions = {dict(labels)["project"]: dict(labels)["model_version"]
                for (name, labels) in samples if name == "lsllm_model_version_info"}
    assert version in versions.values()
    assert all(samples[("lsllm_model_version_info", labels)] == 1
               for (name, labels) in samples if name == "lsllm_model_version_info")


def test_jobs_by_kind_and_outcome_and_queue_depth(settings, keyword_runtime):
    from ml_backend.app import create_app

    app = create_app(settings.model_copy(update={"job_retries": 0}), runtime_loader=lambda: keyword_runtime)
    runner = services_of(app).runner
    runner.enqueue("tests.unit.test_telemetry.ok_job")
    runner.enqueue("tests.unit.test_telemetry.ok_job")
    runner.enqueue("tests.unit.test_telemetry.failing_job")
    assert runner.wait_idle(10)
    samples = scrape(app.test_client())
    assert value(samples, "lsllm_jobs_total", kind="ok_job", outcome="finished") == 2
    assert value(samples, "lsllm_jobs_total", kind="failing_job", outcome="failed") == 1
    assert value(samples, "lsllm_queue_depth", runner="in-process") == 0


def test_preannotation_and_training_progress(bulk_app):
    app = bulk_app()
    client = app.test_client()
    services = services_of(app)
    services.store.update("3.1795612540", lambda state: setattr(state, "label_config", SENTIMENT_EN))
    services.bulk.progress.update("3.1795612540", state="running", phase="predict", done=5, total=12)
    services.retraining.status_store.update("3.1795612540", state="running", stage="embed", done=2, total=9)
    samples = scrape(client)
    project = "3.1795612540"
    assert value(samples, "lsllm_preannotation_state", project=project, state="running") == 1
    assert value(samples, "lsllm_preannotation_done", project=project, phase="predict") == 5
    assert value(samples, "lsllm_preannotation_total_tasks", project=project, phase="predict") == 12
    assert value(samples, "lsllm_training_state", project=project, state="running") == 1
    assert value(samples, "lsllm_training_done", project=project, stage="embed") == 2
    assert value(samples, "lsllm_training_total_tasks", project=project, stage="embed") == 9
    assert any(name == "lsllm_model_version_info" and dict(labels)["project"] == project for name, labels in samples)


def test_metrics_need_basic_auth_when_it_is_on(settings, keyword_runtime):
    from ml_backend.app import create_app

    app = create_app(settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": "p"}),
                     runtime_loader=lambda: keyword_runtime)
    assert app.test_client().get("/metrics").status_code == 401


def test_prepare_multiproc_dir_empties_and_exports(tmp_path):
    folder = tmp_path / "prom"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"stale")
    (folder / "keep.txt").write_text("not ours")
    assert telemetry.prepare_multiproc_dir(folder) == folder
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    import os

    assert os.environ[telemetry.MULTIPROC_ENV] == str(folder)


def test_job_outcome_counters_are_shared_numbers():
    kv = MemoryKV()
    assert kv.hincr("k", "train_project:finished") == 1
    assert kv.hincr("k", "train_project:finished", 2) == 3
    kv.hset("k", {"junk:finished": "x"})
    assert telemetry.job_outcomes_from(kv.hgetall("k")) == {"train_project:finished": 3}


@pytest.mark.parametrize("outcome", ["timeout", "failed"])
def test_a_job_that_raises_is_counted_by_how_it_ended(outcome):
    from ml_backend import keys
    from ml_backend.config import Settings
    from ml_backend.jobs import JobContext, JobTimeout, run_job

    kv = MemoryKV()
    error = JobTimeout("late") if outcome == "timeout" else ValueError("bad")

    import tests.unit.test_telemetry as me

    def raising(*, context):
        raise error

    me.raising_now = raising
    with pytest.raises(type(error)):
        run_job("tests.unit.test_telemetry.raising_now", [], None, "job-1", context=JobContext(Settings(), kv))
    assert kv.hgetall(keys.JOB_OUTCOMES) == {f"raising_now:{outcome}": "1"}


def test_concurrent_first_requests_register_the_metrics_once(monkeypatch):
    """A fresh gunicorn worker's first requests arrive together: found by the load test, two threads
    both registered the metrics and one webhook answered 500 (DuplicateTimeseries)."""
    import threading
    import time

    created = []

    def slow_new_metrics():
        time.sleep(0.05)  # registration takes a moment: every thread arrives meanwhile
        created.append(object())
        return created[-1]

    monkeypatch.setattr(telemetry, "_request_metrics", None)
    monkeypatch.setattr(telemetry, "_new_metrics", slow_new_metrics)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(telemetry._metrics())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1 and seen == created * 8
