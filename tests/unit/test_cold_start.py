"""The cold-start step (self-labeled demonstrations + label bias) with a fake LLM."""

import pytest

from ml_backend.cold_start import cold_start_of
from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.label_config import parse_label_config
from ml_backend.wiring import build_services
from tests.conftest import LABELING_CONFIGS

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
TEXTS = [f"{'positive' if i % 3 else 'negative'} review number {i}" for i in range(40)]
TASKS = [{"id": i, "data": {"text": t}} for i, t in enumerate(TEXTS)]


@pytest.fixture
def services(tmp_path, keyword_runtime):
    settings = Settings(model_dir=tmp_path, demonstrations=4, bias_calibration="prior_matching")
    return build_services(settings, runtime_loader=lambda: keyword_runtime, preannotation=False)


def test_cold_start_stores_demos_and_bias_and_changes_the_version(services):
    before = services.service.setup("5.1", SENTIMENT_EN)
    after = services.round_one.run("5", TASKS)
    assert after != before
    learned = cold_start_of(services.store.load("5"))["sentiment"]
    assert len(learned.demonstrations) == 4
    assert {d.labels[0] for d in learned.demonstrations} == {"positive", "negative"}  # balanced
    assert all(d.text in TEXTS for d in learned.demonstrations)
    assert len(learned.label_bias) == 2 and abs(sum(learned.label_bias) - 1) < 1e-6
    # predictions now carry the new version and still one per task
    predictions, version = services.service.predict([{"data": {"text": "positive"}}, {"data": {}}], project="5.1")
    assert version == after and len(predictions) == 2
    # the version survives a restart (a new backend on the same store)
    again = build_services(services.settings, runtime_loader=lambda: None, preannotation=False)
    assert again.service.setup("5.1", SENTIMENT_EN) == after


def test_cold_start_needs_a_known_project_and_texts(services):
    with pytest.raises(BadRequest):
        services.round_one.run("99", TASKS)
    services.service.setup("6.1", SENTIMENT_EN)
    with pytest.raises(BadRequest):
        services.round_one.run("6", [{"data": {"text": ""}}, {"data": {"text": "  "}}, {"data": {}}])


def test_cold_start_is_needed_once_per_config_and_goes_stale_when_it_changes(services):
    services.service.setup("7.1", SENTIMENT_EN)
    state = services.store.load("7")
    spec = parse_label_config(SENTIMENT_EN)
    assert services.profiles.needs_cold_start(state, spec)
    learned_version = services.round_one.run("7", TASKS)
    state = services.store.load("7")
    assert not services.profiles.needs_cold_start(state, spec)
    assert cold_start_of(state, services.profiles.cold_start_basis(state, spec))

    # A new label set: the stored demonstrations and bias no longer apply, and are not used.
    changed = SENTIMENT_EN.replace('<Choice value="negative"', '<Choice value="mixed"/><Choice value="negative"')
    assert changed != SENTIMENT_EN
    new_version = services.service.setup("7.1", changed)
    state = services.store.load("7")
    new_spec = parse_label_config(changed)
    assert services.profiles.needs_cold_start(state, new_spec)
    assert cold_start_of(state, services.profiles.cold_start_basis(state, new_spec)) == {}
    assert new_version != learned_version
    predictions, _ = services.service.predict([{"data": {"text": "positive"}}], project="7.1")
    assert len(predictions[0]["result"]) == 1  # scored with three labels, no stale 2-label bias


def test_no_cold_start_when_it_would_change_nothing(tmp_path, keyword_runtime):
    settings = Settings(model_dir=tmp_path, demonstrations=0, bias_calibration="content_free")
    services = build_services(settings, runtime_loader=lambda: keyword_runtime, preannotation=False)
    services.service.setup("8.1", SENTIMENT_EN)
    assert not services.profiles.needs_cold_start(services.store.load("8"), parse_label_config(SENTIMENT_EN))


def test_cold_start_learns_the_projects_label_mix_instead_of_assuming_it_balanced(services):
    # 3 negative reviews for every positive one: the old uniform prior matching predicted half of
    # them positive; the estimated prior keeps the project's mix.
    texts = [f"{'positive' if i % 4 == 0 else 'negative'} review number {i}" for i in range(40)]
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]
    services.service.setup("9.1", SENTIMENT_EN)
    services.round_one.run("9", tasks)
    stored = services.store.load("9").cold_start["targets"]["sentiment"]
    labels = parse_label_config(SENTIMENT_EN).targets[0].result_values
    prior = dict(zip(labels, stored["label_prior"]))
    assert 0.6 < prior["negative"] < 0.9
    predictions, _ = services.service.predict(tasks, project="9.1")
    predicted = [p["result"][0]["value"]["choices"][0] for p in predictions]
    assert abs(predicted.count("negative") / len(predicted) - 0.75) <= 0.1
