"""A new project's first predictions come before its cold start ends, and nothing is scored twice
(issue 17): the pre-annotation job against an in-memory Label Studio, with the fake LLM."""

from __future__ import annotations

import pytest

from ml_backend import bias_correction
from ml_backend.app import services_of
from ml_backend.versioning import PROVISIONAL_SUFFIX
from tests.conftest import LABELING_CONFIGS
from tests.fakes import FakeLabelStudio

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
PROJECT = "9.1795457094"
N_TASKS = 60


def _texts(n: int) -> list[str]:
    words = ["positive", "negative"]
    return [f"a {words[i % 2]} review number {i} " + ("positive " * (i % 3)) for i in range(n)]


@pytest.fixture
def project(settings, keyword_runtime):
    """The app, with background pre-annotation on, writing into an in-memory Label Studio."""
    from ml_backend.app import create_app

    app = create_app(
        settings.model_copy(
            update={
                "preannotate_auto": True,
                "job_retries": 0,
                "demonstrations": 2,
                "bias_calibration": "prior_matching",
                "cold_start_tasks": 40,
                "preannotate_first_page": 10,
                "preannotate_write_batch": 8,
            }
        ),
        runtime_loader=lambda: keyword_runtime,
    )
    services = services_of(app)
    fake = FakeLabelStudio.with_texts(_texts(N_TASKS))
    services.client_factory = lambda state: fake
    statuses: list[dict] = []
    original = services.round_one.run

    def observed_cold_start(project_id, tasks, *, on_progress=None):
        def recording(stage, done, total):
            on_progress(stage, done, total)
            statuses.append(services.bulk.status(project_id))

        version = original(project_id, tasks, on_progress=recording)
        fake.events.append(("cold_start_done", version))
        return version

    services.round_one.run = observed_cold_start
    return app, services, fake, statuses


def _connect(app) -> str:
    client = app.test_client()
    version = client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN}).json["model_version"]
    assert services_of(app).runner.wait_idle(30)
    return version


def test_first_predictions_are_written_before_the_cold_start_ends(project):
    app, _, fake, _ = project
    connected_version = _connect(app)
    kinds = [kind for kind, _ in fake.events]
    first_write = kinds.index("write")
    assert first_write < kinds.index("cold_start_done")
    (_, first_batch) = fake.events[first_write]
    assert len(first_batch) == 10  # PREANNOTATE_FIRST_PAGE tasks, the first ones in Label Studio's order
    assert [task for task, _ in first_batch] == list(range(1, 11))
    assert {version for _, version in first_batch} == {connected_version + PROVISIONAL_SUFFIX}


def test_every_task_ends_with_exactly_one_prediction_of_the_final_version(project):
    app, services, fake, _ = project
    connected_version = _connect(app)
    status = services.bulk.status(PROJECT)
    final = status["model_version"]
    assert final != connected_version  # the cold start changed the version
    assert status["state"] == "done" and status["last_error"] is None
    per_task = fake.versions_per_task()
    assert all(versions == [final] for versions in per_task.values()), per_task
    assert fake.project_model_version == final
    deleted = [pid for kind, ids in fake.events if kind == "delete" for pid in ids]
    assert len(deleted) == 10  # the provisional first page, replaced


def test_cold_start_reports_its_stage_and_progress(project):
    app, _, _, statuses = project
    _connect(app)
    during = [s for s in statuses if s["phase"] == "cold_start"]
    assert during, "the status said nothing during the cold start"
    assert all(s["state"] == "running" and s["total"] > 0 for s in during)
    stages = [s["stage"] for s in during]
    assert any("choosing demonstrations" in stage for stage in stages)
    assert any("label bias" in stage for stage in stages)
    last_of_bias = [s for s in during if "label bias" in s["stage"]][-1]
    assert last_of_bias["done"] == last_of_bias["total"] == 40  # COLD_START_TASKS of the 60 tasks
    assert any(s["eta_s"] is not None for s in during)


def test_tasks_the_cold_start_scored_with_the_final_prompt_are_not_scored_again(project, keyword_runtime):
    app, services, _, _ = project
    _connect(app)
    scored_rows = sum(call["n_tasks"] for call in keyword_runtime.calls)
    (scorer,) = services.inference.scorers()
    assert scorer.memo_hits >= 40 + 10  # the cold start's sample (40) and the first page (pass 1)
    # first page 10 + demo pool (60 tasks → all 40 of the sample, first 10 remembered) + sample 40
    # + anchors + the 20 tasks outside the sample: never the sample a second time.
    anchors = len(bias_correction.CONTENT_FREE_INPUTS) + bias_correction.DOMAIN_CONTEXT_INPUTS
    assert scored_rows < 10 + 30 + 40 + anchors + 20 + 40


def test_a_rerun_after_a_crash_replaces_leftover_provisional_predictions(project):
    app, services, fake, _ = project
    # What a job killed after the first page leaves: provisional predictions on the first tasks.
    leftover = [{"task": t, "model_version": "old" + PROVISIONAL_SUFFIX, "result": [], "score": 0.5} for t in (1, 2)]
    fake.write_predictions(leftover)
    _connect(app)
    final = services.bulk.status(PROJECT)["model_version"]
    assert fake.versions_per_task()[1] == [final] and fake.versions_per_task()[2] == [final]
