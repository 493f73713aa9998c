"""Per-project settings from the connection's *Any extra params*: an allow-list, stored by /setup,
applied per project (two projects on one backend follow their own rules)."""

from __future__ import annotations

import json
import logging

import pytest

from ml_backend import project_settings
from ml_backend.app import services_of
from ml_backend.config import Settings
from ml_backend.kv import MemoryKV
from ml_backend.model_store import ModelStore
from ml_backend.retraining import TRAIN_JOB, Retraining
from tests.conftest import LABELING_CONFIGS
from tests.fakes import RecordingRunner

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
STRICT, EAGER = "7.1795457094", "8.1795457095"


def test_the_allow_list_names_settings():
    assert set(project_settings.ALLOWED) <= set(Settings.model_fields)


def test_parse_keeps_valid_values_and_says_why_it_ignores_the_rest():
    overrides, problems = project_settings.parse({
        "instruction": "Label the topic.",  # read by the profile, not a setting
        "training_auto": False, "TRAIN_MIN_NEW_ANNOTATIONS": "5", "queue_ordering": "true",
        "preannotate_labeled": "maybe", "llm_threads": 8,
    })
    assert overrides == {"training_auto": False, "train_min_new_annotations": 5, "queue_ordering": True}
    assert len(problems) == 2
    assert "key=preannotate_labeled reason=invalid_value" in problems[0] and "true_or_false" in problems[0]
    assert "key='llm_threads' reason=unknown_key" in problems[1] and "allowed=" in problems[1]


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "x"])
def test_a_count_must_be_a_positive_whole_number(value):
    assert project_settings.parse({"train_min_new_annotations": value})[0] == {}


def test_auto_accept_can_be_set_per_project_from_the_ui_strings():
    overrides, problems = project_settings.parse({"auto_accept_threshold": "0.97", "auto_accept_target_accuracy": ""})
    assert overrides == {"auto_accept_threshold": 0.97, "auto_accept_target_accuracy": None} and problems == []
    for bad in ("1.5", "0", True, "high"):
        assert project_settings.parse({"auto_accept_threshold": bad})[0] == {}
    assert project_settings.parse({"auto_accept_target_accuracy": "0.4"})[0] == {}
    settings = project_settings.effective(Settings(), {"auto_accept_threshold": 0.9})
    assert settings.auto_accept_threshold == 0.9 and Settings().auto_accept_threshold is None


def test_effective_applies_only_valid_stored_values():
    settings = Settings(train_min_new_annotations=10)
    assert project_settings.effective(settings, {}) is settings
    assert project_settings.effective(settings, {"train_min_new_annotations": 2}).train_min_new_annotations == 2
    hand_edited = {"train_min_new_annotations": "lots", "llm_threads": 64}
    assert project_settings.effective(settings, hand_edited) is settings


def setup_body(project: str, extra_params) -> dict:
    return {"project": project, "schema": SENTIMENT_EN, "extra_params": extra_params}


def test_setup_stores_them_without_changing_the_model_version(client, caplog):
    first = client.post("/setup", json=setup_body(STRICT, None)).json["model_version"]
    with caplog.at_level(logging.WARNING):
        again = client.post("/setup", json=setup_body(
            STRICT, json.dumps({"training_auto": False, "train_min_new_annotations": 3, "bogus": 1})
        )).json["model_version"]
    assert again == first  # when work starts is not part of what the model predicts
    store = services_of(client.application).store
    assert store.load(STRICT).project_settings == {"training_auto": False, "train_min_new_annotations": 3}
    assert "event=extra_params_ignored project=7.1795457094 key='bogus' reason=unknown_key" in caplog.text

    client.post("/setup", json=setup_body(STRICT, "not json"))  # ignored text: the stored settings stay
    assert store.load(STRICT).project_settings["train_min_new_annotations"] == 3
    client.post("/setup", json=setup_body(STRICT, "{}"))  # an empty object: back to the global settings
    assert store.load(STRICT).project_settings == {}


def test_two_projects_on_one_backend_follow_their_own_training_rules(settings):
    settings = settings.model_copy(update={"train_min_new_annotations": 10})
    store = ModelStore(settings.model_dir)
    store.update(STRICT, lambda state: setattr(state, "project_settings", {"training_auto": False}))
    store.update(EAGER, lambda state: setattr(state, "project_settings", {"train_min_new_annotations": 1}))
    for key in (STRICT, EAGER):
        store.update(key, lambda state: setattr(state, "label_config", SENTIMENT_EN))
    kv = MemoryKV()
    runner = RecordingRunner(settings, kv)
    trainer = Retraining(settings, kv, runner, store)

    eager = trainer.annotation_changed(EAGER, "ANNOTATION_CREATED", {"annotation": {"id": 1}})
    strict = trainer.annotation_changed(STRICT, "ANNOTATION_CREATED", {"annotation": {"id": 2}})
    assert eager["status"] == "queued" and runner.submitted == [(TRAIN_JOB, (EAGER,))]
    assert strict["status"] == "recorded" and "training_auto is off" in strict["reason"]
    assert trainer.start(STRICT)["status"] == "queued"  # Start Training still works there


def test_two_projects_pre_annotated_by_their_own_rules(settings, keyword_runtime):
    """One backend, two projects: the review project asks for labeled tasks too and keeps Label
    Studio's task order; the other gets the defaults (labeled tasks skipped, uncertainty sampling)."""
    from ml_backend.app import create_app
    from tests.fakes import FakeLabelStudio

    app = create_app(settings.model_copy(update={
        "preannotate_auto": True, "job_retries": 0, "demonstrations": 0, "bias_calibration": "none",
        "preannotate_first_page": 0,
    }), runtime_loader=lambda: keyword_runtime)
    services = services_of(app)
    fakes = {key: FakeLabelStudio.with_texts(["positive", "negative", "positive again"]) for key in (STRICT, EAGER)}
    for fake in fakes.values():
        fake.labeled = {1}
    services.client_factory = lambda state: fakes[state.project_id]
    client = app.test_client()
    client.post("/setup", json=setup_body(STRICT, None))
    client.post("/setup", json=setup_body(EAGER, '{"preannotate_labeled": true, "queue_ordering": false}'))
    assert services.runner.wait_idle(30)

    def predicted(key):
        return sorted(p["task"] for p in fakes[key].predictions.values())

    assert predicted(STRICT) == [2, 3] and fakes[STRICT].sampling == "Uncertainty sampling"
    assert predicted(EAGER) == [1, 2, 3] and fakes[EAGER].sampling == "Sequential sampling"
    assert fakes[EAGER].project_model_version is not None  # still pointed at the new version
