"""The LLM's label distributions, kept per (project, LLM prompt version, target) for retraining.

Why: a training run needs the LLM's *whole* distribution of every task (the SLM learns from it,
the blend weighs it), and the LLM is the expensive part (a second or so per task on a CPU).
Whatever scores a task — the pre-annotation job, `/predict`, the training job itself — records
the distribution here, so a retrain never runs the LLM again for a task it already scored.
The key holds the LLM prompt version (`versioning.llm_version`: everything that changes the
LLM's output, without the retraining counter), so a new prompt or config starts afresh. Each
entry carries a hash of the task's text: an edited task is scored again, never served stale.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import numpy as np

from ml_backend import keys
from ml_backend.kv import KV


def text_tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class LLMDistributionCache:
    def __init__(self, kv: KV, *, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    def put(self, project_key: str, llm_version: str, from_name: str,
            rows: Iterable[tuple[int, str, np.ndarray]]) -> None:
        """rows: (task id, task text, distribution over the target's labels)."""
        mapping = {
            str(task_id): json.dumps({"t": text_tag(text), "p": [round(float(v), 7) for v in probabilities]})
            for task_id, text, probabilities in rows
        }
        if mapping:
            self.kv.hset(keys.llm_distributions(project_key, llm_version, from_name), mapping, ttl_s=self.ttl_s)

    def get_many(self, project_key: str, llm_version: str, from_name: str,
                 tasks: Iterable[tuple[int, str]]) -> dict[int, np.ndarray]:
        """Distributions of the tasks (id, text) recorded for this text; missing ones are absent."""
        wanted = {int(task_id): text for task_id, text in tasks}
        found = self.kv.hget_many(keys.llm_distributions(project_key, llm_version, from_name), [str(t) for t in wanted])
        out = {}
        for task_id, raw in found.items():
            entry = json.loads(raw)
            if entry.get("t") == text_tag(wanted[int(task_id)]):
                out[int(task_id)] = np.asarray(entry["p"], dtype=np.float64)
        return out
