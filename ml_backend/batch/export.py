"""`lsllm to-label-studio`: a labeled file as a Label Studio import, pre-annotated and queue-ordered.

Each row becomes a task (its columns as data, the text under the config's `$field`) with one
prediction: the result rebuilt from the file's label / entities columns, `score` = the row's
confidence (the calibrated probability the pre-annotation is right), the file's `model_version`,
and a `cluster` id (k-means on the encoder's embeddings). Tasks are listed least-likely-right
first; with the project's sampling set to "Uncertainty sampling" and its `model_version` set to
this one (`upload` does both), Label Studio's `/next` serves them in that order.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ml_backend.batch.engine import BatchError, TaskDefinition, tasks_of
from ml_backend.batch.files import Table
from ml_backend.clustering import cluster_ids
from ml_backend.ls_client import PREDICTION_EXTRAS
from ml_backend.offsets import OffsetUnit, span_value


def _regions(definition: TaskDefinition, row: dict[str, str], text: str, unit: OffsetUnit, number: int) -> list[dict]:
    regions: list[dict[str, Any]] = []
    for target in definition.choices_targets:
        cell = row.get(definition.label_column(target), "")
        chosen = [c.strip() for c in cell.split(",") if c.strip()] if target.multiple else ([cell] if cell else [])
        unknown = [c for c in chosen if c not in target.result_values]
        if unknown:
            raise BatchError(f"row {number}: label {unknown[0]!r} is not in the config ({', '.join(target.result_values)})")
        if chosen:
            regions.append({"from_name": target.from_name, "to_name": target.to_name, "type": "choices",
                            "value": {"choices": chosen}})
    for target in definition.span_targets:
        cell = row.get(definition.entities_column(target), "")
        try:
            entities = json.loads(cell) if cell else []
        except json.JSONDecodeError:
            raise BatchError(f"row {number}: the entities cell is not JSON (run `lsllm label` to make it)") from None
        for entity in entities:
            start, end = int(entity["start"]), int(entity["end"])
            if not (0 <= start < end <= len(text)):
                raise BatchError(f"row {number}: entity [{start}, {end}) is outside the text")
            regions.append({"from_name": target.from_name, "to_name": target.to_name, "type": "labels",
                            "value": span_value(text, start, end, [entity["label"]], unit=unit),
                            "score": float(entity.get("score", 0.0))})
    return regions


DETAIL_COLUMNS = ("confidence", "model_version", "llm_wrong_probability", "llm_label", "slm_label", "agreement")


def output_columns(definition: TaskDefinition) -> set[str]:
    """What `lsllm label` added: kept out of the tasks' data (the prediction carries it)."""
    return set(required_columns(definition)) | set(DETAIL_COLUMNS)


def required_columns(definition: TaskDefinition) -> list[str]:
    return ([definition.label_column(t) for t in definition.choices_targets]
            + [definition.entities_column(t) for t in definition.span_targets] + ["confidence", "model_version"])


def import_tasks(table: Table, text_column: str, definition: TaskDefinition, embeddings: np.ndarray | None,
                 *, unit: OffsetUnit) -> list[dict[str, Any]]:
    """Label Studio import items (`data` + `predictions`), sorted by ascending score."""
    for column in required_columns(definition):
        if column not in table.columns:
            raise BatchError(f"no column {column!r}: this file is not labeled yet; run `lsllm label` on it first")
    clusters = cluster_ids(embeddings) if embeddings is not None and len(embeddings) else None
    added = output_columns(definition) - {text_column}
    items = []
    for index, (task, row) in enumerate(zip(tasks_of(table, text_column, definition), table.rows)):
        text = row[text_column]
        data = {key: value for key, value in task["data"].items() if key not in added or key in definition.data_keys}
        prediction: dict[str, Any] = {
            "result": _regions(definition, row, text, unit, index + 1) if text.strip() else [],
            "score": float(row["confidence"]) if row["confidence"] else 0.0,
            "model_version": row["model_version"],
        }
        if clusters is not None:
            prediction["cluster"] = int(clusters[index])
        if row.get("llm_wrong_probability"):
            prediction["mislabeling"] = float(row["llm_wrong_probability"])
        items.append({"data": data, "predictions": [prediction]})
    items.sort(key=lambda item: item["predictions"][0]["score"])
    return items


def _data_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def upload(items: list[dict[str, Any]], *, url: str, token: str, project_id: int, timeout_s: float = 120.0) -> dict:
    """Import into a Label Studio project and order its queue by these scores (uncertainty
    sampling on this model version: Label Studio never sets `project.model_version` itself).

    Label Studio's import keeps a prediction's result, score and model_version but drops its
    `cluster` and `mislabeling` (verified on 1.23.2), so those are set afterwards on each stored
    prediction, found by its task's data."""
    import requests
    from label_studio_sdk.core.api_error import ApiError

    from ml_backend.ls_client import ProjectClient

    versions = sorted({p["model_version"] for item in items for p in item["predictions"] if p["model_version"]})
    client = ProjectClient(url.rstrip("/"), token, project_id, timeout_s=timeout_s)
    try:
        answer = requests.post(f"{client.url}/api/projects/{project_id}/import", json=items, timeout=timeout_s,
                               headers={"Authorization": f"Token {token}"}, params={"commit_to_project": "true"})
        answer.raise_for_status()
        imported = answer.json()
        extras = _set_prediction_extras(items, client)
        if versions:
            client.order_queue(versions[-1])
    except requests.HTTPError as exc:
        body = exc.response.text[:300] if exc.response is not None else ""
        raise BatchError(f"Label Studio refused the import: {exc} {body}".strip()) from None
    except ApiError as exc:
        raise BatchError(f"Label Studio refused an update after the import: {exc.status_code} {str(exc.body)[:300]}") from None
    except requests.RequestException as exc:
        raise BatchError(f"cannot reach Label Studio at {url}: {exc}") from None
    return {"task_count": imported.get("task_count"), "prediction_count": imported.get("prediction_count"),
            "model_version": versions[-1] if versions else None, "clusters_set": extras}


def _set_prediction_extras(items: list[dict[str, Any]], client) -> int:
    wanted: dict[str, dict[str, Any]] = {}
    for item in items:
        prediction = item["predictions"][0]
        extra = {k: prediction[k] for k in PREDICTION_EXTRAS if k in prediction}
        if extra:
            wanted[_data_key(item["data"])] = extra
    extras = {task.id: wanted[_data_key(task.data)] for task in client.tasks(page_size=500)
              if _data_key(task.data) in wanted}
    versions = {p["model_version"] for item in items for p in item["predictions"]}
    return sum(client.set_prediction_extras(extras, version) for version in versions) if extras else 0
