"""A real Label Studio connects our real backend and stores its predictions."""

from __future__ import annotations

import time

import pytest

from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import wait_until_finished

pytestmark = pytest.mark.integration


def _stored_predictions(ls_client, project_id: int) -> list:
    return list(ls_client.predictions.list(project=project_id))


def test_label_studio_retrieves_and_stores_predictions(ls_client, backend_server):
    rows = load_jsonl(shared_path("data", "chnsenticorp", "test.jsonl"), limit=8)
    project = ls_client.projects.create(
        title="ci chinese sentiment", label_config=(LABELING_CONFIGS / "sentiment_zh.xml").read_text(encoding="utf-8")
    )
    ml = ls_client.ml.create(url=backend_server, project=project.id, title="llm", is_interactive=False)
    assert ml.state in (None, "CO", "CONNECTED", "Connected") or ml.id  # connection accepted (SSRF guard lifted)

    ls_client.projects.import_tasks(id=project.id, request=[{"text": row["text"]} for row in rows])
    tasks = list(ls_client.tasks.list(project=project.id))
    assert len(tasks) == len(rows)

    # Label Studio's own advice after connecting; during the cold start our /predict answers with
    # "-pending" placeholders that the background job replaces (no competing versions per task).
    ls_client.actions.create(
        id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
    )
    deadline = time.monotonic() + 600
    predictions = _stored_predictions(ls_client, project.id)
    while not _settled(predictions, len(rows)) and time.monotonic() < deadline:
        time.sleep(2)
        predictions = _stored_predictions(ls_client, project.id)

    assert _settled(predictions, len(rows)), "every task ends with exactly one real prediction"
    # The job sets the project's version in its last step, after its last write: wait for it.
    wait_until_finished(backend_server, project.id, timeout=600, what="the import's pre-annotation job")
    expected_version = ls_client.projects.get(id=project.id).model_version  # set by the backend's job
    assert expected_version
    assert {p.model_version for p in predictions} == {expected_version}
    assert {p.task for p in predictions} == {t.id for t in tasks}
    scores = [p.score for p in predictions]
    assert all(0.0 < s <= 1.0 for s in scores)
    assert len(set(round(s, 6) for s in scores)) > 1, "scores come from the model, not a constant"
    for prediction in predictions:
        (region,) = prediction.result
        assert region["value"]["choices"][0] in {"positive", "negative"}


def _settled(predictions: list, n_tasks: int) -> bool:
    """One prediction per task, none of them a placeholder."""
    return len(predictions) == n_tasks and not any(p.model_version.endswith("-pending") for p in predictions)
