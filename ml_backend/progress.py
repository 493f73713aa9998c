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
from datetime import datetime, timezone

from ml_backend import keys
from ml_backend.kv import KV

PROGRESS_INDEX = keys.PROGRESS_INDEX

# Job states a record moves through: queued → running → done | failed (a retry runs again);
# "rejected": the project's labeling config was refused (see last_error), no job can run.
QUEUED, RUNNING, DONE, FAILED, REJECTED = "queued", "running", "done", "failed", "rejected"
TIMESTAMP_FIELDS = ("started_at", "updated_at", "finished_at")


@dataclass
class ProjectProgress:
    project_id: str
    state: str = QUEUED
    model_version: str | None = None
    # "first_page" (zero-shot predictions for the first tasks), "cold_start" (learning
    # demonstrations and the label bias), then "predict"; done/total/rate/eta count the phase
    phase: str | None = None
    stage: str | None = None  # within the cold start: which pass over which tasks
    done: int = 0  # predict: tasks given a prediction of model_version (written); cold start: tasks scored
    scored: int = 0  # tasks scored by this run (done + scored but not yet written)
    total: int = 0  # tasks this phase has to do (predict: after skipping covered and labeled ones)
    skipped: int = 0  # tasks that already had model_version, or an annotation, or /predict answered them
    started_at: float | None = None  # unix seconds
    updated_at: float | None = None
    finished_at: float | None = None
    rate: float | None = None  # tasks per second (scoring + writing), this run
    eta_s: float | None = None
    job_id: str | None = None
    last_error: str | None = None
    runs: int = 0  # runs started for this project (retries and restarts included)
    # The last run that stored predictions: a later run with nothing to do must not hide it.
    last_write: dict | None = None  # {"job_id", "model_version", "written", "finished_at"}

    def to_json(self) -> dict:
        """What the status endpoint shows: timestamps as ISO 8601 (UTC), seconds precision."""
        shown = asdict(self)
        for name in TIMESTAMP_FIELDS:
            shown[name] = iso_time(shown[name])
        if self.last_write:
            shown["last_write"] = {**self.last_write, "finished_at": iso_time(self.last_write.get("finished_at"))}
        return shown


def iso_time(unix_seconds: float | None) -> str | None:
    if unix_seconds is None:
        return None
    return datetime.fromtimestamp(unix_seconds, timezone.utc).isoformat(timespec="seconds")


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
        return keys.progress(project_id)

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
        self.kv.set(self._key(progress.project_id), json.dumps(asdict(progress)))
        self.kv.sadd(PROGRESS_INDEX, [progress.project_id])
        return progress

    def update(self, project_id: str, **changes) -> ProjectProgress:
        """Read-modify-write of one project's record (one writer at a time: the project's running job)."""
        progress = self.get(project_id) or ProjectProgress(project_id=project_id)
        for name, value in changes.items():
            setattr(progress, name, value)
        return self.save(progress)

    def remember_last_write(self, progress: ProjectProgress, written: int) -> ProjectProgress:
        return self.update(
            progress.project_id,
            last_write={
                "job_id": progress.job_id,
                "model_version": progress.model_version,
                "written": written,
                "finished_at": progress.finished_at,
            },
        )

    def all(self) -> list[ProjectProgress]:
        records = [self.get(project_id) for project_id in sorted(self.kv.smembers(PROGRESS_INDEX))]
        return [record for record in records if record is not None]
