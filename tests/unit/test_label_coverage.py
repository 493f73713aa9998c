"""Labels the SLM cannot learn yet (`training.label_coverage`): found, reported with advice, and
taken off the list by one human label."""

from __future__ import annotations

import logging

import numpy as np

from ml_backend.label_config import parse_label_config
from tests.conftest import KeywordRuntime
from tests.fakes import connected_loop
from training.label_coverage import labels_out_of_reach, llm_task_threshold

PROJECT = "5.1795457094"
# "MIX" is a code the fake LLM never reads in a text (it picks labels by their word), and has no hint.
THREE_LABELS = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="positive" hint="The writer likes it."/>
    <Choice value="negative" hint="The writer dislikes it."/>
    <Choice value="MIX"/>
  </Choices>
</View>"""


def _target(xml: str = THREE_LABELS):
    return parse_label_config(xml).classification_targets[0]


def _one_hot(labels: list[int], n: int = 3) -> np.ndarray:
    return np.eye(n)[labels]


def test_a_label_with_no_llm_and_no_human_label_is_out_of_reach():
    llm = _one_hot([0] * 60 + [1] * 40)
    human = np.full(100, -1)
    (found,) = labels_out_of_reach(llm, human, _target())
    assert (found.label, found.llm_tasks, found.tasks, found.has_hint) == ("MIX", 0, 100, False)
    assert "annotate a few tasks with it" in found.advice() and 'add hint="' in found.advice()


def test_one_human_label_or_enough_llm_labels_put_a_label_in_reach():
    human = np.full(100, -1)
    human[7] = 2
    assert labels_out_of_reach(_one_hot([0] * 60 + [1] * 40), human, _target()) == []
    threshold = llm_task_threshold(100, 3)
    assert threshold == 5  # small projects: five tasks; big ones: 1 % of an even share
    assert llm_task_threshold(30_000, 3) == 100
    few = _one_hot([0] * 60 + [1] * (40 - threshold + 1) + [2] * (threshold - 1))
    enough = _one_hot([0] * 60 + [1] * (40 - threshold) + [2] * threshold)
    assert [f.label for f in labels_out_of_reach(few, np.full(100, -1), _target())] == ["MIX"]
    assert labels_out_of_reach(enough, np.full(100, -1), _target()) == []


def test_a_label_with_a_hint_gets_the_advice_to_sharpen_it():
    llm = _one_hot([2] * 50 + [1] * 50)  # "positive" (which has a hint) is never chosen
    (found,) = labels_out_of_reach(llm, np.full(100, -1), _target())
    assert found.label == "positive" and found.has_hint and "sharpen it" in found.advice()


def test_a_fully_labeled_project_has_nothing_out_of_reach():
    assert labels_out_of_reach(_one_hot([0] * 10), np.array([0] * 10), _target()) == []


def _review(i: int) -> tuple[str, str]:
    gold = ("positive", "negative")[i % 2]
    return f"review {i}: a {gold} experience overall", gold


def test_the_training_run_reports_the_label_and_one_annotation_takes_it_off(settings, caplog):
    runtime = KeywordRuntime()
    client, services, fake = connected_loop(settings, runtime, [_review(i)[0] for i in range(60)], project=PROJECT,
                                            label_config=THREE_LABELS, bias_calibration="none", learned_demos=0)

    def train(labels: dict[int, str]) -> dict:
        for task_id, label in labels.items():
            annotation = fake.annotate(task_id, label)
            client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": annotation["id"]},
                                          "project": {"id": 5}, "task": {"id": task_id}})
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
        assert services.runner.wait_idle(60) and services.runner.wait_idle(60)
        return client.get(f"/versions?project={PROJECT}").json["slm_versions"][-1]

    with caplog.at_level(logging.WARNING, logger="training.job"):
        first = train({task_id: _review(task_id - 1)[1] for task_id in range(1, 11)})
    assert [item["label"] for item in first["labels_out_of_reach"]] == ["MIX"]
    assert first["labels_out_of_reach"][0]["llm_tasks"] == 0 and first["metrics"]["labels_out_of_reach"] == 1.0
    lines = [r.getMessage() for r in caplog.records if "training_label_out_of_reach" in r.getMessage()]
    assert lines  # one per run (the annotations' own run may come before Start Training's)
    assert all(f"project={PROJECT}" in line and "label='MIX'" in line and "model_version=" in line for line in lines)

    second = train({11: "MIX"})
    assert second["version"] != first["version"]
    assert second["labels_out_of_reach"] == [] and second["metrics"]["labels_out_of_reach"] == 0.0
