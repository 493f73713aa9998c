"""The cold-start step (self-labeled demonstrations + label bias) with a fake LLM."""

import pytest

from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.model import LLMBackend, cold_start_of
from ml_backend.model_store import ModelStore
from tests.conftest import LABELING_CONFIGS

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
TEXTS = [f"{'positive' if i % 3 else 'negative'} review number {i}" for i in range(40)]


@pytest.fixture
def backend(tmp_path, keyword_runtime):
    settings = Settings(model_dir=tmp_path, demonstrations=4, bias_calibration="prior_matching")
    return LLMBackend(settings, lambda: keyword_runtime, ModelStore(tmp_path))


def test_cold_start_stores_demos_and_bias_and_changes_the_version(backend):
    before = backend.setup("5.1", SENTIMENT_EN)
    after = backend.prepare_cold_start("5", TEXTS)
    assert after != before
    learned = cold_start_of(backend.store.load("5"))["sentiment"]
    assert len(learned.demonstrations) == 4
    assert {d.labels[0] for d in learned.demonstrations} == {"positive", "negative"}  # balanced
    assert all(d.text in TEXTS for d in learned.demonstrations)
    assert len(learned.label_bias) == 2 and abs(sum(learned.label_bias) - 1) < 1e-6
    # predictions now carry the new version and still one per task
    predictions, version = backend.predict([{"data": {"text": "positive"}}, {"data": {}}], project="5.1")
    assert version == after and len(predictions) == 2
    # the version survives a restart (a new backend on the same store)
    again = LLMBackend(backend.settings, backend._runtime_loader, ModelStore(backend.store.root))
    assert again.setup("5.1", SENTIMENT_EN) == after


def test_cold_start_needs_a_known_project_and_texts(backend):
    with pytest.raises(BadRequest):
        backend.prepare_cold_start("99", TEXTS)
    backend.setup("6.1", SENTIMENT_EN)
    with pytest.raises(BadRequest):
        backend.prepare_cold_start("6", ["", "  "])
