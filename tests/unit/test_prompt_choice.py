"""Prompt choice on a labeled dev set, through the backend, with a fake LLM."""

import dataclasses

import pytest

from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.llm.prompts import Demonstration
from ml_backend.predictor import ColdStart, LabelScorer, PredictionOptions
from ml_backend.prompt_choice import stored_variant, variant_cold_start
from ml_backend.wiring import build_services
from tests.conftest import LABELING_CONFIGS

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
# The fake model prefers the label whose name occurs in the text: right for these rows.
DEV = [(f"so positive, item {i}", "positive") if i % 2 else (f"negative remark {i}", "negative") for i in range(20)]


@pytest.fixture
def services(tmp_path, keyword_runtime):
    settings = Settings(model_dir=tmp_path, demonstrations=2, bias_calibration="prior_matching", cold_start_tasks=10)
    return build_services(settings, runtime_loader=lambda: keyword_runtime, preannotation=False)


def test_choice_is_stored_changes_the_version_and_drives_predictions(services):
    before = services.service.setup("3.1", SENTIMENT_EN)
    report = services.prompt_tuning.choose("3", [t for t, _ in DEV], [l for _, l in DEV])
    assert report["chosen"] in report["log_loss"]
    assert report["log_loss"][report["chosen"]] == min(report["log_loss"].values())
    assert len(report["log_loss"]) == 8  # every default variant was scored
    assert report["model_version"] != before
    state = services.store.load("3")
    variant = stored_variant(state)
    assert variant["name"] == report["chosen"]
    options = services.profiles.options(state)
    assert (options.scoring_mode, options.bias_calibration, options.use_hints) == (
        variant["scoring_mode"], variant["bias_calibration"], variant["use_hints"]
    )
    predictions, version = services.service.predict([{"data": {"text": "positive positive"}}], project="3.1")
    assert version == report["model_version"]
    assert predictions[0]["result"][0]["value"]["choices"] == ["positive"]


def test_a_new_config_drops_the_choice(services):
    services.service.setup("4.1", SENTIMENT_EN)
    services.prompt_tuning.choose("4", [t for t, _ in DEV], [l for _, l in DEV])
    services.service.setup("4.1", SENTIMENT_EN.replace('value="negative"', 'value="negative"/><Choice value="mixed"', 1))
    state = services.store.load("4")
    assert state.prompt_variant and stored_variant(state) is None


def test_bad_dev_sets_are_refused_with_a_reason(services):
    services.service.setup("5.1", SENTIMENT_EN)
    with pytest.raises(BadRequest, match="Labels not in"):
        services.prompt_tuning.choose("5", [t for t, _ in DEV], ["great"] * len(DEV))
    with pytest.raises(BadRequest, match="at least 10"):
        services.prompt_tuning.choose("5", ["a", "b"], ["positive", "negative"])
    with pytest.raises(BadRequest, match="named 'nope'"):
        services.prompt_tuning.choose("5", [t for t, _ in DEV], [l for _, l in DEV], target_name="nope")


def test_variant_uses_its_number_of_demos_and_its_own_bias():
    demos = tuple(Demonstration(text=f"t{i}", labels=("positive",)) for i in range(8))
    learned = {"sentiment": ColdStart(demonstrations=demos, label_bias=(0.7, 0.3))}
    variant = {"n_demonstrations": 4, "label_bias": {"sentiment": [0.6, 0.4]}}
    adjusted = variant_cold_start(learned, variant)["sentiment"]
    assert len(adjusted.demonstrations) == 4 and adjusted.label_bias == (0.6, 0.4)
    assert variant_cold_start(learned, None) is learned


def test_prompt_without_hints_leaves_out_the_definitions(keyword_runtime):
    from ml_backend.label_config import parse_label_config

    target = parse_label_config(SENTIMENT_EN).targets[0]
    with_hints = LabelScorer(keyword_runtime, PredictionOptions()).prompt(target)
    without = LabelScorer(keyword_runtime, dataclasses.replace(PredictionOptions(), use_hints=False)).prompt(target)
    hint = target.options[0].hint
    assert hint in with_hints.prefix and hint not in without.prefix
