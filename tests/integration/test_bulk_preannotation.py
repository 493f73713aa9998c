"""Background pre-annotation against a real Label Studio, with the real default model.

No "Retrieve predictions" anywhere: imports alone must end with every task holding a prediction
of the current version, written by the backend through Label Studio's API. Once with the
embedded in-process runner, once with rq workers on a real Redis (one killed with SIGKILL
halfway). No timing assertions: latency is measured in benchmarks/bench_bulk.py.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial

import pytest
import requests

from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import is_finished, preannotation_status, versions_per_task, wait_for
from tests.integration.conftest import LS_TOKEN
from tests.integration.services import backend_process, kill_hard, run_cli, start_worker

pytestmark = pytest.mark.integration

# The scenario is 300 tasks (the default, and what CI runs); a developer on a busy
# laptop may lower it with BULK_TEST_TASKS while iterating.
N_TASKS = int(os.environ.get("BULK_TEST_TASKS", "300"))
# The tests below are about the runner and the overflow policy; the cold start (tested with the
# in-process runner above) would only change the version once more before the job writes.
RUNNER_ONLY = {"DEMONSTRATIONS": "0", "BIAS_CALIBRATION": "content_free"}
SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")


def _texts(n: int) -> list[str]:
    rows = load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=n)
    assert len(rows) == n
    return [row["text"] for row in rows]


def _new_project(ls_client, backend_url: str, title: str):
    project = ls_client.projects.create(title=title, label_config=SENTIMENT_EN)
    ls_client.ml.create(url=backend_url, project=project.id, title="llm", is_interactive=False)  # → /setup
    return project






def _assert_exactly_one_prediction_of(version: str, per_task: dict[int, Counter], task_ids) -> None:
    missing = [t for t in task_ids if per_task.get(t, Counter())[version] == 0]
    duplicated = [t for t in task_ids if per_task.get(t, Counter())[version] > 1]
    assert not missing, f"{len(missing)} tasks lack a prediction of {version}"
    assert not duplicated, f"{len(duplicated)} tasks hold duplicates of {version}"


def test_imported_tasks_are_preannotated_in_process_while_predict_stays_responsive(
    ls_client, label_studio, tmp_path, model_cache_dir
):
    # The default settings, cold start included (on fewer tasks than the default 200, for time).
    env = {
        "MODEL_DIR": str(tmp_path / "store"),
        "CACHE_DIR": str(model_cache_dir),
        "REDIS_URL": "",
        "COLD_START_TASKS": "40",
    }
    with backend_process(env, tmp_path / "backend.log") as backend_url:
        project = _new_project(ls_client, backend_url, "bulk in-process")
        before_cold_start = requests.post(
            f"{backend_url}/setup", json={"project": str(project.id), "schema": SENTIMENT_EN}, timeout=10
        ).json()["model_version"]

        ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_TASKS)])  # → TASKS_CREATED

        # First predictions before the cold start ends: the provisional first page (issue 17).
        deadline = time.monotonic() + 600
        while True:
            status = preannotation_status(backend_url, project.id)
            stored = versions_per_task(ls_client, project.id)
            if stored:
                break
            assert time.monotonic() < deadline, f"no prediction stored; last status {status}"
            time.sleep(1)
        assert status["phase"] in ("first_page", "cold_start"), f"first predictions only after the cold start: {status}"
        assert {v for counts in stored.values() for v in counts} == {before_cold_start + "-provisional"}

        running = wait_for(
            lambda: preannotation_status(backend_url, project.id),
            lambda s: s.get("state") == "running" and s.get("phase") == "predict" and s.get("total") == N_TASKS,
            timeout=600, what="job started by the import webhook",
        )
        assert running["runner"] == "in-process"
        # The job first learned demonstrations and the label bias from the imported tasks (round
        # one), which is a new model version; everything it writes carries that version.
        version = running["model_version"]
        assert version != before_cold_start
        setup_now = requests.post(
            f"{backend_url}/setup", json={"project": str(project.id), "schema": SENTIMENT_EN}, timeout=10
        ).json()["model_version"]
        assert setup_now == version
        # Label Studio's synchronous single-task call while the job runs (an id outside the project,
        # so this direct call does not stand in for a prediction Label Studio would store).
        response = requests.post(
            f"{backend_url}/predict",
            json={"tasks": [{"id": 10**9, "data": {"text": "A wonderful, moving film."}}], "project": project.id},
            timeout=100,
        )
        assert response.status_code == 200
        (answer,) = response.json()["results"]
        assert answer["model_version"] == version and answer["result"][0]["value"]["choices"]

        status = wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=version), timeout=900, what="pre-annotation")

    task_ids = [t.id for t in ls_client.tasks.list(project=project.id)]
    assert len(task_ids) == N_TASKS
    per_task = versions_per_task(ls_client, project.id)
    _assert_exactly_one_prediction_of(version, per_task, task_ids)
    assert all(set(counts) == {version} for counts in per_task.values()), "provisional predictions replaced"
    assert status["last_error"] is None  # ("done" counts the last run: the /setup job or the import's)
    assert ls_client.projects.get(id=project.id).model_version == version  # uncertainty sampling follows it


def test_rq_worker_killed_halfway_resumes_without_duplicates_and_new_versions_reach_every_unlabeled_task(
    ls_client, label_studio, redis_url, tmp_path, model_cache_dir
):
    env = {
        "MODEL_DIR": str(tmp_path / "store"),
        "CACHE_DIR": str(model_cache_dir),
        "REDIS_URL": redis_url,
        # Explicit credentials here (the in-process test relies on the ones /setup sends).
        "LABEL_STUDIO_URL": label_studio,
        "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "RQ_QUEUE": f"bulk-test-{int(time.time())}",
        "JOB_LEASE_S": "4",  # a SIGKILLed job frees its project quickly
        "PREANNOTATE_WRITE_BATCH": "16",
        **RUNNER_ONLY,
    }
    worker = start_worker(env, tmp_path / "worker-1.log")
    try:
        with backend_process(env, tmp_path / "backend.log") as backend_url:
            project = _new_project(ls_client, backend_url, "bulk rq")
            version = requests.post(
                f"{backend_url}/setup", json={"project": str(project.id), "schema": SENTIMENT_EN}, timeout=10
            ).json()["model_version"]
            ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_TASKS)])

            halfway = wait_for(lambda: preannotation_status(backend_url, project.id), lambda s: s.get("state") == "running" and s.get("done", 0) >= N_TASKS // 3,
                timeout=600, what="rq job a third done",
            )
            assert halfway["runner"] == "rq"
            kill_hard(worker)
            task_ids = [t.id for t in ls_client.tasks.list(project=project.id)]
            per_task = versions_per_task(ls_client, project.id)
            written_before_kill = sum(c[version] for c in per_task.values())
            assert 0 < written_before_kill < N_TASKS
            assert all(c[version] <= 1 for c in per_task.values())

            # Restart: a new worker, and the explicit trigger (endpoint) for the project.
            worker = start_worker(env, tmp_path / "worker-2.log")
            response = requests.post(f"{backend_url}/preannotate", json={"project": project.id}, timeout=10)
            assert response.status_code == 202
            wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=version), timeout=900, what="resumed job")
            _assert_exactly_one_prediction_of(version, versions_per_task(ls_client, project.id), task_ids)

            # People label a few tasks; then a new model version appears (what a retrain publishes).
            labeled = task_ids[:3]
            for task_id in labeled:
                ls_client.annotations.create(
                    id=task_id,
                    result=[{"from_name": "sentiment", "to_name": "text", "type": "choices",
                             "value": {"choices": ["positive"]}}],
                )
            result = run_cli(env, "new-version", "--project", str(project.id))
            assert result.returncode == 0, result.stderr
            new_version = requests.post(
                f"{backend_url}/setup", json={"project": str(project.id), "schema": SENTIMENT_EN}, timeout=10
            ).json()["model_version"]
            assert new_version != version and new_version in result.stdout

            wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=new_version), timeout=900, what="new version")
    finally:
        kill_hard(worker)

    per_task = versions_per_task(ls_client, project.id)
    unlabeled = [t for t in task_ids if t not in labeled]
    _assert_exactly_one_prediction_of(new_version, per_task, unlabeled)
    assert all(per_task[t][new_version] == 0 for t in labeled)
    for task_id in labeled:  # human annotations untouched
        (annotation,) = ls_client.annotations.list(id=task_id)
        assert annotation.result[0]["value"]["choices"] == ["positive"]
    assert ls_client.projects.get(id=project.id).model_version == new_version


def test_retrieve_predictions_over_budget_stores_placeholders_that_the_job_replaces(
    ls_client, label_studio, tmp_path, model_cache_dir
):
    """The overflow policy against Label Studio's real "Retrieve predictions": with no time budget,
    every task is answered with a `-pending` placeholder (stored by Label Studio, not counting as the
    current version); the job then writes the real prediction and deletes the placeholder."""
    env = {
        "MODEL_DIR": str(tmp_path / "store"),
        "CACHE_DIR": str(model_cache_dir),
        "REDIS_URL": "",
        "PREDICT_TIME_BUDGET_S": "0",
        "PREANNOTATE_AUTO": "false",  # only the overflow hands work to the job here
        **RUNNER_ONLY,
    }
    n_tasks = 8
    with backend_process(env, tmp_path / "backend.log") as backend_url:
        project = _new_project(ls_client, backend_url, "bulk overflow")
        ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(n_tasks)])
        task_ids = [t.id for t in ls_client.tasks.list(project=project.id)]
        version = requests.post(
            f"{backend_url}/setup", json={"project": str(project.id), "schema": SENTIMENT_EN}, timeout=10
        ).json()["model_version"]

        ls_client.actions.create(
            id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
        )
        per_task = versions_per_task(ls_client, project.id)
        # Label Studio stored what /predict answered: placeholders, not the current version.
        assert all(per_task.get(t, Counter())[version] == 0 for t in task_ids)
        wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=version), timeout=600, what="overflow job")

    per_task = versions_per_task(ls_client, project.id)
    _assert_exactly_one_prediction_of(version, per_task, task_ids)
    assert not any(v.endswith("-pending") for counts in per_task.values() for v in counts), "placeholders deleted"
