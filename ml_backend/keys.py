"""Every key this service writes to Redis (or to the in-memory store), in one place.

All start with `KEY_PREFIX`, so one Redis database can be shared with other applications and
`redis-cli --scan --pattern 'lsllm:*'` lists exactly what this service holds. The rq queue's
own keys are rq's (`rq:*`).
"""

from __future__ import annotations

KEY_PREFIX = "lsllm:"


# --- the job runner (generic: a coalesce key names any job family) -------------------------------
def job_queued(coalesce_key: str) -> str:
    """The one queued job of a coalesce key (its id)."""
    return f"{KEY_PREFIX}queued:{coalesce_key}"


def job_running(coalesce_key: str) -> str:
    """The running job's lease (its id, with a TTL renewed by a heartbeat)."""
    return f"{KEY_PREFIX}running:{coalesce_key}"


# --- pre-annotation -------------------------------------------------------------------------------
def preannotate_request(project_key: str) -> str:
    """Set of task ids (or "*") asked for since the last job started."""
    return f"{KEY_PREFIX}preannotate:request:{project_key}"


def preannotate_active(project_key: str) -> str:
    """What the running job took over; a killed job's leftovers merge into the next one."""
    return f"{KEY_PREFIX}preannotate:active:{project_key}"


def progress(project_key: str) -> str:
    """A project's progress record (JSON)."""
    return f"{KEY_PREFIX}progress:{project_key}"


PROGRESS_INDEX = f"{KEY_PREFIX}progress:projects"  # set of project keys that have a record


def cached_predictions(project_key: str, model_version: str) -> str:
    """Hash task id → prediction scored by the job, served by /predict."""
    return f"{KEY_PREFIX}predictions:{project_key}:{model_version}"


def answered_by_predict(project_key: str, model_version: str) -> str:
    """Hash of task ids /predict answered (Label Studio stores those itself: the job skips them)."""
    return f"{KEY_PREFIX}answered:{project_key}:{model_version}"


# --- the learning loop --------------------------------------------------------------------------------
def llm_distributions(project_key: str, llm_version: str, from_name: str) -> str:
    """Hash task id → the LLM's label distribution for one target (kept for retraining)."""
    return f"{KEY_PREFIX}llm:{project_key}:{llm_version}:{from_name}"


def training_events(project_key: str) -> str:
    """Set of annotation events ("<action>:<annotation id>") since the last training run started."""
    return f"{KEY_PREFIX}train:events:{project_key}"


def training_active(project_key: str) -> str:
    """The events the running training job took over (a killed job's leftovers count for the next)."""
    return f"{KEY_PREFIX}train:active:{project_key}"


def training_status(project_key: str) -> str:
    """A project's training record (JSON): state, stage, progress, last version, last error."""
    return f"{KEY_PREFIX}train:status:{project_key}"


# Counters of finished jobs, one field "<kind>:<outcome>" each (`jobs.run_job` adds, `/metrics` reads):
# in Redis every web process and rq worker on any host counts into the same numbers.
JOB_OUTCOMES = f"{KEY_PREFIX}jobs:outcomes"
