"""Label Studio dying or hanging in the middle of a job (issue 14, item 6), against the real one.

The backend (in-process runner, the unit tests' keyword LLM: the subject is Label Studio, not the
model) reaches a real Label Studio through `LabelStudioProxy`, which after the first prediction
write of a new version either hangs (accepts, never answers: LABEL_STUDIO_TIMEOUT_S fires) or
drops every connection (Label Studio died). Checked where users look (/preannotate/status):
a clear error naming Label Studio, state "retrying" with "retrying in N s" while the runner's
backoff waits; and in Label Studio: nothing half-published — the project keeps pointing at the
previous version while the new one's predictions are incomplete, and once Label Studio is back the
retry writes the rest (every task exactly one prediction of the new version) and only then moves
`project.model_version`. A training run whose Label Studio hangs records the same kind of error
and keeps the serving SLM version.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.wiring import build_services
from tests.conftest import LABELING_CONFIGS
from tests.integration.backend_status import versions_per_task, wait_for
from tests.integration.conftest import LS_TOKEN
from tests.reliability.label_studio_proxy import LabelStudioProxy

pytestmark = pytest.mark.integration

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
N_TASKS = 12
TIMEOUT_S = 2.0  # LABEL_STUDIO_TIMEOUT_S, low so that a hung Label Studio fails a call quickly
BACKOFF_S = 4  # JOB_RETRY_BACKOFF_S: retries after 4 s, then 16 s
FAULT_SYMPTOM = {"hang": "did not answer in time", "drop": "is unreachable"}


def _texts() -> list[str]:
    return [f"review {i}: a {'positive' if i % 2 else 'negative'} experience" for i in range(N_TASKS)]


def _backend(tmp_path, proxy_url: str, keyword_runtime):
    settings = Settings(
        model_dir=tmp_path / "store", cache_dir=tmp_path / "cache", redis_url=None, train_debounce_s=0,
        label_studio_url=proxy_url, label_studio_api_key=LS_TOKEN, label_studio_timeout_s=TIMEOUT_S,
        job_retries=2, job_retry_backoff_s=BACKOFF_S, preannotate_auto=True, preannotate_first_page=0,
        preannotate_write_batch=4, preannotate_score_batch=4, demonstrations=0, bias_calibration="none",
    )
    services = build_services(settings, runtime_loader=lambda: keyword_runtime)
    return services, create_app(services=services).test_client()


def _new_project(ls_client, title: str) -> tuple[int, str]:
    project = ls_client.projects.create(title=title, label_config=SENTIMENT_EN)
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts()])
    return project.id, f"{project.id}.{int(project.created_at.timestamp())}"


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_label_studio_failing_mid_job_publishes_nothing_half_and_the_retry_completes(
    ls_client, label_studio, tmp_path, keyword_runtime, fault
):
    project_id, key = _new_project(ls_client, f"faults {fault}")
    with LabelStudioProxy(label_studio) as proxy:
        services, client = _backend(tmp_path, proxy.url, keyword_runtime)
        status = lambda: client.get(f"/preannotate/status?project={key}").json  # noqa: E731
        first = client.post("/setup", json={"project": key, "schema": SENTIMENT_EN}).json["model_version"]
        wait_for(status, lambda s: s.get("state") == "done" and s.get("model_version") == first,
                 timeout=120, what="the first version's pre-annotation")
        assert ls_client.projects.get(id=project_id).model_version == first

        # A new version (what a training run's publication does); Label Studio fails after its first write.
        proxy.fail_after("/import/predictions", 1, fault)
        second = services.publisher.publish_new_version(key, reason="slm_trained")
        assert second != first
        failed_at = time.monotonic()
        retrying = wait_for(status, lambda s: s.get("state") == "retrying", timeout=120,
                            what="the job's failure and its scheduled retry", interval=0.2)
        noticed_s = time.monotonic() - failed_at
        assert FAULT_SYMPTOM[fault] in retrying["last_error"] and proxy.url in retrying["last_error"]
        assert retrying["retry"] == f"retrying in {retrying['retry_in_s']} s" and 0 <= retrying["retry_in_s"] <= BACKOFF_S
        # Nothing half-published: some tasks hold the new version, not all, and the project
        # (what uncertainty sampling and the labeling UI follow) still points at the previous one.
        partial = versions_per_task(ls_client, project_id)
        holding_new = sum(1 for counts in partial.values() if counts[second])
        assert 0 < holding_new < N_TASKS
        assert ls_client.projects.get(id=project_id).model_version == first

        proxy.heal()
        done = wait_for(status, lambda s: s.get("state") == "done" and s.get("model_version") == second,
                        timeout=120, what="the retry after Label Studio came back")
        assert done["last_error"] is None and "retry" not in done
    per_task = versions_per_task(ls_client, project_id)
    task_ids = [task.id for task in ls_client.tasks.list(project=project_id)]
    assert sorted(per_task) == sorted(task_ids) and len(task_ids) == N_TASKS
    assert all(per_task[t][second] == 1 for t in task_ids), "every task exactly one prediction of the new version"
    assert ls_client.projects.get(id=project_id).model_version == second
    print(f"\nlabel studio fault={fault}: failed requests={len(proxy.failed)} tasks written before the fault="
          f"{holding_new}/{N_TASKS} status={retrying['state']!r} last_error={retrying['last_error']!r} "
          f"retry={retrying['retry']!r} noticed_after_s={noticed_s:.1f}")


def test_a_training_run_whose_label_studio_hangs_says_so_and_keeps_the_serving_version(
    ls_client, label_studio, tmp_path, keyword_runtime
):
    project_id, key = _new_project(ls_client, "faults training")
    with LabelStudioProxy(label_studio) as proxy:
        services, client = _backend(tmp_path, proxy.url, keyword_runtime)
        client.post("/setup", json={"project": key, "schema": SENTIMENT_EN})
        wait_for(lambda: services.bulk.status(key), lambda s: s.get("state") == "done", timeout=120,
                 what="pre-annotation")
        before = services.store.load(key)
        proxy.fail_after("/api/", 0, "hang")
        services.retraining.start(key)
        training = wait_for(lambda: client.get(f"/preannotate/status?project={key}").json["training"],
                            lambda s: s.get("state") == "retrying", timeout=120, what="the training run's failure",
                            interval=0.2)
        assert FAULT_SYMPTOM["hang"] in training["last_error"] and training["retry"].startswith("retrying in ")
        after = services.store.load(key)
        assert (after.slm_version, after.version_counter) == (before.slm_version, before.version_counter)
        proxy.heal()
    print(f"\nlabel studio hang during training: status={training['state']!r} last_error={training['last_error']!r} "
          f"retry={training['retry']!r}")
