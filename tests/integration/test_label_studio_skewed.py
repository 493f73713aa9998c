"""A skewed project keeps its skew: 90% negative / 10% positive Chinese reviews, imported through
Label Studio's API, pre-annotated by the backend's background job with the default settings
(BIAS_CALIBRATION=prior_matching, self-labeled demonstrations), come back about 90/10 — not the
50/50 that matching a uniform prior forced on every project (issue 18).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import preannotation_status, versions_per_task

pytestmark = pytest.mark.integration

N_NEGATIVE, N_POSITIVE = 135, 15
TOLERANCE = 0.10  # predicted share of positives within 10 points of the true share


def _skewed_reviews() -> list[dict]:
    rows = load_jsonl(shared_path("data", "chnsenticorp", "test.jsonl"))
    negative = [r for r in rows if r["label"] == "negative"][:N_NEGATIVE]
    positive = [r for r in rows if r["label"] == "positive"][:N_POSITIVE]
    assert (len(negative), len(positive)) == (N_NEGATIVE, N_POSITIVE)
    mixed = negative + positive
    return [mixed[i] for i in np.random.default_rng(0).permutation(len(mixed))]




def test_a_90_10_project_is_preannotated_about_90_10(ls_client, backend_server):
    reviews = _skewed_reviews()
    project = ls_client.projects.create(
        title="skewed chinese sentiment",
        label_config=(LABELING_CONFIGS / "sentiment_zh.xml").read_text(encoding="utf-8"),
    )
    ls_client.ml.create(url=backend_server, project=project.id, title="llm", is_interactive=False)
    ls_client.projects.import_tasks(id=project.id, request=[{"text": r["text"]} for r in reviews])
    tasks = list(ls_client.tasks.list(project=project.id))
    assert len(tasks) == len(reviews)
    assert sorted(task.data["text"] for task in tasks) == sorted(r["text"] for r in reviews)
    gold = {task.id: next(r["label"] for r in reviews if r["text"] == task.data["text"]) for task in tasks}

    # Bounded wait: the import's job learns round one (demonstrations, label prior) from these
    # tasks, then writes one prediction per task of the resulting version.
    deadline = time.monotonic() + 1500
    while True:
        status = preannotation_status(backend_server, project.id)
        version = status.get("model_version")
        per_task = versions_per_task(ls_client, project.id)
        finished = status.get("state") == "done" and not status.get("queued_job") and not status.get("running_job")
        if finished and version and all(per_task.get(t, Counter())[version] >= 1 for t in gold):
            break
        assert time.monotonic() < deadline, f"pre-annotation did not finish: last status {status}"
        time.sleep(3)
    assert status.get("last_error") is None

    predicted: dict[int, str] = {}
    for prediction in ls_client.predictions.list(project=project.id):
        if prediction.model_version == version:
            (region,) = prediction.result
            predicted[prediction.task] = region["value"]["choices"][0]
    assert set(predicted) == set(gold)

    true_positive_share = sum(label == "positive" for label in gold.values()) / len(gold)
    predicted_positive_share = sum(label == "positive" for label in predicted.values()) / len(predicted)
    accuracy = np.mean([predicted[t] == gold[t] for t in gold])
    print(f"true positive share {true_positive_share:.3f}, predicted {predicted_positive_share:.3f}, "
          f"accuracy {accuracy:.3f}, model_version {version}")
    assert abs(predicted_positive_share - true_positive_share) <= TOLERANCE, (
        f"predicted {predicted_positive_share:.2f} positive, true {true_positive_share:.2f}"
    )
