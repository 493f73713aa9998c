"""/predict inside its time budget, the job's task selection, progress numbers (fake LLM, no Label Studio)."""

from __future__ import annotations

import pytest

from ml_backend.app import services_of
from ml_backend.ls_client import TaskRecord
from ml_backend.preannotate import select_tasks
from ml_backend.progress import rate_and_eta
from ml_backend.versioning import PENDING_SUFFIX
from tests.conftest import LABELING_CONFIGS

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()


def _setup(client, project="7.1795457094"):
    response = client.post("/setup", json={"project": project, "schema": SENTIMENT_EN})
    assert response.status_code == 200
    return response.json["model_version"]


def test_tasks_over_the_budget_get_a_pending_placeholder_not_an_empty_current_version(bulk_app):
    app = bulk_app(predict_time_budget_s=0)
    client = app.test_client()
    version = _setup(client)
    tasks = [{"id": i, "data": {"text": "positive"}} for i in (11, 12, 13)]
    response = client.post("/predict", json={"tasks": tasks, "project": "7.1795457094"})

    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 3
    for prediction in results:
        assert prediction["model_version"] == version + PENDING_SUFFIX != version
        assert prediction["result"] == [] and prediction["score"] == 0.0


def test_overflow_is_handed_to_the_job_which_reports_why_it_cannot_run(bulk_app):
    app = bulk_app(predict_time_budget_s=0)
    client = app.test_client()
    _setup(client)
    client.post("/predict", json={"tasks": [{"id": 5, "data": {"text": "x"}}], "project": "7.1795457094"})
    runner = services_of(app).runner
    assert runner.wait_idle(10)
    status = client.get("/preannotate/status?project=7").json
    assert status["state"] == "failed"
    assert "LABEL_STUDIO_URL" in status["last_error"]  # no URL/token known: the error says how to fix it


def test_small_requests_are_scored_on_the_spot(bulk_app, keyword_runtime):
    client = bulk_app(demonstrations=0).test_client()  # no cold start due: /predict may answer itself
    version = _setup(client)
    tasks = [{"id": 1, "data": {"text": "positive"}}, {"id": 2, "data": {"text": "negative"}}]
    results = client.post("/predict", json={"tasks": tasks, "project": "7.1795457094"}).json["results"]
    assert [r["model_version"] for r in results] == [version, version]
    assert all(len(r["result"]) == 1 and r["score"] > 0 for r in results)


def test_job_results_are_served_from_the_cache_without_scoring(bulk_app, keyword_runtime):
    app = bulk_app()
    client = app.test_client()
    version = _setup(client)
    cached = {"result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                          "value": {"choices": ["negative"]}}], "score": 0.42, "model_version": version}
    services_of(app).bulk.cache.put("7.1795457094", version, {21: cached})
    keyword_runtime.calls.clear()
    results = client.post(
        "/predict", json={"tasks": [{"id": 21, "data": {"text": "positive"}}], "project": "7.1795457094"}
    ).json["results"]
    assert results == [cached]
    assert keyword_runtime.calls == []


def test_first_setup_of_a_project_queues_preannotation_once_per_version(bulk_app):
    app = bulk_app()
    client = app.test_client()
    _setup(client, "8.1")
    _setup(client, "8.1")  # Label Studio calls /setup again and again: no new job
    runner = services_of(app).runner
    assert runner.wait_idle(10)
    assert len(runner.jobs()) == 1


def test_explicit_trigger_needs_a_connected_project(bulk_app):
    client = bulk_app().test_client()
    response = client.post("/preannotate", json={"project": 99})
    assert response.status_code == 404
    assert "hint" in response.json
    assert client.post("/preannotate", json={"project": 99, "tasks": "1,2"}).status_code == 400


def _task(task_id, versions=(), labeled=False):
    return TaskRecord(id=task_id, data={"text": "t"}, labeled=labeled, model_versions=set(versions))


def test_selection_skips_current_version_and_human_labeled_tasks():
    tasks = [
        _task(1),
        _task(2, versions=["v2"]),
        _task(3, versions=["v1"]),  # old version: predicted again
        _task(4, labeled=True),
        _task(5, versions=["v2-pending"]),  # a placeholder does not count as v2
    ]
    todo, covered, labeled = select_tasks(tasks, "v2", include_labeled=False)
    assert [t.id for t in todo] == [1, 3, 5]
    assert (covered, labeled) == (1, 1)
    todo, _, labeled = select_tasks(tasks, "v2", include_labeled=True)
    assert [t.id for t in todo] == [1, 3, 4, 5] and labeled == 0


def test_rate_and_eta():
    assert rate_and_eta(0, 100, 5.0) == (None, None)
    rate, eta = rate_and_eta(30, 100, 10.0)
    assert rate == pytest.approx(3.0) and eta == pytest.approx(70 / 3.0)


def test_queue_refresh_re_applies_sampling_and_the_review_view(settings, keyword_runtime):
    """Someone switched the project to sequential sampling and deleted the tab: POST /queue/refresh
    (the pre-annotation job's last step) points it back at the current version, recreates the view
    once, and predicts nothing twice."""
    from ml_backend.app import create_app
    from tests.fakes import FakeLabelStudio

    app = create_app(settings.model_copy(update={
        "preannotate_auto": True, "job_retries": 0, "demonstrations": 0, "bias_calibration": "none",
        "preannotate_first_page": 0,
    }), runtime_loader=lambda: keyword_runtime)
    services = services_of(app)
    fake = FakeLabelStudio.with_texts(["positive", "negative", "positive again"])
    services.client_factory = lambda state: fake
    client = app.test_client()
    version = _setup(client)
    assert services.runner.wait_idle(30)
    assert fake.sampling == "Uncertainty sampling" and fake.views == ["Review queue"]
    written = dict(fake.predictions)

    fake.sampling, fake.project_model_version = "Sequential sampling", None
    fake.views.clear()
    answer = client.post("/queue/refresh", json={"project": 7})
    assert answer.status_code == 202 and answer.json["project"] == "7.1795457094"
    assert services.runner.wait_idle(30)
    assert fake.sampling == "Uncertainty sampling" and fake.project_model_version == version
    assert fake.views == ["Review queue"]
    assert fake.predictions == written  # every task already held the current version


def test_queue_refresh_needs_a_connected_project(bulk_app):
    client = bulk_app().test_client()
    assert client.post("/queue/refresh", json={"project": 99}).status_code == 404
    missing = client.post("/queue/refresh", json={})
    assert missing.status_code == 400 and "project" in missing.json["error"]
