"""The HTTP protocol as Label Studio 1.23.2 calls it, with a fake LLM (the real one is in integration/)."""

import json

import pytest

from tests.conftest import LABELING_CONFIGS, ls_payload

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json["status"] == "UP"
    assert response.json["model_class"] == "LLMBackend"


def test_recorded_setup_returns_a_model_version(client):
    response = client.post("/setup", json=ls_payload("setup_1.json"))
    assert response.status_code == 200
    version = response.json["model_version"]
    assert version.startswith("keyword") or "-v1" in version
    # stable: asking again gives the same version
    assert client.post("/setup", json=ls_payload("setup_2.json")).json["model_version"] == version


def test_recorded_predict_returns_one_prediction_per_task_in_order(client):
    body = ls_payload("predict_1.json")
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(body["tasks"])
    for prediction in results:
        assert set(prediction) >= {"result", "score", "model_version"}
        (region,) = prediction["result"]
        assert region["from_name"] == "sentiment" and region["to_name"] == "text"
        assert region["value"]["choices"][0] in {"正面", "负面"}
        assert 0.0 < prediction["score"] <= 1.0


def test_predicted_label_follows_the_model_probabilities(client):
    tasks = [{"id": 1, "data": {"text": "positive positive"}}, {"id": 2, "data": {"text": "negative!"}}]
    results = client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN}).json["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["positive"], ["negative"]]
    assert results[0]["score"] > results[1]["score"]  # two keyword hits vs one: more confident


def test_tasks_without_text_still_get_a_prediction(client):
    tasks = [
        {"id": 1, "data": {"text": "positive"}},
        {"id": 2, "data": {}},
        {"id": 3, "data": {"text": "   "}},
        {"id": 4, "data": {"text": 42}},
        {"id": 5},
    ]
    results = client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN}).json["results"]
    assert len(results) == 5
    assert results[0]["result"]
    for missing in results[1:]:
        assert missing["result"] == [] and missing["score"] == 0.0 and missing["model_version"]


def test_multiple_choice_config_gives_independent_labels(client):
    config = (LABELING_CONFIGS / "multilabel_en.xml").read_text()
    results = client.post("/predict", json={"tasks": [{"data": {"text": "yes"}}], "label_config": config}).json["results"]
    (region,) = results[0]["result"]
    assert isinstance(region["value"]["choices"], list)
    assert 0.0 <= results[0]["score"] <= 1.0


def test_predict_uses_the_config_from_setup_when_none_is_sent(client):
    client.post("/setup", json={"project": "7.123", "schema": SENTIMENT_EN})
    response = client.post("/predict", json={"project": "7.123", "tasks": [{"data": {"text": "negative"}}]})
    assert response.status_code == 200
    assert response.json["results"][0]["result"][0]["value"]["choices"] == ["negative"]


def test_model_version_changes_with_instruction_and_config(client):
    v1 = client.post("/setup", json={"project": "8.1", "schema": SENTIMENT_EN}).json["model_version"]
    v2 = client.post(
        "/setup", json={"project": "8.1", "schema": SENTIMENT_EN, "extra_params": {"instruction": "Be strict."}}
    ).json["model_version"]
    v3 = client.post("/setup", json={"project": "8.1", "schema": SENTIMENT_EN.replace("likes", "loves")}).json[
        "model_version"
    ]
    assert len({v1, v2, v3}) == 3


@pytest.mark.parametrize(
    "name",
    [
        "webhook_annotation_created_1.json",
        "webhook_annotation_updated_1.json",
        "webhook_annotations_deleted_1.json",
        "webhook_start_training_1.json",
        "webhook_project_updated_1.json",
        "webhook_tasks_created_1.json",
    ],
)
def test_every_recorded_webhook_is_accepted(client, name):
    response = client.post("/webhook", json=ls_payload(name))
    assert response.status_code == 200
    assert response.json["action"] == ls_payload(name)["action"]


def test_unknown_webhook_action_is_ignored_with_200(client):
    assert client.post("/webhook", json={"action": "SOMETHING_NEW", "project": {"id": 1}}).status_code == 200


def test_train_alias(client):
    assert client.post("/train", json={"project": {"id": 1}}).status_code == 200


def test_versions(client):
    client.post("/setup", json={"project": "9.1", "schema": SENTIMENT_EN})
    versions = client.get("/versions?project=9").json["versions"]
    assert len(versions) == 1 and versions[0].endswith("-v1")


# --- bad input: always a 4xx with a JSON error, never a 5xx ------------------------------------
@pytest.mark.parametrize(
    "path, data, content_type",
    [
        ("/predict", "{not json", "application/json"),
        ("/predict", "[1, 2]", "application/json"),
        ("/predict", json.dumps({"label_config": SENTIMENT_EN}), "application/json"),
        ("/predict", json.dumps({"tasks": "abc", "label_config": SENTIMENT_EN}), "application/json"),
        ("/predict", json.dumps({"tasks": [1, 2], "label_config": SENTIMENT_EN}), "application/json"),
        ("/predict", json.dumps({"tasks": [{"data": {"text": "x"}}], "label_config": 5}), "application/json"),
        ("/predict", json.dumps({"tasks": [{"data": {"text": "x"}}]}), "application/json"),
        ("/setup", json.dumps({"project": "1.1"}), "application/json"),
        ("/setup", "nonsense", "text/plain"),
        ("/webhook", json.dumps({"no": "action"}), "application/json"),
    ],
    ids=[
        "malformed-json",
        "array-body",
        "missing-tasks",
        "tasks-not-list",
        "tasks-not-objects",
        "config-not-string",
        "no-config-anywhere",
        "setup-without-schema",
        "setup-not-json",
        "webhook-without-action",
    ],
)
def test_bad_input_gets_a_4xx_json_error(client, path, data, content_type):
    response = client.post(path, data=data, content_type=content_type)
    assert 400 <= response.status_code < 500
    assert response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_unsupported_config_is_explained(client):
    config = '<View><Image name="img" value="$image"/><Choices name="c" toName="img"><Choice value="A"/></Choices></View>'
    response = client.post("/setup", json={"project": "1.1", "schema": config})
    assert response.status_code == 422
    assert "Choices" in response.json["error"] and response.json["hint"]


def test_a_1mb_text_gets_a_valid_prediction(client, caplog):
    huge = "positive " * (1024 * 1024 // 9)
    response = client.post("/predict", json={"tasks": [{"data": {"text": huge}}], "label_config": SENTIMENT_EN})
    assert response.status_code == 200
    assert response.json["results"][0]["result"][0]["value"]["choices"] == ["positive"]
    assert "text_truncated" in caplog.text


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json["error"]


def test_basic_auth(tmp_path, keyword_runtime):
    from ml_backend.app import create_app
    from ml_backend.config import Settings

    settings = Settings(model_dir=tmp_path, basic_auth_user="ls", basic_auth_pass="secret")
    client = create_app(settings, runtime_loader=lambda: keyword_runtime).test_client()
    assert client.get("/health").status_code == 200
    body = {"project": "1.1", "schema": SENTIMENT_EN}
    assert client.post("/setup", json=body).status_code == 401
    assert client.post("/setup", json=body, auth=("ls", "secret")).status_code == 200


def test_setup_does_not_load_the_model(tmp_path):
    from ml_backend.app import create_app
    from ml_backend.config import Settings

    def must_not_load():
        raise AssertionError("the model was loaded inside /setup")

    client = create_app(Settings(model_dir=tmp_path), runtime_loader=must_not_load).test_client()
    assert client.post("/setup", json={"project": "1.1", "schema": SENTIMENT_EN}).status_code == 200
    assert client.get("/health").json["model_loaded"] is False
