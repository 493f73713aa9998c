"""Per-project status of background pre-annotation, readable by every process.

One record per project in the shared store (Redis or memory): state, tasks done / total,
rate, ETA, the model version being written, the last error. The job updates it after
every batch and logs the same numbers (`event=preannotate_progress ...`); `GET
/preannotate/status` and `python -m ml_backend.cli status` read it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields

from ml_backend.kv import KEY_PREFIX, KV

PROGRESS_INDEX = KEY_PREFIX + "progress:projects"  # set of project ids that have a record

# Job states a record moves through: queued → running → done | failed (retrying in between).
QUEUED, RUNNING, DONE, FAILED, RETRYING = "queued", "running", "done", "failed", "retrying"


@dataclass
class ProjectProgress:
    project_id: str
    state: str = QUEUED
    model_version: str | None = None
    phase: str | None = None  # "cold_start" (learning demonstrations and label bias first), then "predict"
    done: int = 0  # tasks given a prediction of model_version by this run (written to Label Studio)
    scored: int = 0  # tasks scored by this run (done + scored but not yet written)
    total: int = 0  # tasks this run has to predict (after skipping covered and labeled ones)
    skipped: int = 0  # tasks that already had model_version, or an annotation, or /predict answered them
    started_at: float | None = None  # unix seconds
    updated_at: float | None = None
    finished_at: float | None = None
    rate: float | None = None  # tasks per second (scoring + writing), this run
    eta_s: float | None = None
    job_id: str | None = None
    last_error: str | None = None
    runs: int = 0  # runs started for this project (retries and restarts included)

    def to_json(self) -> dict:
        return asdict(self)


def rate_and_eta(done: int, total: int, elapsed_s: float) -> tuple[float | None, float | None]:
    """Tasks per second so far and seconds left at that rate (None until something is done)."""
    if done <= 0 or elapsed_s <= 0:
        return None, None
    rate = done / elapsed_s
    return rate, max(0, total - done) / rate


class ProgressStore:
    def __init__(self, kv: KV) -> None:
        self.kv = kv

    @staticmethod
    def _key(project_id: str) -> str:
        return f"{KEY_PREFIX}progress:{project_id}"

    def get(self, project_id: str) -> ProjectProgress | None:
        raw = self.kv.get(self._key(project_id))
        if raw is None:
            return None
        known = {f.name for f in fields(ProjectProgress)}
        return ProjectProgress(**{k: v for k, v in json.loads(raw).items() if k in known})

    def save(self, progress: ProjectProgress) -> ProjectProgress:
        progress.updated_at = time.time()
        if progress.started_at is not None and progress.state == RUNNING:
            progress.rate, progress.eta_s = rate_and_eta(
                progress.done, progress.total, progress.updated_at - progress.started_at
            )
        self.kv.set(self._key(progress.project_id), json.dumps(progress.to_json()))
        self.kv.sadd(PROGRESS_INDEX, [progress.project_id])
        return progress

    def update(self, project_id: str, **changes) -> ProjectProgress:
        """Read-modify-write of one project's record (one writer at a time: the project's running job)."""
        progress = self.get(project_id) or ProjectProgress(project_id=project_id)
        for name, value in changes.items():
            setattr(progress, name, value)
        return self.save(progress)

    def all(self) -> list[ProjectProgress]:
        records = [self.get(project_id) for project_id in sorted(self.kv.smembers(PROGRESS_INDEX))]
        return [record for record in records if record is not None]
