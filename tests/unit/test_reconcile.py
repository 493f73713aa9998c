"""Reconciliation (issue 14, items 3 and 4): a restarted process resumes unfinished work by itself,
and webhooks that arrive while Redis is down answer 200 and are caught up when it returns.
Fake LLM, fake encoder, in-memory Label Studio; the real processes are in tests/integration/."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from ml_backend import wiring
from ml_backend.app import create_app, services_of
from ml_backend.kv import KV, MemoryKV, is_unavailable
from ml_backend.reconcile import ProjectView, annotation_drift, needs_drift, preannotation_due, training_due
from ml_backend.slm_model import serving_manifest
from tests.conftest import LABELING_CONFIGS
from tests.fakes import FakeLabelStudio, KeywordEncoder

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
PROJECT = "5.1795457094"

IDLE = ProjectView(
    project_key=PROJECT, connected=True, preannotate_auto=True, triggered=True, progress_state="done",
    preannotation_live=False, trainable=True, training_auto=True, training_state="done", training_live=False,
    pending_events=0, needed=10,
)


def view(**changes) -> ProjectView:
    return dataclasses.replace(IDLE, **changes)


# --- the decisions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, due", [
    ({}, None),
    ({"progress_state": "running"}, "running_without_job"),  # its job died with its process or worker
    ({"progress_state": "queued"}, "queued_without_job"),
    ({"progress_state": "running", "preannotation_live": True}, None),  # a job holds it: never a second
    ({"progress_state": None}, "no_record"),  # a fresh in-process store after a restart
    ({"progress_state": None, "triggered": False, "preannotate_auto": False}, None),  # never asked for
    ({"progress_state": None, "triggered": True, "preannotate_auto": False}, "no_record"),  # asked once by hand
    ({"progress_state": "failed"}, None),  # its retries ran; the next event or version starts it
    ({"progress_state": "rejected"}, None),
    ({"progress_state": "running", "connected": False}, None),
])
def test_preannotation_is_due_when_its_job_was_lost(changes, due):
    assert preannotation_due(view(**changes)) == due


@pytest.mark.parametrize("changes, due", [
    ({}, None),
    ({"training_state": "running"}, "running_without_job"),
    ({"training_state": "queued", "training_auto": False}, "queued_without_job"),  # a lost Start Training
    ({"training_state": "running", "training_live": True}, None),
    ({"pending_events": 10}, "pending_events"),  # recorded, then the enqueue or the job was lost
    ({"pending_events": 9}, None),
    ({"pending_events": 10, "training_auto": False}, None),
    ({"drift": 10}, "annotation_drift"),  # webhooks that never arrived
    ({"drift": 9}, None),
    ({"drift": 50, "trainable": False}, None),
])
def test_training_is_due_when_a_run_was_lost_or_annotations_changed_unseen(changes, due):
    assert training_due(view(**changes)) == due


def test_label_studio_is_asked_for_the_count_only_when_it_can_decide():
    assert needs_drift(IDLE)
    assert not needs_drift(view(pending_events=10))  # due anyway
    assert not needs_drift(view(training_live=True)) and not needs_drift(view(training_auto=False))
    assert not needs_drift(view(drift=3))  # asked already


def test_drift_counts_deletions_and_a_project_never_trained():
    assert annotation_drift(12, 20) == 8
    assert annotation_drift(12, None) == 12
    assert annotation_drift(None, 5) is None


# --- a restart of the in-process runner -------------------------------------------------------------------
def _settings(settings, **changes):
    return settings.model_copy(update={
        "preannotate_auto": True, "job_retries": 0, "demonstrations": 0, "bias_calibration": "none",
        "preannotate_first_page": 0, "train_min_new_annotations": 5, "preannotate_score_batch": 4,
        "preannotate_write_batch": 4, **changes,
    })


def _process(settings, keyword_runtime, fake, encoder=None):
    """One backend process: its own services and (no REDIS_URL) its own in-memory store."""
    return wiring.build_services(settings, runtime_loader=lambda: keyword_runtime, client_factory=lambda state: fake,
                                 encoder_loader=lambda name: encoder or KeywordEncoder())


def test_a_restarted_process_finishes_the_preannotation_its_predecessor_was_killed_in(settings, keyword_runtime):
    settings = _settings(settings)
    fake = FakeLabelStudio.with_texts([f"review {i}: positive" if i % 2 else f"review {i}: negative" for i in range(30)])
    first = _process(settings, keyword_runtime, fake)
    client = create_app(services=first).test_client()
    version = client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN}).json["model_version"]
    assert first.runner.wait_idle(30)
    # What a SIGKILL at 12 of 30 leaves: the store on disk, 12 predictions in Label Studio.
    for prediction_id in sorted(fake.predictions)[12:]:
        del fake.predictions[prediction_id]

    second = _process(settings, keyword_runtime, fake)  # the new process: empty queue, no progress record
    summary = second.reconciler.sweep()
    again = second.reconciler.sweep()  # a second sweep (or another gunicorn worker's) while it is queued
    assert second.runner.wait_idle(30)

    assert summary.preannotation == 1 and again.preannotation == 0
    per_task = fake.versions_per_task()
    assert all(versions.count(version) == 1 for versions in per_task.values()), "every task once, none twice"
    assert second.bulk.status(PROJECT)["state"] == "done"
    assert second.reconciler.sweep().preannotation == 0  # done: nothing more to do


# --- Redis down during a burst of webhooks -----------------------------------------------------------------
class OutageKV(MemoryKV):
    """The shared store with a switch: while `down`, every operation fails as redis-py does."""

    down = False

    def __getattribute__(self, name):
        if name in KV.__abstractmethods__ and object.__getattribute__(self, "down"):
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return object.__getattribute__(self, name)


def _review(i: int) -> tuple[str, str]:
    gold = ("positive", "negative")[i % 2]
    return (f"review {i}: a {gold} experience" if i % 4 < 2 else
            f"review {i}: " + ("great great stuff" if gold == "positive" else "awful awful stuff")), gold


def test_webhooks_during_a_redis_outage_answer_200_and_training_catches_up(settings, keyword_runtime, monkeypatch):
    settings = _settings(settings)
    kv = OutageKV()
    monkeypatch.setattr(wiring, "kv_from_settings", lambda settings: kv)
    fake = FakeLabelStudio.with_texts([_review(i)[0] for i in range(40)])
    services = _process(settings, keyword_runtime, fake)
    client = create_app(services=services).test_client()
    client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN})
    assert services.runner.wait_idle(30)

    kv.down = True
    answers = []
    for task_id in range(1, 21):
        annotation = fake.annotate(task_id, _review(task_id - 1)[1])
        answers.append(client.post("/webhook", json={
            "action": "ANNOTATION_CREATED", "annotation": {"id": annotation["id"]},
            "project": {"id": 5, "total_annotations_number": task_id}, "task": {"id": task_id}}))
    assert {a.status_code for a in answers} == {200}
    assert {a.json["status"] for a in answers} == {"deferred"} and not any(a.json["queued"] for a in answers)
    assert services.reconciler.sweep().replayed == 0  # still down: kept for the next sweep
    assert len(services.webhooks.deferred) == 20

    kv.down = False
    summary = services.reconciler.sweep()
    assert summary.replayed == 20 and summary.training == 0  # the replay itself queued the run
    assert services.runner.wait_idle(60) and services.runner.wait_idle(60)

    state = services.store.load(PROJECT)
    manifest = serving_manifest(services.store.project_dir(PROJECT), state.slm_version)
    assert manifest is not None and manifest["counts"]["annotations_total"] == fake.annotation_count() == 20
    assert services.reconciler.sweep().training == 0  # trained on all of them: not due again


def test_annotations_whose_webhooks_were_lost_with_the_process_are_found_by_the_count(settings, keyword_runtime):
    """The process died during the outage with its deferred events: Label Studio's annotation
    count against what the serving version learned brings them back."""
    settings = _settings(settings)
    fake = FakeLabelStudio.with_texts([_review(i)[0] for i in range(40)])
    first = _process(settings, keyword_runtime, fake)
    create_app(services=first).test_client().post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN})
    assert first.runner.wait_idle(30)
    for task_id in range(1, 13):
        fake.annotate(task_id, _review(task_id - 1)[1])  # webhooks: lost

    second = _process(settings, keyword_runtime, fake)
    assert second.reconciler.sweep().training == 1
    assert second.runner.wait_idle(60) and second.runner.wait_idle(60)
    state = second.store.load(PROJECT)
    manifest = serving_manifest(second.store.project_dir(PROJECT), state.slm_version)
    assert manifest["counts"]["annotations_total"] == 12
    assert second.reconciler.sweep().training == 0


def test_a_store_error_that_is_not_an_outage_is_not_swallowed():
    assert is_unavailable(redis.exceptions.ConnectionError("refused"))
    assert is_unavailable(redis.exceptions.TimeoutError("timed out"))
    assert not is_unavailable(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_unavailable(ValueError("bug"))


def test_a_webhook_answers_200_at_once_when_the_real_redis_client_cannot_connect(settings, keyword_runtime):
    """redis-py against a port nobody listens on (REDIS_URL set, Redis down): not a 500, not a
    hang — the event is deferred (the timing figure is in the integration test)."""
    import socket

    with socket.socket() as sock:  # a free port, closed again: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0", "preannotate_auto": True}),
                     runtime_loader=lambda: keyword_runtime)
    client = app.test_client()
    assert client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN}).status_code == 200
    answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": 7},
                                           "project": {"id": 5, "total_annotations_number": 1}})
    assert answer.status_code == 200 and answer.json["status"] == "deferred"
    answer = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": [{"id": 3}], "project": {"id": 5}})
    assert answer.status_code == 200 and answer.json["status"] == "deferred"
    assert len(services_of(app).webhooks.deferred) == 2


def test_label_studio_is_asked_for_counts_on_the_first_sweep_and_after_deferred_webhooks(settings, keyword_runtime):
    """Auto-accepted annotations change Label Studio's count too: a count every minute would
    start runs for them, so it is asked only when webhooks may have been missed."""
    settings = _settings(settings)
    fake = FakeLabelStudio.with_texts([_review(i)[0] for i in range(40)])
    asked = []
    count = fake.annotation_count
    fake.annotation_count = lambda: asked.append(1) or count()
    services = _process(settings, keyword_runtime, fake)
    client = create_app(services=services).test_client()
    client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN})
    assert services.runner.wait_idle(30)
    services.reconciler.sweep()
    services.reconciler.sweep()
    assert len(asked) == 1  # the first sweep only
    services.webhooks.deferred.add("ANNOTATION_CREATED", {"annotation": {"id": 99}, "project": {"id": 5}})
    services.reconciler.sweep()
    assert len(asked) == 2


class SilentServer:
    """A TCP server that accepts connections and never answers: a Redis host that hangs."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list = []
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        self.sock.close()


def test_a_redis_that_never_answers_is_not_retried_and_webhooks_are_deferred(settings, keyword_runtime):
    """A timeout is not retried (two socket timeouts would be all of a webhook's second); the
    webhook is deferred like with a refused connection."""
    import time

    from ml_backend.kv import kv_from_settings

    server = SilentServer()
    try:
        hung = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{server.port}/0"})
        kv = kv_from_settings(hung)
        with pytest.raises(redis.exceptions.TimeoutError):
            kv.get("anything")
        assert len(server.accepted) == 1  # one connection, one timeout: no retry

        app = create_app(hung.model_copy(update={"preannotate_auto": True}), runtime_loader=lambda: keyword_runtime)
        client = app.test_client()
        started = time.perf_counter()
        assert client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN}).status_code == 200
        print(f"/setup with a silent Redis: {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": 7},
                                               "project": {"id": 5, "total_annotations_number": 1}})
        print(f"webhook with a silent Redis: {answer.status_code} in {time.perf_counter() - started:.2f} s")
        assert answer.status_code == 200 and answer.json["status"] == "deferred"
    finally:
        server.close()
