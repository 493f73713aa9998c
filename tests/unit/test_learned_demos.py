"""CORAL round two (issue 11, item 6): demonstrations picked from the human labels replace the cold
start's self-labeled ones only when they win on held-out human-labeled tasks; then every task is
scored again under the new prompt, and when they do not win nothing is re-scored."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.cold_start import learned_demos_with_prompt
from ml_backend.label_config import parse_label_config
from ml_backend.llm_cache import LLMDistributionCache
from ml_backend.model_store import ModelStore, ProjectState
from ml_backend.profile import Profiles
from ml_backend.slm_model import load_served, versions_dir
from ml_backend.versioning import llm_version
from tests.conftest import LABELING_CONFIGS, KeywordRuntime
from tests.fakes import connected_loop
from training.learned_demos import decide, evaluation_due, evaluation_folds, sign_test_p

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
PROJECT = "5.1795457094"
LABELS = ["positive", "negative"]


# --- the decision (pure) ----------------------------------------------------------------------------
def test_the_sign_test_is_the_exact_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(8, 0) == pytest.approx(1 / 256)
    assert sign_test_p(5, 5) == pytest.approx(638 / 1024)
    assert sign_test_p(3, 0) == pytest.approx(1 / 8)


def test_a_clear_win_is_adopted_and_a_small_or_lucky_one_is_not():
    gold = np.array([0, 1] * 20)
    serving = np.zeros(40, dtype=int)  # every negative wrong
    learned = gold.copy()
    adopt, reason, stats = decide(gold, serving, learned)
    assert adopt and stats["wins"] == 20 and stats["losses"] == 0 and "+0.500" in reason
    # The same balanced accuracy either way: not worth re-scoring every task.
    adopt, reason, _ = decide(gold, gold, gold)
    assert not adopt and "needs +0.02" in reason
    # Three tasks won, none lost: +0.15 balanced accuracy, but p = 1/8 could be luck.
    few = np.array([0, 1] * 10)
    serving = few.copy()
    serving[[1, 3, 5]] = 0
    adopt, reason, stats = decide(few, serving, few)
    assert not adopt and stats["p_value"] == pytest.approx(0.125) and "p=0.12" in reason


def test_evaluation_is_due_with_enough_labels_and_again_once_they_doubled():
    labels = np.array([0, 1] * 20 + [-1] * 10)
    due = lambda record, human=labels: evaluation_due(record, basis="b", target="sentiment",  # noqa: E731
                                                      human_labels=human, n_labels=2, min_labels=30)
    assert due(None) is None
    assert "from 30 on" in due(None, np.array([0, 1] * 10))
    assert "two labels" in due(None, np.array([0] * 39 + [1]))
    assert "next at 80" in due({"basis": "b", "target": "sentiment", "evaluated_labels": 40})
    assert due({"basis": "b", "target": "sentiment", "evaluated_labels": 20}) is None  # doubled since
    assert due({"basis": "other config", "target": "sentiment", "evaluated_labels": 40}) is None


def test_the_folds_split_each_label_evenly_leave_out_the_prompt_and_are_capped():
    labels = np.array([0] * 30 + [1] * 10 + [-1] * 5)
    excluded = np.zeros(len(labels), dtype=bool)
    excluded[:4] = True  # the serving prompt's own examples
    a, b = evaluation_folds(labels, excluded)
    assert not set(a) & set(b) and not set(range(4)) & (set(a) | set(b))
    assert (labels[a] >= 0).all() and len(a) + len(b) == 36
    assert abs((labels[a] == 1).sum() - (labels[b] == 1).sum()) <= 1
    a, b = evaluation_folds(labels, excluded, cap=10)
    assert len(a) + len(b) == 10


# --- the profile: what serves, what the version covers -------------------------------------------
def _state(record, **fields):
    return ProjectState(project_id=PROJECT, label_config=SENTIMENT_EN, learned_demos=record, **fields)


def test_adopted_demonstrations_serve_and_only_the_prompt_changes_the_version(settings):
    profiles = Profiles(settings, ModelStore(settings.model_dir))
    spec = parse_label_config(SENTIMENT_EN)
    basis = profiles.cold_start_basis(_state(None), spec)
    record = {"basis": basis, "target": "sentiment", "adopted": True, "evaluated_labels": 40,
              "demonstrations": [{"text": "awful awful stuff", "labels": ["negative"]}], "label_bias": [0.6, 0.4],
              "evaluation": {"n_eval": 40}}
    plain, learned = profiles.of_state(_state(None)), profiles.of_state(_state(record))
    assert learned.cold_start["sentiment"].demonstrations[0].text == "awful awful stuff"
    assert learned.cold_start["sentiment"].label_bias == (0.6, 0.4)
    assert llm_version(learned.version) != llm_version(plain.version)
    # A later evaluation that kept the prompt: same version (no task is scored again).
    again = profiles.of_state(_state({**record, "evaluated_labels": 80, "evaluation": {"n_eval": 80}}))
    assert again.version == learned.version
    # Not adopted, learned for another config, or a prompt variant chosen by hand: the cold start's prompt.
    for state in (_state({**record, "adopted": False}), _state({**record, "basis": "stale"}),
                  _state(record, prompt_variant={"config": spec.config_hash, "scoring_mode": "full_sequence",
                                                 "bias_calibration": "none", "use_hints": True,
                                                 "n_demonstrations": 0})):
        assert "sentiment" not in profiles.of_state(state).cold_start or \
            not profiles.of_state(state).cold_start["sentiment"].demonstrations


def test_the_record_survives_the_store(settings):
    store = ModelStore(settings.model_dir)
    record = {"basis": "b", "target": "sentiment", "adopted": False, "evaluated_labels": 30}
    store.update(PROJECT, lambda state: setattr(state, "learned_demos", record))
    assert store.load(PROJECT).learned_demos == record


# --- the loop, in process, with a fake LLM that learns from its prompt -----------------------------
class InContextRuntime(KeywordRuntime):
    """The keyword fake, plus in-context learning: once the prompt shows a text with "great" or
    "awful", it reads those words as the label they were shown with (here always the right one)."""

    WORDS = {"great": "positive", "awful": "negative"}

    def score_continuations(self, prefix, tasks, continuations, *, progress=None):
        shown = "".join(chr(t) for t in prefix).lower()
        learned = {word: label for word, label in self.WORDS.items() if word in shown}

        def read(task):
            text = "".join(chr(t) for t in task)
            for word, label in learned.items():
                text = text.replace(word, label)
            return [ord(ch) for ch in text]

        return super().score_continuations(prefix, [read(task) for task in tasks], continuations, progress=progress)


def _review(i: int) -> tuple[str, str]:
    """Half the reviews use the words the fake reads zero-shot, half only "great"/"awful"."""
    gold = LABELS[i % 2]
    if i % 4 < 2:
        return f"review {i}: a {gold} experience overall", gold
    return f"review {i}: " + ("great great stuff" if gold == "positive" else "awful awful stuff"), gold


def _loop(settings, runtime):
    client, services, fake = connected_loop(settings, runtime, [_review(i)[0] for i in range(80)], project=PROJECT,
                                            label_config=SENTIMENT_EN, demonstrations=4, bias_calibration="none",
                                            learned_demos=4, learned_demos_min_labels=16)
    cold = services.store.load(PROJECT).cold_start["targets"]["sentiment"]["demonstrations"]
    # Precondition: the cold start showed only texts the fake reads zero-shot (its confident ones).
    assert cold and not any(word in d["text"] for d in cold for word in InContextRuntime.WORDS)
    return client, services, fake


def _annotate_and_train(client, services, fake, task_ids):
    annotations = [(task_id, fake.annotate(task_id, _review(task_id - 1)[1])) for task_id in task_ids]
    for task_id, annotation in annotations:  # then their webhooks (a burst: the first run reads them all)
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": annotation["id"]},
                                      "project": {"id": 5}, "task": {"id": task_id}})
    assert services.runner.wait_idle(60)
    assert services.runner.wait_idle(60)  # the publication's re-annotation


def _scored(runtime) -> int:
    return sum(call["n_tasks"] for call in runtime.calls)


def _cached(services, version: str) -> dict:
    cache = LLMDistributionCache(services.kv, ttl_s=3600)
    pairs = [(i + 1, _review(i)[0]) for i in range(80)]
    return cache.get_many(PROJECT, llm_version(version), "sentiment", pairs)


def test_demonstrations_that_win_are_adopted_and_every_task_is_scored_again(settings):
    runtime = InContextRuntime()
    client, services, fake = _loop(settings, runtime)
    before = services.bulk.status(PROJECT)["model_version"]
    _annotate_and_train(client, services, fake, range(1, 11))  # 10 < 16 labels: not evaluated yet
    assert services.store.load(PROJECT).learned_demos is None
    _annotate_and_train(client, services, fake, range(11, 41))

    state = services.store.load(PROJECT)
    record = state.learned_demos
    assert record["adopted"] and record["evaluated_labels"] == 40 and record["evaluation"]["adopted"]
    assert record["evaluation"]["balanced_accuracy_learned"] > record["evaluation"]["balanced_accuracy_serving"]
    shown = " ".join(d["text"] for d in record["demonstrations"])
    assert "great" in shown or "awful" in shown
    after = services.bulk.status(PROJECT)["model_version"]
    assert llm_version(after) != llm_version(before)  # a new prompt...
    assert len(_cached(services, after)) == 80  # ...under which every task was scored again
    served = load_served(versions_dir(services.store.project_dir(PROJECT)) / state.slm_version)
    assert served.manifest["llm_version"] == llm_version(after)
    assert served.manifest["metrics"]["learned_demos_adopted"] == 1.0
    # What Label Studio shows: every unlabeled task under the new version, right where the
    # cold-start prompt could not read the words.
    unlabeled = [t for t in fake.task_data if not fake.annotations.get(t)]
    written = {p["task"]: p for p in fake.predictions.values() if p["model_version"] == after}
    assert sorted(written) == sorted(unlabeled)
    assert all(written[t]["result"][0]["value"]["choices"] == [_review(t - 1)[1]] for t in unlabeled)
    training = client.get(f"/preannotate/status?project={PROJECT}").json["training"]
    assert "llm_rescore" in training["timings_s"] and "demos" in training["timings_s"]
    # /predict of a new task uses the learned prompt too.
    answer = client.post("/predict", json={"tasks": [{"id": 900, "data": {"text": "awful awful food"}}],
                                           "project": PROJECT, "label_config": SENTIMENT_EN}).json
    assert answer["results"][0]["result"][0]["value"]["choices"] == ["negative"]
    # A rollback to the version trained before serves the prompt it learned under again.
    rolled, version = services.publisher.rollback_slm(PROJECT)
    assert rolled == "slm-0001" and llm_version(version) == llm_version(before)
    assert services.store.load(PROJECT).learned_demos["adopted"] is False
    assert services.store.load(PROJECT).learned_demos["evaluated_labels"] == 40  # no new evaluation due


def test_a_rollback_restores_the_prompt_a_version_learned_under():
    current = {"basis": "b", "target": "sentiment", "adopted": True, "evaluated_labels": 40,
               "demonstrations": [{"text": "x", "labels": ["negative"]}], "label_bias": None}
    assert learned_demos_with_prompt(None, None) is None
    assert learned_demos_with_prompt(current, None) == {**current, "adopted": False, "demonstrations": []}
    earlier = {"basis": "b", "target": "sentiment", "demonstrations": [{"text": "y", "labels": ["positive"]}],
               "label_bias": [0.5, 0.5]}
    assert learned_demos_with_prompt({**current, "adopted": False}, earlier) == {**current, **earlier}


def test_demonstrations_that_do_not_win_cost_only_their_evaluation(settings):
    runtime = KeywordRuntime()  # reads the same whatever its prompt shows
    client, services, fake = _loop(settings, runtime)
    before = services.bulk.status(PROJECT)["model_version"]
    scored = _scored(runtime)
    _annotate_and_train(client, services, fake, range(1, 41))

    record = services.store.load(PROJECT).learned_demos
    assert record["adopted"] is False and record["demonstrations"] == [] and record["evaluated_labels"] == 40
    assert "needs +0.02" in record["evaluation"]["reason"]
    after = services.bulk.status(PROJECT)["model_version"]
    assert llm_version(after) == llm_version(before) and after != before  # same prompt, new SLM
    # The LLM read the evaluated tasks once under the candidate prompt, and nothing else.
    assert _scored(runtime) - scored == record["evaluation"]["n_eval"]
    # Ten more labels (50 < 2 × 40): no new evaluation, no LLM call.
    scored = _scored(runtime)
    _annotate_and_train(client, services, fake, range(41, 51))
    assert services.store.load(PROJECT).learned_demos["evaluated_labels"] == 40
    assert _scored(runtime) == scored
