"""NER pre-annotation through the service with a fake LLM: spans, scores, empty tasks, mixed configs."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.llm.prompts import ChatFormat
from ml_backend.ner.alignment import Span
from ml_backend.ner.extractor import decide, task_part_score
from ml_backend.ner.prompts import (
    NerDemonstration,
    build_extraction_prompt,
    build_span_scoring_prompt,
    parse_proposals,
)
from ml_backend.offsets import span_of_value
from tests.conftest import LABELING_CONFIGS, QWEN_LIKE_TEMPLATE, ls_payload

NER_PER_LOC = (
    '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>'
    '<Text name="text" value="$text"/></View>'
)
PER_LOC = parse_label_config(NER_PER_LOC).span_targets[0]


def test_recorded_ner_request_gets_spans_where_label_studio_draws_them(client):
    body = ls_payload("predict_3.json")  # text "😀𠮷 李明在北京工作"
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    (prediction,) = response.json["results"]
    text = body["tasks"][0]["data"]["text"]
    regions = prediction["result"]
    assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"]) for r in regions] == [
        (3, 5, ["PER"]),
        (6, 8, ["LOC"]),
    ]
    for region in regions:
        assert region["type"] == "labels" and region["from_name"] == "label" and region["to_name"] == "text"
        start, end = span_of_value(text, region["value"])  # read back through the same module
        assert text[start:end] == region["value"]["text"]
        assert 0.0 < region["score"] < 1.0
    assert prediction["score"] == pytest.approx(min(r["score"] for r in regions + [{"score": 0.5}]))


def test_a_task_without_entities_gets_an_empty_result_and_a_real_score(client, keyword_runtime):
    tasks = [{"id": 1, "data": {"text": "Obama visited Paris."}}, {"id": 2, "data": {"text": "nothing to see here"}}]
    results = client.post("/predict", json={"tasks": tasks, "label_config": NER_PER_LOC}).json["results"]
    assert len(results) == 2
    assert [r["value"]["text"] for r in results[0]["result"]] == ["Obama", "Paris"]
    assert results[1]["result"] == []
    assert 0.0 < results[1]["score"] < 1.0  # P("no entity") from the logits, not a sentinel


def test_a_config_with_choices_and_labels_gets_both(client):
    config = (
        '<View><Text name="text" value="$text"/>'
        '<Choices name="sentiment" toName="text"><Choice value="positive"/><Choice value="negative"/></Choices>'
        '<Labels name="ner" toName="text"><Label value="PER"/><Label value="LOC"/></Labels></View>'
    )
    tasks = [{"id": 1, "data": {"text": "positive news: Obama in Paris"}}]
    (prediction,) = client.post("/predict", json={"tasks": tasks, "label_config": config}).json["results"]
    kinds = [region["type"] for region in prediction["result"]]
    assert kinds == ["choices", "labels", "labels"]
    assert prediction["score"] == pytest.approx(min(region["score"] for region in prediction["result"]))


def test_older_label_studio_versions_get_utf16_offsets(tmp_path, keyword_runtime):
    from ml_backend.app import create_app
    from ml_backend.config import Settings

    settings = Settings(model_dir=tmp_path / "store", cache_dir=tmp_path / "c", label_studio_offsets="utf16")
    client = create_app(settings, runtime_loader=lambda: keyword_runtime).test_client()
    tasks = [{"id": 1, "data": {"text": "😀𠮷 李明在北京工作"}}]
    (prediction,) = client.post("/predict", json={"tasks": tasks, "label_config": NER_PER_LOC}).json["results"]
    assert [(r["value"]["start"], r["value"]["end"]) for r in prediction["result"]] == [(5, 7), (8, 10)]


def test_task_score_is_the_weakest_claim():
    assert task_part_score(0.9, [0.8, 0.6]) == pytest.approx(0.6)
    assert task_part_score(0.3, [0.8]) == pytest.approx(0.3)  # "there are entities" is itself doubtful
    assert task_part_score(0.2, []) == pytest.approx(0.8)  # no entities: P(no)
    assert task_part_score(0.95, []) == pytest.approx(0.05)


def test_decide_keeps_the_proposed_label_and_scores_it():
    spans = [Span(0, 5, "PER", "Obama"), Span(14, 19, "", "Paris"), Span(21, 24, "", "the")]
    probabilities = {
        "Obama": np.array([0.3, 0.6, 0.1]),  # PER, LOC, none
        "Paris": np.array([0.2, 0.7, 0.1]),
        "the": np.array([0.1, 0.2, 0.7]),
    }
    proposed = decide(spans, probabilities, PER_LOC, policy="proposed")
    assert [(e.surface, e.label, e.score) for e in proposed] == [("Obama", "PER", 0.3), ("Paris", "LOC", 0.7)]
    scored = decide(spans, probabilities, PER_LOC, policy="scored")
    assert [(e.surface, e.label, e.score) for e in scored] == [("Obama", "LOC", 0.6), ("Paris", "LOC", 0.7)]


def test_generated_answers_are_parsed_tolerantly():
    answer = '["Obama", "per"], ["Paris", "city"], ["Ange\\"la", "PER"], ["trunc'
    proposals = parse_proposals(answer, PER_LOC)
    assert [(p.text, p.label) for p in proposals] == [("Obama", "PER"), ('Ange"la', "PER")]  # "city" is no type
    objects = '{"entity text": "李明", "TYPE": "PER"}]'
    assert [(p.text, p.label) for p in parse_proposals(objects, PER_LOC)] == [("李明", "PER")]
    assert parse_proposals("]", PER_LOC) == []
    assert parse_proposals("I cannot help with that", PER_LOC) == []


def test_prompts_cut_the_chat_template_around_the_text():
    chat = ChatFormat(template=QWEN_LIKE_TEMPLATE)
    demo = NerDemonstration("Obama spoke.", (("Obama", "PER"),))
    extraction = build_extraction_prompt(chat, PER_LOC, demonstrations=[demo])
    assert "- PER" in extraction.prefix and '[["Obama", "PER"]]' in extraction.prefix
    assert extraction.prefix.endswith("Text:\n")
    assert extraction.suffix.endswith("<|im_start|>assistant\n[")
    scoring = build_span_scoring_prompt(chat, PER_LOC)
    assert "- none: not a named entity" in scoring.prefix
    assert scoring.answer_lead.endswith("<|im_start|>assistant\n") and scoring.answer_end.startswith("<|im_end|>")


@pytest.mark.parametrize("name", ["ner_en.xml", "ner_zh.xml"])
def test_ready_ner_configs_parse_to_span_targets(name):
    spec = parse_label_config((LABELING_CONFIGS / name).read_text(encoding="utf-8"))
    (target,) = spec.span_targets
    assert target.kind == "labels" and all(option.hint for option in target.options)
    expected = ["PER", "ORG", "LOC", "MISC"] if name == "ner_en.xml" else [
        "name", "organization", "position", "company", "address", "game", "government", "scene", "movie", "book"
    ]
    assert target.result_values == expected


def test_several_labels_blocks_and_aliases_each_get_their_regions(client):
    config = (
        '<View><Text name="text" value="$text"/>'
        '<Labels name="people" toName="text"><Label value="PER" alias="person" hint="a named person"/></Labels>'
        '<Labels name="places" toName="text"><Label value="LOC" alias="place"/></Labels></View>'
    )
    tasks = [{"id": 1, "data": {"text": "Obama in Paris"}}]
    (prediction,) = client.post("/predict", json={"tasks": tasks, "label_config": config}).json["results"]
    regions = [(r["from_name"], r["value"]["text"], r["value"]["labels"]) for r in prediction["result"]]
    assert regions == [("people", "Obama", ["person"]), ("places", "Paris", ["place"])]  # alias is what LS stores
