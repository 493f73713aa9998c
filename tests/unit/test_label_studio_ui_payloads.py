"""What Label Studio 1.23.2's web UI really sends (strings where recorded API fixtures had objects),
and what its UI can show of our answers: each rule with the exact payload that exposed it."""

from __future__ import annotations

import copy
import logging

import pytest

from ml_backend.app import services_of
from ml_backend.versioning import PENDING_SUFFIX
from tests.conftest import LABELING_CONFIGS, ls_payload

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
TOPIC_EN = (LABELING_CONFIGS / "topic_en.xml").read_text()
IMAGE_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
    '<Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)


def _setup_body(extra_params, project="6.1795457094", schema=SENTIMENT_EN) -> dict:
    """The recorded /setup body, without the recorded Label Studio's URL and token (no call out)."""
    body = {k: v for k, v in ls_payload("setup_1.json").items() if k not in ("hostname", "access_token")}
    return {**body, "project": project, "schema": schema, "extra_params": extra_params}


# --- 1. extra params arrive as a string -----------------------------------------------------------
def test_instruction_typed_in_the_ui_as_a_json_string_reaches_the_prompt_and_the_version(client):
    plain = client.post("/setup", json=_setup_body(None)).json["model_version"]
    typed = '{"instruction": "Label the main topic of the news article."}'  # exactly what the textarea sends
    with_instruction = client.post("/setup", json=_setup_body(typed)).json["model_version"]
    assert with_instruction != plain
    backend = client.application.extensions["llm_backend"]
    assert backend.store.load("6.1795457094").instruction == "Label the main topic of the news article."


@pytest.mark.parametrize("raw", ["instruction: be nice", '["a list"]', "42"])
def test_extra_params_that_are_not_a_json_object_are_ignored_with_a_warning(client, caplog, raw):
    plain = client.post("/setup", json=_setup_body(None)).json["model_version"]
    with caplog.at_level(logging.WARNING):
        response = client.post("/setup", json=_setup_body(raw))
    assert response.status_code == 200 and response.json["model_version"] == plain
    assert any("event=extra_params_ignored" in r.getMessage() for r in caplog.records)


# --- 2. the rejection must be readable in the UI ---------------------------------------------------
def test_unsupported_config_is_explained_in_the_status_line_in_words(client):
    response = client.post("/setup", json=_setup_body(None, schema=IMAGE_CONFIG))
    assert response.status_code == 422
    reason = response.status.split(" ", 1)[1]
    assert reason.startswith("Unsupported labeling config")
    assert "<" not in reason and ">" not in reason  # Label Studio renders the phrase as HTML
    assert "Choices or Labels" in reason and "Text" in reason
    assert "<Choices>" in response.json["error"]  # the body keeps the full message for API clients


def test_the_rejection_is_recorded_in_the_projects_status(bulk_app):
    client = bulk_app().test_client()
    assert client.post("/setup", json=_setup_body(None, schema=IMAGE_CONFIG)).status_code == 422
    status = client.get("/preannotate/status?project=6").json
    assert status["state"] == "rejected"
    assert status["last_error"].startswith("Unsupported labeling config") and "Choices" in status["last_error"]


def test_status_lines_stay_ascii_and_bounded_for_any_message(client):
    response = client.post("/setup", json={"project": "x" * 5000, "schema": SENTIMENT_EN})
    assert response.status_code == 400
    assert response.status.isascii() and len(response.status) < 400


# --- 4. no competing predictions while the cold start is due ---------------------------------------
def test_predict_during_a_due_cold_start_answers_placeholders_for_the_job_to_replace(bulk_app, keyword_runtime):
    app = bulk_app(demonstrations=4)  # a cold start is due for a new single-choice project
    client = app.test_client()
    version = client.post("/setup", json=_setup_body(None)).json["model_version"]
    keyword_runtime.calls.clear()
    tasks = [{"id": i, "data": {"text": "positive"}} for i in (1, 2, 3)] + [{"data": {"text": "negative"}}]
    results = client.post("/predict", json={"tasks": tasks, "project": "6.1795457094"}).json["results"]
    assert len(results) == 4
    for placeholder in results[:3]:
        assert placeholder["model_version"] == version + PENDING_SUFFIX
        assert placeholder["result"] == [] and placeholder["score"] == 0.0
    # a task without an id cannot be handed to the job: it is answered on the spot
    assert results[3]["model_version"] == version and results[3]["result"]


# --- 5. state keyed by id + creation time ------------------------------------------------------------
def test_a_new_project_with_a_reused_number_is_pre_annotated_again(bulk_app):
    """After a Label Studio reset the new project 6 has another creation time: it starts fresh."""
    app = bulk_app()
    client = app.test_client()
    client.post("/setup", json=_setup_body(None, project="6.1795457094"))
    client.post("/setup", json=_setup_body(None, project="6.1795999999"))
    runner = services_of(app).runner
    assert runner.wait_idle(10)
    assert sorted(job["args"][0] for job in runner.jobs()) == ["6.1795457094", "6.1795999999"]


@pytest.mark.parametrize("project", ["None", "nan", "abc", "1e308", "<View/>", "9" * 100_000])
def test_ids_that_are_not_label_studio_ids_are_rejected_before_touching_the_disk(client, project):
    backend = client.application.extensions["llm_backend"]
    for path, body in (
        ("/setup", {"project": project, "schema": SENTIMENT_EN}),
        ("/predict", {"project": project, "tasks": [{"data": {"text": "x"}}], "label_config": SENTIMENT_EN}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": project}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 400, path
        assert "project id" in response.json["error"]
    assert not backend.store.root.exists() or not any(backend.store.root.iterdir())


def test_status_of_a_non_numeric_project_is_a_400(bulk_app):
    client = bulk_app().test_client()
    response = client.get("/preannotate/status?project=abc")
    assert response.status_code == 400 and "hint" in response.json


# --- 6. config edits and repeated /setup calls ------------------------------------------------------
def test_project_updated_with_a_new_config_refreshes_predictions_at_once(bulk_app):
    app = bulk_app()
    client = app.test_client()
    body = ls_payload("webhook_project_updated_1.json")
    first = client.post("/setup", json=_setup_body(None, schema=body["project"]["label_config"])).json["model_version"]
    runner = services_of(app).runner
    assert runner.wait_idle(10)
    unchanged = client.post("/webhook", json=body).json
    assert unchanged["status"] == "ignored"

    edited = copy.deepcopy(body)
    edited["project"]["label_config"] = edited["project"]["label_config"].replace(
        "</Choices>", '<Choice value="中性"/></Choices>'
    )
    answer = client.post("/webhook", json=edited).json
    assert answer["status"] == "config_updated" and answer["model_version"] != first
    assert runner.wait_idle(10)
    reasons = [job["args"][0] for job in runner.jobs()]
    assert reasons == ["6.1795457094", "6.1795457094"]  # the connection's job, then the refresh
    # the next /setup (Label Studio sends the new config too) starts nothing more
    client.post("/setup", json=_setup_body(None, schema=edited["project"]["label_config"]))
    assert runner.wait_idle(10) and len(runner.jobs()) == 2


def test_project_updated_for_a_project_not_connected_here_is_ignored(client):
    answer = client.post("/webhook", json=ls_payload("webhook_project_updated_2.json")).json
    assert answer["status"] == "ignored"


def test_after_the_cold_start_the_next_setup_starts_no_second_job(settings, keyword_runtime):
    from ml_backend.app import create_app

    app = create_app(
        settings.model_copy(update={"preannotate_auto": True, "job_retries": 0, "demonstrations": 2}),
        runtime_loader=lambda: keyword_runtime,
    )
    client = app.test_client()
    services = services_of(app)
    runner = services.runner
    first = client.post("/setup", json=_setup_body(None)).json["model_version"]
    assert runner.wait_idle(10)
    texts = ["positive day", "negative day", "positive news", "negative news"] * 3
    new_version = services.round_one.run("6.1795457094", [{"data": {"text": t}} for t in texts])
    assert new_version != first
    assert runner.wait_idle(10)
    jobs_before = len(runner.jobs())
    assert client.post("/setup", json=_setup_body(None)).json["model_version"] == new_version
    assert runner.wait_idle(10) and len(runner.jobs()) == jobs_before


# --- 7. Start Training and the status -----------------------------------------------------------------
def test_start_training_of_an_unconnected_project_says_why_nothing_trains(client):
    answer = client.post("/webhook", json=ls_payload("webhook_start_training_1.json"))
    assert answer.status_code == 200
    assert answer.json["job"] is None
    assert answer.json["status"] == "ignored" and "connect it" in answer.json["reason"]


def test_start_training_answers_at_once_with_the_job_label_studio_records(settings, keyword_runtime):
    from ml_backend.app import create_app

    app = create_app(settings.model_copy(update={"job_retries": 0}), runtime_loader=lambda: keyword_runtime)
    client = app.test_client()
    client.post("/setup", json=ls_payload("setup_1.json"))
    answer = client.post("/webhook", json=ls_payload("webhook_start_training_1.json"))
    assert answer.status_code == 200
    assert answer.json["status"] == "queued" and answer.json["job"].startswith("train_project-")


def test_status_shows_iso_timestamps(bulk_app):
    client = bulk_app().test_client()
    client.post("/setup", json=_setup_body(None))
    runner = services_of(client.application).runner
    assert runner.wait_idle(10)
    status = client.get("/preannotate/status?project=6").json
    assert status["state"] == "failed"  # no Label Studio here; the point is the shape
    assert status["started_at"].endswith("+00:00") and "T" in status["started_at"]
    assert status["job_id"]
