"""A project's life in a real Label Studio 1.23.2, through its API: reused project numbers, config
edits, and the /setup calls Label Studio sends on every page load (issue 18, items 5 and 6).

Real Label Studio, our backend under gunicorn with the real default model; no "Retrieve predictions".
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import requests

from ml_backend.model_store import project_key_of
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import (
    is_finished,
    preannotation_status,
    versions_per_task,
    wait_for,
    wait_until_finished,
)
from tests.integration.services import backend_process

pytestmark = pytest.mark.integration

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
N_TASKS = 12


def project_key(project) -> str:
    """The key Label Studio sends in /setup for this project: "<id>.<int(created_at.timestamp())>"."""
    return project_key_of({"id": project.id, "created_at": project.created_at})


def _texts(n: int) -> list[str]:
    return [row["text"] for row in load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=n)]






def _every_task_has_one(ls_client, project_id: int, version: str) -> bool:
    task_ids = [t.id for t in ls_client.tasks.list(project=project_id)]
    per_task = versions_per_task(ls_client, project_id)
    return len(task_ids) == N_TASKS and all(per_task.get(t, Counter())[version] == 1 for t in task_ids)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, model_cache_dir):
    """Our backend with a model store this test can look into; default settings, small cold start."""
    store = tmp_path_factory.mktemp("lifecycle-store")
    env = {"MODEL_DIR": str(store), "CACHE_DIR": str(model_cache_dir), "REDIS_URL": "", "COLD_START_TASKS": "40"}
    log_path = tmp_path_factory.mktemp("lifecycle") / "backend.log"
    with backend_process(env, log_path) as url:
        yield url, store, log_path


def _connected_project(ls_client, backend_url: str, title: str):
    project = ls_client.projects.create(title=title, label_config=SENTIMENT_EN)
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_TASKS)])
    ls_client.ml.create(url=backend_url, project=project.id, title="llm", is_interactive=False)  # → /setup
    return ls_client.projects.get(id=project.id)


def test_a_reused_project_number_starts_fresh_and_is_pre_annotated(ls_client, backend):
    """What a Label Studio database reset does: a new project gets the number of an old one that
    this backend already pre-annotated. Before the fix it inherited the old state (same config →
    same version → "already triggered") and no pre-annotation started."""
    backend_url, store, _ = backend
    project = ls_client.projects.create(title="reused number", label_config=SENTIMENT_EN)
    key = project_key(project)
    assert key == f"{project.id}.{int(project.created_at.timestamp())}"

    # The old project with the same number: a fully pre-annotated project's state, copied to this
    # project number under an older creation time (exactly what a reset leaves in MODEL_DIR).
    donor = _connected_project(ls_client, backend_url, "donor")
    donor_version = wait_until_finished(backend_url, donor.id, timeout=900, what="donor pre-annotation")["model_version"]
    old_state = json.loads((store / f"project_{donor.id}" / key_ts(project_key(donor)) / "state.json").read_text())
    assert old_state["triggered_version"] == donor_version
    old_key = f"{project.id}.{int(project.created_at.timestamp()) - 86_400}"
    old_dir = store / f"project_{project.id}" / key_ts(old_key)
    old_dir.mkdir(parents=True)
    (old_dir / "state.json").write_text(json.dumps({**old_state, "project_id": old_key}))

    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_TASKS)])
    ls_client.ml.create(url=backend_url, project=project.id, title="llm", is_interactive=False)  # → /setup

    status = wait_until_finished(backend_url, project.id, timeout=900, what="pre-annotation of the new project")
    assert status["project"] == key
    assert _every_task_has_one(ls_client, project.id, status["model_version"])
    assert (store / f"project_{project.id}" / key_ts(key) / "state.json").is_file()
    assert json.loads((old_dir / "state.json").read_text())["project_id"] == old_key  # the old state is untouched


def key_ts(key: str) -> str:
    return key.split(".", 1)[1]


def test_config_saved_through_the_api_refreshes_predictions_without_a_setup(ls_client, backend):
    """PROJECT_UPDATED carries the new config: the refresh starts at once, with nobody opening the
    project (Label Studio's /setup would only come with a page load)."""
    backend_url, _, log_path = backend
    project = _connected_project(ls_client, backend_url, "config edit")
    first = wait_until_finished(backend_url, project.id, timeout=900, what="first pre-annotation")
    runs_after_first = first["runs"]

    # Label Studio's page loads send /setup again and again: after the cold start none starts a job.
    body = {"project": project_key(project), "schema": SENTIMENT_EN, "hostname": None}
    for _ in range(3):
        again = requests.post(f"{backend_url}/setup", json=body, timeout=10)
        assert again.status_code == 200 and again.json()["model_version"] == first["model_version"]
    time.sleep(2)
    unchanged = preannotation_status(backend_url, project.id)
    assert unchanged["runs"] == runs_after_first and unchanged["state"] == "done"
    assert unchanged["last_write"]["model_version"] == first["model_version"]

    setup_calls_before = log_path.read_text(errors="replace").count(f"event=setup project={project.id}.")
    new_config = SENTIMENT_EN.replace("</Choices>", '<Choice value="neutral" hint="neither positive nor negative"/></Choices>')
    assert new_config != SENTIMENT_EN
    ls_client.projects.update(id=project.id, label_config=new_config)  # → PROJECT_UPDATED webhook

    wait_for(lambda: log_path.read_text(errors="replace"), lambda log: "event=config_updated project=" + project_key(project) in log,
             timeout=30, what="PROJECT_UPDATED handled")
    refreshed = wait_for(
        lambda: preannotation_status(backend_url, project.id),
        lambda s: is_finished(s) and s["model_version"] != first["model_version"],
        timeout=900, what="refresh after the config edit",
    )
    assert _every_task_has_one(ls_client, project.id, refreshed["model_version"])
    assert log_path.read_text(errors="replace").count(f"event=setup project={project.id}.") == setup_calls_before
    assert ls_client.projects.get(id=project.id).model_version == refreshed["model_version"]
