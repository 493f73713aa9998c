"""Predictions the job computed, kept for `/predict`, and the tasks `/predict` answered.

Two records per (project, model_version), in the shared store:

* `predictions`: task id → the prediction JSON the job scored. `/predict` serves these
  instantly (a task the job scored but has not written yet, or one Label Studio asks for
  while the write is in flight).
* `answered`: task ids `/predict` returned a real prediction for. Label Studio stores what
  `/predict` returns, so the job must not write those tasks again under the same version
  (that would be a duplicate). The job checks this right before each write.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ml_backend import keys
from ml_backend.kv import KV

# Label Studio stores a /predict answer right after it arrives; the mark only has to outlive the
# job's next write. Short, so a task whose answer Label Studio did not store (a direct call, an
# interactive pre-annotation) is predicted by a later run.
ANSWERED_TTL_S = 300


class PredictionCache:
    def __init__(self, kv: KV, *, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s


    def put(self, project_id: str, model_version: str, predictions: dict[int, dict[str, Any]]) -> None:
        mapping = {str(task_id): json.dumps(p, ensure_ascii=False) for task_id, p in predictions.items()}
        self.kv.hset(keys.cached_predictions(project_id, model_version), mapping, ttl_s=self.ttl_s)

    def get_many(self, project_id: str, model_version: str, task_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        found = self.kv.hget_many(keys.cached_predictions(project_id, model_version), [str(t) for t in task_ids])
        return {int(task_id): json.loads(raw) for task_id, raw in found.items()}

    def mark_answered(self, project_id: str, model_version: str, task_ids: Iterable[int]) -> None:
        key = keys.answered_by_predict(project_id, model_version)
        self.kv.hset(key, {str(t): "1" for t in task_ids}, ttl_s=ANSWERED_TTL_S)

    def answered(self, project_id: str, model_version: str, task_ids: Iterable[int]) -> set[int]:
        found = self.kv.hget_many(keys.answered_by_predict(project_id, model_version), [str(t) for t in task_ids])
        return {int(task_id) for task_id in found}
