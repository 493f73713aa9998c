"""The real default model pre-annotates 50 English and 50 Chinese NER texts from ../shared/data.

Floors (strict entity-level F1, exact span and label): measured 0.318 (English) and 0.187
(Chinese) on these 50 + 50 texts, 3-shot (benchmarks/results/ner.json, README). The floors,
0.15 and 0.08, are about half of that — room for numeric differences between thread counts
and machines — yet far above what a broken pipeline scores: shifted offsets, a wrong label
mapping or a parser that finds nothing all give ~0.0 strict F1. Spans must always read back exactly.
"""

from __future__ import annotations

import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.metrics import ner_scores
from ml_backend.ner.extractor import NerExtractor
from ml_backend.ner.prompts import demonstrations_from_rows
from ml_backend.offsets import span_value
from ml_backend.predictor import LabelScorer, PredictionOptions
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path

pytestmark = pytest.mark.integration

N_TEXTS = 50
SHOTS = 3  # demonstrations from the train split, as the demonstrations feature supplies them


@pytest.mark.parametrize(
    "dataset, config, strict_f1_floor",
    [("conll2003", "ner_en.xml", 0.15), ("cluener", "ner_zh.xml", 0.08)],
)
def test_default_model_pre_annotates_ner_above_the_floor(llama_runtime, dataset, config, strict_f1_floor):
    target = parse_label_config((LABELING_CONFIGS / config).read_text(encoding="utf-8")).span_targets[0]
    rows = load_jsonl(shared_path("data", dataset, "test.jsonl"), limit=N_TEXTS)
    demos = demonstrations_from_rows(load_jsonl(shared_path("data", dataset, "train.jsonl")), target, SHOTS)

    extractor = NerExtractor(LabelScorer(llama_runtime, PredictionOptions()))
    results = extractor.predict(target, [row["text"] for row in rows], demonstrations=demos)

    predicted = []
    for row, task_entities in zip(rows, results):
        text = row["text"]
        for entity in task_entities.entities:
            value = span_value(text, entity.start, entity.end, [entity.label])
            assert text[value["start"] : value["end"]] == value["text"] == entity.surface
            assert 0.0 < entity.score < 1.0
        assert 0.0 < task_entities.score < 1.0
        predicted.append([(e.start, e.end, e.label) for e in task_entities.entities])
    gold = [[(e["start"], e["end"], e["label"]) for e in row["entities"]] for row in rows]
    scores = ner_scores(gold, predicted, target.result_values)
    print(f"\n{dataset}: {N_TEXTS} texts, {SHOTS}-shot: {scores}")
    assert sum(map(len, predicted)) > 0
    assert scores["strict"]["f1"] >= strict_f1_floor, scores
