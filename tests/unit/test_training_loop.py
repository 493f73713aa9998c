"""The learning loop (issue 11) with the fake LLM, a fake encoder and an in-memory Label Studio:
annotation events → coalesced training job → a new SLM version → published to every task."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from ml_backend import keys
from ml_backend.app import create_app, services_of
from ml_backend.kv import MemoryKV
from ml_backend.model_store import ModelStore
from ml_backend.retraining import TRAIN_JOB, Retraining
from ml_backend.slm_model import list_versions, load_served, versions_dir
from ml_backend.wiring import build_services
from tests.conftest import LABELING_CONFIGS
from tests.fakes import FakeLabelStudio, KeywordEncoder, RecordingRunner
from training.annotations import combine_annotations

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
PROJECT = "5.1795457094"
LABELS = ["positive", "negative"]


# --- team annotations ---------------------------------------------------------------------------
def _annotation(choice, *, at="2026-12-01T00:00:00Z", cancelled=False, truth=False, from_name="sentiment"):
    return {"result": [{"from_name": from_name, "type": "choices", "value": {"choices": [choice]}}],
            "updated_at": at, "was_cancelled": cancelled, "ground_truth": truth}


def test_the_majority_of_annotators_decides_and_agreement_is_kept():
    label = combine_annotations([_annotation("positive"), _annotation("negative"), _annotation("positive")],
                                "sentiment", LABELS)
    assert label.label == 0 and label.annotations == 3 and label.agreement == pytest.approx(2 / 3)


def test_a_tie_goes_to_the_most_recent_annotation():
    earlier, later = "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"
    label = combine_annotations([_annotation("negative", at=later), _annotation("positive", at=earlier)],
                                "sentiment", LABELS)
    assert label.label == 1 and label.agreement == 0.5


def test_skipped_annotations_are_ignored_and_ground_truth_wins():
    assert combine_annotations([_annotation("positive", cancelled=True)], "sentiment", LABELS) is None
    label = combine_annotations(
        [_annotation("positive"), _annotation("positive"), _annotation("negative", truth=True)], "sentiment", LABELS
    )
    assert label.label == 1


def test_annotations_of_another_target_or_an_unknown_label_do_not_count():
    assert combine_annotations([_annotation("positive", from_name="topic")], "sentiment", LABELS) is None
    assert combine_annotations([_annotation("maybe")], "sentiment", LABELS) is None


# --- events → jobs ------------------------------------------------------------------------------
@pytest.fixture
def retraining(settings):
    settings = settings.model_copy(update={"train_min_new_annotations": 3})
    store = ModelStore(settings.model_dir)
    store.update(PROJECT, lambda state: setattr(state, "label_config", SENTIMENT_EN))
    kv = MemoryKV()
    runner = RecordingRunner(settings, kv)
    return Retraining(settings, kv, runner, store), runner, kv


def test_training_starts_after_the_minimum_of_new_annotations(retraining):
    trainer, runner, _ = retraining
    answers = [trainer.annotation_changed(PROJECT, "ANNOTATION_CREATED", {"annotation": {"id": i}}) for i in (1, 2)]
    assert [a["status"] for a in answers] == ["waiting", "waiting"] and not runner.submitted
    answer = trainer.annotation_changed(PROJECT, "ANNOTATION_UPDATED", {"annotation": {"id": 3}})
    assert answer["status"] == "queued" and runner.submitted == [(TRAIN_JOB, (PROJECT,))]


def test_a_burst_of_events_queues_one_job(retraining):
    trainer, runner, _ = retraining
    answers = [trainer.annotation_changed(PROJECT, "ANNOTATION_CREATED", {"annotation": {"id": i}}) for i in range(50)]
    queued = [a for a in answers if a["status"] == "queued"]
    assert len(runner.submitted) == 1 and len({a["job"] for a in queued}) == 1
    assert all(a["coalesced"] for a in queued[1:])


def test_start_training_queues_a_run_at_once(retraining):
    trainer, runner, _ = retraining
    assert trainer.start(PROJECT)["status"] == "queued" and len(runner.submitted) == 1


def test_an_annotation_count_that_drifted_from_the_model_reconciles(retraining):
    """Webhooks were lost: the next event's project count shows 3 annotations the model never saw."""
    trainer, runner, _ = retraining
    answer = trainer.annotation_changed(
        PROJECT, "ANNOTATION_CREATED", {"annotation": {"id": 9}, "project": {"total_annotations_number": 3}}
    )
    assert answer["status"] == "queued" and len(runner.submitted) == 1


def test_deleted_annotations_count_as_changes(retraining):
    trainer, runner, _ = retraining
    answer = trainer.annotation_changed(PROJECT, "ANNOTATIONS_DELETED", {"annotations": [{"id": 1}, {"id": 2}, {"id": 3}]})
    assert answer["status"] == "queued"


# --- the whole loop, in process ------------------------------------------------------------------------
def _review(i: int) -> tuple[str, str]:
    """Half the reviews say what they mean with words the fake LLM reads ("positive"/"negative");
    the other half only with words it cannot read ("great"/"awful"), which the SLM learns."""
    gold = LABELS[i % 2]
    if i % 4 < 2:
        return f"review {i}: a {gold} experience overall", gold
    return f"review {i}: " + ("great great stuff" if gold == "positive" else "awful awful stuff"), gold


@pytest.fixture
def loop(settings, keyword_runtime):
    settings = settings.model_copy(update={
        "preannotate_auto": True, "job_retries": 0, "demonstrations": 0, "bias_calibration": "none",
        "preannotate_first_page": 0, "train_min_new_annotations": 5,
    })
    fake = FakeLabelStudio.with_texts([_review(i)[0] for i in range(80)])
    encoder = KeywordEncoder()
    services = build_services(settings, runtime_loader=lambda: keyword_runtime, client_factory=lambda state: fake,
                              encoder_loader=lambda name: encoder)
    app = create_app(services=services)
    client = app.test_client()
    client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN})
    assert services.runner.wait_idle(30)
    return app, client, services, fake, encoder


def _annotate(client, fake, task_ids):
    """Annotators label the tasks; then their webhooks arrive (a burst: the first run reads them all)."""
    annotations = [(task_id, fake.annotate(task_id, _review(task_id - 1)[1])) for task_id in task_ids]
    for task_id, annotation in annotations:
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": annotation["id"]},
                                      "project": {"id": 5}, "task": {"id": task_id}})


def _latest(fake, version):
    return {p["task"]: p for p in fake.predictions.values() if p["model_version"] == version}


def test_annotations_train_a_model_that_is_published_to_every_unlabeled_task(loop, keyword_runtime):
    app, client, services, fake, encoder = loop
    before = services.bulk.status(PROJECT)["model_version"]
    scored_before = sum(call["n_tasks"] for call in keyword_runtime.calls)
    _annotate(client, fake, range(1, 41))
    assert services.runner.wait_idle(60)
    assert services.runner.wait_idle(60)  # the training run's publication queued the re-annotation

    state = services.store.load(PROJECT)
    assert state.slm_version == "slm-0001"
    status = services.bulk.status(PROJECT)
    after = status["model_version"]
    assert after != before and after.endswith(f"-v{state.version_counter}") and status["state"] == "done"
    unlabeled = [t for t in fake.task_data if not fake.annotations.get(t)]
    written = _latest(fake, after)
    assert sorted(written) == sorted(unlabeled)
    assert fake.project_model_version == after
    assert all(0.0 <= p["mislabeling"] <= 1.0 for p in written.values())
    # The queue: set after Label Studio's bulk import (which drops them), uncertainty sampling on
    # the new version, and the review view once however many versions were published.
    assert all(isinstance(p["cluster"], int) for p in written.values())
    assert fake.sampling == "Uncertainty sampling" and fake.views == ["Review queue"]
    # Every LLM distribution came from the cache: neither training nor the republication ran the LLM,
    # except round two's evaluation of learned demonstrations (rejected: this fake ignores its prompt).
    assert not state.learned_demos["adopted"]
    evaluated = state.learned_demos["evaluation"]["n_eval"]
    assert sum(call["n_tasks"] for call in keyword_runtime.calls) == scored_before + evaluated
    # The SLM learned the words the LLM cannot read: the blend is right where the LLM alone was not.
    gold = {t: _review(t - 1)[1] for t in unlabeled}
    old = _latest(fake, before)
    accuracy = lambda predictions: np.mean([p["result"][0]["value"]["choices"][0] == gold[t] for t, p in predictions.items()])  # noqa: E731
    assert accuracy(written) > accuracy({t: old[t] for t in unlabeled}) + 0.2
    versions = client.get(f"/versions?project={PROJECT}").json
    (summary,) = versions["slm_versions"]
    assert summary["current"] and summary["counts"]["human_labels"] == 40
    assert "cv_accuracy_human" in summary["metrics"] and "disagreement_rate" in summary["metrics"]
    training = client.get(f"/preannotate/status?project={PROJECT}").json["training"]
    # A follow-up run for the rest of the burst found nothing new ("skipped"); the version stays.
    assert training["state"] in ("done", "skipped") and training["slm_version"] == "slm-0001"
    assert training["human_labels"] == 40 and training["timings_s"]["llm"] >= 0


def test_predict_serves_the_blend_with_its_calibrated_score(loop):
    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 41))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    version = services.store.load(PROJECT)
    served = load_served(versions_dir(services.store.project_dir(PROJECT)) / version.slm_version)
    known = {"id": 80, "data": {"text": _review(79)[0]}}  # an "awful" review: the LLM alone cannot read it
    new = {"id": 500, "data": {"text": "awful awful service"}}  # not in the project: scored and blended now
    answer = client.post("/predict", json={"tasks": [known, new], "project": PROJECT, "label_config": SENTIMENT_EN}).json
    assert answer["model_version"] == services.bulk.status(PROJECT)["model_version"]
    for prediction in answer["results"]:
        assert prediction["result"][0]["value"]["choices"] == ["negative"]
        assert 0.0 <= prediction["mislabeling"] <= 1.0 and 0.0 <= prediction["score"] <= 1.0
    # The score is the version's P(correct) of the blend, computed by the served model's own code.
    llm = np.array([[0.5, 0.5]])  # the fake LLM reads neither word of the new task: a tie
    expected = served.score(llm, KeywordEncoder().encode([new["data"]["text"]]))
    assert answer["results"][1]["score"] == pytest.approx(float(expected.score[0]), abs=1e-6)
    assert answer["results"][1]["cluster"] == int(expected.cluster[0])
    assert served.priority is not None and served.manifest["priority"]["n_reviewed"] == 40
    # Which LLM distribution the SLM learned from is recorded, with the consistency behind it.
    assert "llm_prior" in served.blend and served.manifest["metrics"]["llm_teacher_uncorrected"] in (0.0, 1.0)


def test_nothing_new_means_no_new_version_but_start_training_retrains(loop):
    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 11))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    assert services.store.load(PROJECT).slm_version == "slm-0001"
    services.retraining.annotation_changed(PROJECT, "ANNOTATION_UPDATED", {"project": {"total_annotations_number": 99}})
    services.runner.wait_idle(60)
    assert services.retraining.status(PROJECT)["state"] == "skipped"
    assert services.store.load(PROJECT).slm_version == "slm-0001"
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).json["status"] == "queued"
    services.runner.wait_idle(60)
    assert services.store.load(PROJECT).slm_version == "slm-0002"


def test_a_crash_while_saving_keeps_the_previous_version_serving(loop, crash_writing_manifest):
    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 11))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    serving = services.store.load(PROJECT)

    crash_writing_manifest(OSError("disk full"))
    client.post("/train", json={"project": {"id": 5}})
    services.runner.wait_idle(60)
    after = services.store.load(PROJECT)
    assert after.slm_version == serving.slm_version and after.version_counter == serving.version_counter
    assert list_versions(services.store.project_dir(PROJECT)) == ["slm-0001"]
    assert not [p for p in versions_dir(services.store.project_dir(PROJECT)).iterdir() if p.name.startswith(".tmp")]
    status = services.retraining.status(PROJECT)
    assert status["state"] == "failed" and "disk full" in status["last_error"]


def test_rollback_serves_the_previous_version_under_a_new_model_version(loop):
    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 11))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    _annotate(client, fake, range(11, 21))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    assert services.store.load(PROJECT).slm_version == "slm-0002"
    counter = services.store.load(PROJECT).version_counter
    slm_version, model_version = services.publisher.rollback_slm(PROJECT)
    state = services.store.load(PROJECT)
    assert slm_version == state.slm_version == "slm-0001" and state.version_counter == counter + 1
    assert model_version.endswith(f"-v{counter + 1}")
    with pytest.raises(ValueError, match="no SLM version"):
        services.publisher.rollback_slm(PROJECT, "slm-0042")


def test_old_versions_are_pruned_but_never_the_serving_one(loop):
    app, client, services, fake, _ = loop
    services.settings.slm_keep_versions = 2
    for _ in range(3):
        services.retraining.start(PROJECT)
        services.runner.wait_idle(60)
    assert list_versions(services.store.project_dir(PROJECT)) == ["slm-0002", "slm-0003"]


# --- serving applies exactly what training fitted ---------------------------------------------------------
@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_stored_calibration_map_gives_what_the_fitted_calibrator_gives(method):
    from ml_backend.slm_model import calibrate, logit
    from training.blend import ConfidenceCalibrator

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 400)
    correct = rng.uniform(size=400) < confidence ** 2  # overconfident on purpose
    calibrator = ConfidenceCalibrator(method).fit(confidence, correct)
    probe = np.linspace(0.4, 1.0, 61)
    if method == "isotonic":
        expected = calibrator.model_.predict(probe)
    else:
        expected = calibrator.model_.predict_proba(logit(probe).reshape(-1, 1))[:, 1]
    assert np.allclose(calibrate(calibrator.params(), probe), expected, atol=1e-9)


def test_a_saved_version_serves_what_the_trained_slm_and_blend_predict(tmp_path):
    from training.blend import BlendOptions, LLMSLMBlend
    from training.slm import SLMClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 6))
    truth = (X[:, 0] > 0).astype(int)
    llm = np.where(rng.uniform(size=120) < 0.8, truth, 1 - truth)
    llm_probabilities = np.column_stack([np.where(llm == 0, 0.7, 0.3), np.where(llm == 1, 0.7, 0.3)])
    human = np.where(np.arange(120) < 60, truth, -1)
    slm = SLMClassifier(label_names=LABELS, encoder_id="test").fit(X, llm_probabilities, human)
    blend = LLMSLMBlend(BlendOptions(min_calibration_labels=20)).fit(
        llm_probabilities[:60], slm.oof_probabilities_[:60], truth[:60])
    slm.save(tmp_path / "slm-0001", extra_manifest={"target": "sentiment", "blend": blend.state()})
    served = load_served(tmp_path / "slm-0001")
    expected = blend.predict(llm_probabilities, slm.predict_proba(X))
    got = served.score(llm_probabilities, X)
    assert np.allclose(got.score, expected.score) and np.array_equal(got.predicted, expected.predicted)
    assert np.allclose(got.llm_wrong_probability, expected.llm_wrong_probability)
    assert served.serves("sentiment", LABELS) and not served.serves("sentiment", ["positive", "neutral"])


NER_EN = (LABELING_CONFIGS / "ner_en.xml").read_text()
NER_PROJECT = "8.1795457094"


def _ner_annotation(text: str, surface: str, label: str) -> dict:
    start = text.index(surface)
    return {"id": 900 + len(text), "was_cancelled": False, "ground_truth": False, "updated_at": "2026-12-01T00:00:00Z",
            "result": [{"from_name": "label", "to_name": "text", "type": "labels",
                        "value": {"start": start, "end": start + len(surface), "text": surface, "labels": [label]}}]}


def test_annotated_ner_tasks_become_the_nearest_tasks_demonstrations(settings, keyword_runtime):
    settings = settings.model_copy(update={"preannotate_auto": True, "job_retries": 0, "preannotate_first_page": 0})
    texts = [f"Zorblat from Quuxland called on day {i}." for i in range(6)] + [f"Rain fell on field {i}." for i in range(6)]
    fake = FakeLabelStudio.with_texts(texts)
    encoder = KeywordEncoder()
    prompts: list[str] = []
    generate = keyword_runtime.generate

    def recording_generate(prefix, task, suffix, **kwargs):
        prompts.append(keyword_runtime.detokenize(prefix) if not isinstance(prefix, str) else prefix)
        return generate(prefix, task, suffix, **kwargs)

    keyword_runtime.generate = recording_generate
    services = build_services(settings, runtime_loader=lambda: keyword_runtime, client_factory=lambda state: fake,
                              encoder_loader=lambda name: encoder)
    client = create_app(services=services).test_client()
    client.post("/setup", json={"project": NER_PROJECT, "schema": NER_EN})
    assert services.runner.wait_idle(30)
    fake.annotations[1] = [_ner_annotation(texts[0], "Zorblat", "PER")]
    fake.annotations[7] = [{**_ner_annotation(texts[6], "Rain", "PER"), "result": []}]  # no entity: an example too
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 8}})
    assert answer.json["status"] == "queued"
    prompts.clear()
    assert services.runner.wait_idle(60) and services.runner.wait_idle(60)

    state = services.store.load(NER_PROJECT)
    assert state.slm_version == "slm-0001"
    (summary,) = client.get(f"/versions?project={NER_PROJECT}").json["slm_versions"]
    assert summary["kind"] == "ner-examples" and summary["counts"]["examples"] == 2
    version = services.bulk.status(NER_PROJECT)["model_version"]
    unlabeled = [t for t in fake.task_data if t not in (1, 7)]
    assert sorted(_latest(fake, version)) == unlabeled
    # Each task's prompt shows the annotated example most like it, closest to the task (last).
    zorblat_prompts = [p for p in prompts if "Zorblat from Quuxland called on day 0." in p]
    assert zorblat_prompts and all('["Zorblat", "PER"]' in p for p in zorblat_prompts)
    assert len(prompts) == len(unlabeled)
    last_examples = [p.rsplit("Text:", 2)[-2] for p in prompts]
    assert sum("Zorblat" in example for example in last_examples) == 5  # the 5 unlabeled Zorblat tasks
    assert sum("Rain fell" in example for example in last_examples) == 5  # the 5 unlabeled rain tasks


def test_a_run_waits_until_a_burst_of_events_is_over():
    import threading
    import time

    from training.job import wait_for_quiet

    kv = MemoryKV()
    stop = threading.Event()

    def burst():
        for i in range(6):
            kv.sadd("events", [f"ANNOTATION_CREATED:{i}"])
            time.sleep(0.05)
        stop.set()

    thread = threading.Thread(target=burst)
    thread.start()
    wait_for_quiet(kv, "events", 0.2)
    assert stop.is_set() and len(kv.smembers("events")) == 6  # it returned only after the last event
    thread.join()
    started = time.monotonic()
    wait_for_quiet(kv, "events", 0.1)
    assert time.monotonic() - started < 1.0  # quiet already: one look, then go


def test_a_changed_labeling_config_makes_the_next_run_retrain_without_new_annotations(loop):
    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 11))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    assert services.store.load(PROJECT).slm_version == "slm-0001"
    three_labels = SENTIMENT_EN.replace('<Choice value="negative"', '<Choice value="mixed"/>\n    <Choice value="negative"')
    answer = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 5, "label_config": three_labels}})
    assert answer.json["status"] == "config_updated"
    services.runner.wait_idle(60)
    services.retraining.annotation_changed(PROJECT, "ANNOTATION_UPDATED", {"project": {"total_annotations_number": 99}})
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    state = services.store.load(PROJECT)
    assert state.slm_version == "slm-0002"
    served = load_served(versions_dir(services.store.project_dir(PROJECT)) / "slm-0002")
    assert served.label_names == ["positive", "mixed", "negative"]


def test_the_report_compares_the_pre_annotations_annotators_saw_with_their_labels(loop):
    app, client, services, fake, _ = loop
    assert client.get(f"/report?project={PROJECT}&format=json").status_code == 409  # nobody reviewed yet
    assert client.get("/report?project=424242&format=json").status_code == 404
    _annotate(client, fake, range(1, 41))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    numbers = client.get(f"/report?project={PROJECT}&format=json").json
    assert numbers["reviewed"] == 40
    # what the annotators saw was the LLM's cold-start version: right on the half it can read
    seen = {t: max((pid, p) for pid, p in fake.predictions.items() if p["task"] == t)[1] for t in range(1, 41)}
    right = [p["result"][0]["value"]["choices"][0] == _review(t - 1)[1] for t, p in seen.items()]
    assert numbers["accuracy"] == pytest.approx(np.mean(right))
    assert {row["threshold"] for row in numbers["thresholds"]} >= {0.0, 0.5, 0.95}
    page = client.get(f"/report?project={PROJECT}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b"<table>" in page.data and b"data:image/png;base64," in page.data


def test_an_annotation_webhook_reads_the_state_once_and_the_drift_uses_the_served_count(loop, monkeypatch):
    """Label Studio gives a webhook 1 s and sends many: one read of the project's state per event,
    and the serving version's count (its manifest, kept while the file is unchanged) still decides."""
    import os
    import time

    app, client, services, fake, _ = loop
    _annotate(client, fake, range(1, 11))
    services.runner.wait_idle(60)
    services.runner.wait_idle(60)
    # With no debounce, the first run takes whichever of the burst's events had arrived when it
    # started (thread timing): the rest stay pending. Start this test from none pending.
    services.kv.delete(keys.training_events(PROJECT))
    version = services.store.load(PROJECT).slm_version
    manifest = versions_dir(services.store.project_dir(PROJECT)) / version / "manifest.json"
    an_hour_ago = time.time() - 3600
    os.utime(manifest, (an_hour_ago, an_hour_ago))  # a version serving for an hour: its count is cached
    learned = services.retraining.trained_annotations(PROJECT)
    assert learned == 10
    reads = []
    read = ModelStore._read
    monkeypatch.setattr(ModelStore, "_read", staticmethod(lambda path, key: reads.append(key) or read(path, key)))

    def webhook(annotation_id: int, total: int) -> dict:
        return client.post("/webhook", json={
            "action": "ANNOTATION_UPDATED", "annotation": {"id": annotation_id},
            "project": {"id": 5, "total_annotations_number": total}}).json

    assert webhook(1, learned)["status"] == "waiting"  # one event pending, no drift
    assert reads == [PROJECT]
    assert webhook(2, learned + 5)["status"] == "queued"  # drifted by TRAIN_MIN_NEW_ANNOTATIONS: a run
    assert reads == [PROJECT, PROJECT]
