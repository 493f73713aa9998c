"""Auto-accept (issue 12): the pure rules, then the whole pass inside the learning loop with the
fake LLM, the keyword encoder and the in-memory Label Studio."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.auto_accept import (AUTO_ACCEPT_EMAIL, AutoAccept, automatic_beside_human, resolve_threshold,
                                    select)
from ml_backend.human_labels import AUTOMATIC_ACTION, annotations_fingerprint, combine_annotations, is_automatic
from ml_backend.ls_client import TaskRecord
from tests.fakes import FakeLabelStudio, connected_loop
from tests.unit.test_training_loop import LABELS, PROJECT, SENTIMENT_EN, _annotate, _review


def _choice(label: str) -> list[dict]:
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _automatic(label: str, *, created="2026-12-02T00:00:00Z", updated="2026-12-02T00:00:00.3Z", id=7) -> dict:
    return {"id": id, "result": _choice(label), "last_action": AUTOMATIC_ACTION, "completed_by": 1000,
            "created_at": created, "updated_at": updated, "was_cancelled": False, "ground_truth": False}


def _human(label: str, id=8) -> dict:
    return {"id": id, "result": _choice(label), "last_action": None, "completed_by": 1,
            "created_at": "2026-12-02T00:00:00Z", "updated_at": "2026-12-02T00:00:00Z", "was_cancelled": False}


# --- what counts as automatic ---------------------------------------------------------------------------
def test_an_automatic_annotation_is_never_a_human_label_until_an_annotator_edits_it():
    assert is_automatic(_automatic("positive"))
    assert not is_automatic(_human("positive"))
    edited = _automatic("negative", updated="2026-12-02T00:05:00Z")  # an annotator submitted it again
    assert not is_automatic(edited)
    assert combine_annotations([_automatic("positive")], "sentiment", LABELS) is None
    assert combine_annotations([_automatic("positive"), _human("negative")], "sentiment", LABELS).label == 1
    assert combine_annotations([edited], "sentiment", LABELS).label == 1
    # the training trigger's fingerprint does not move when auto-accept writes
    assert annotations_fingerprint([(1, [_human("positive")])]) == \
        annotations_fingerprint([(1, [_human("positive"), _automatic("positive")])])


def _task(task_id: int, *, annotations=(), version="v2", score=0.9) -> TaskRecord:
    return TaskRecord(id=task_id, data={"text": "t"}, labeled=bool(annotations), model_versions={version},
                      predictions=[{"id": 100 + task_id, "model_version": version, "score": score,
                                    "result": _choice("positive")}], annotations=list(annotations))


def _prediction(*, agreement=True, score=0.9, version="v2") -> dict:
    return {"result": _choice("positive"), "score": score, "model_version": version, "agreement": agreement}


def test_only_unannotated_agreeing_confident_predictions_of_the_version_are_accepted():
    tasks = [_task(1), _task(2), _task(3), _task(4), _task(5, annotations=[_human("negative")]), _task(6)]
    predictions = [_prediction(), _prediction(agreement=False), _prediction(score=0.89),
                   _prediction(version="v1"), _prediction(), {"result": [], "score": 0.99, "model_version": "v2",
                                                              "agreement": True}]
    chosen = select(tasks, predictions, "v2", threshold=0.9)
    assert [(a.task_id, a.prediction_id) for a in chosen] == [(1, 101)]
    no_slm = dict(_prediction())
    del no_slm["agreement"]  # a version without a trained SLM: no agreement to go by
    assert select([_task(1)], [no_slm], "v2", 0.5) == []


def test_an_automatic_annotation_beside_a_human_one_is_found():
    tasks = [_task(1, annotations=[_automatic("positive", id=11), _human("negative", id=12)]),
             _task(2, annotations=[_automatic("positive", id=21)])]
    assert automatic_beside_human(tasks) == [11]


def test_the_threshold_is_fixed_or_chosen_from_the_reviewed_tasks():
    assert resolve_threshold(0.97, 0.95, lambda: pytest.fail("not read"))[0] == 0.97
    assert resolve_threshold(None, None, lambda: ([], []))[0] is None
    few = resolve_threshold(None, 0.9, lambda: ([0.9] * 10, [True] * 10))
    assert few[0] is None and "30" in few[1]
    scores = list(np.linspace(0.5, 1.0, 40))
    correct = [s >= 0.75 for s in scores]  # everything scored ≥ 0.75 was right
    threshold, why = resolve_threshold(None, 0.99, lambda: (scores, correct))
    assert threshold == pytest.approx(min(s for s in scores if s >= 0.75)) and "99%" in why
    assert resolve_threshold(None, 0.99, lambda: (scores, [False] * 40))[0] is None


# --- the pass in the learning loop ---------------------------------------------------------------------
@pytest.fixture
def auto_loop(settings, keyword_runtime):
    return connected_loop(settings, keyword_runtime, [_review(i)[0] for i in range(80)], project=PROJECT,
                          label_config=SENTIMENT_EN, demonstrations=0, bias_calibration="none",
                          auto_accept_threshold=0.5)


def _automatic_tasks(fake: FakeLabelStudio) -> set[int]:
    return {t for t, annotations in fake.annotations.items() for a in annotations if is_automatic(a)}


def test_a_new_version_auto_accepts_exactly_the_qualifying_tasks_and_undo_removes_them(auto_loop):
    client, services, fake = auto_loop
    assert _automatic_tasks(fake) == set()  # the cold-start version has no SLM: no agreement, nothing accepted
    _annotate(client, fake, range(1, 41))
    assert services.runner.wait_idle(60) and services.runner.wait_idle(60)
    version = services.bulk.status(PROJECT)["model_version"]
    humans = set(range(1, 41))

    # What the served version says of every other task: the rule applied by hand.
    profile = services.profiles.of_state(services.store.load(PROJECT))
    others = [t for t in fake.task_data if t not in humans]
    fresh = services.inference.score_tasks(profile, [{"id": t, "data": fake.task_data[t]} for t in others])
    qualifying = {t for t, p in zip(others, fresh) if p["agreement"] and p["score"] >= 0.5}
    assert 0 < len(qualifying) < len(others)  # some agree and are sure, some are not
    assert _automatic_tasks(fake) == qualifying
    assert not _automatic_tasks(fake) & humans  # never over or beside a human annotation
    for task_id in qualifying:
        (annotation,) = fake.annotations[task_id]
        assert annotation["completed_by"] == fake.users[AUTO_ACCEPT_EMAIL]
        stored = [pid for pid, p in fake.predictions.items() if p["task"] == task_id and p["model_version"] == version]
        assert annotation["parent_prediction"] in stored
        assert annotation["result"] == [p for t, p in zip(others, fresh) if t == task_id][0]["result"]

    # Their webhooks start nothing, and a retrain learns from the 40 human labels only.
    automatic_id = fake.annotations[min(qualifying)][0]["id"]
    answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5},
                                           "annotation": fake.annotations[min(qualifying)][0]}).json
    assert answer["status"] == "ignored" and automatic_id
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    assert services.runner.wait_idle(60) and services.runner.wait_idle(60)
    assert services.retraining.status(PROJECT)["human_labels"] == 40

    # An annotator labels an auto-accepted task anyway: the next pass takes the automatic one away.
    beside = min(qualifying)
    fake.annotate(beside, "negative")
    AutoAccept(fake, PROJECT).run(services.bulk.status(PROJECT)["model_version"], 0.5,
                                  lambda batch: [{} for _ in batch])
    assert [is_automatic(a) for a in fake.annotations[beside]] == [False]

    remaining = _automatic_tasks(fake)
    assert remaining and beside not in remaining
    assert AutoAccept(fake, PROJECT).undo() == len(remaining)
    assert _automatic_tasks(fake) == set()
    assert all(len(fake.annotations[t]) == 1 for t in humans | {beside})  # human annotations untouched
