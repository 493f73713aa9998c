"""Load inside Label Studio's timeouts, and a burst of annotation webhooks coalesced into complete versions.

Against our backend under gunicorn (embedded model, in-process job runner: `make run`'s default) and a
real Label Studio 1.23.2 holding the projects and their annotations:

1. **Load.** `RELIABILITY_LOAD_SENDERS` senders each send `RELIABILITY_LOAD_REQUESTS` calls — annotation
   webhooks and /setup, as Label Studio sends them — while `RELIABILITY_LOAD_PREDICT_CALLERS` callers
   keep asking /predict for batches of 10 new texts and the project's background jobs run (its
   pre-annotation, started by its first /setup; the training the webhooks start). Every answer must be
   below 500 and inside Label Studio's timeout (webhook 1 s, /setup 3 s, /predict 100 s); latencies
   are figures, never asserted. `RELIABILITY_LOAD_PACE_S` (default 0: back to back, the server's
   capacity) makes each sender pause that long on average before each call, as annotators do.
2. **Burst.** `RELIABILITY_BURST_PROJECTS` projects of `RELIABILITY_BURST_TASKS` tasks, each task
   annotated by `RELIABILITY_BURST_ANNOTATORS` annotators; one ANNOTATION_CREATED webhook per annotation,
   all projects' webhooks at once from the same senders. Each project must get one training run, at
   most one follow-up (not one per webhook), and its serving version must have learned from every
   annotation Label Studio counts (the version's manifest against the project's
   `total_annotations_number`): the events are triggers, the job reads the truth from Label Studio.

`make test` runs a small size; `make soak` the issue's (50 senders, 5 × 200 webhooks) and writes the
figures to `RELIABILITY_LOAD_JSON`. The figures are printed at the end of every run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from ml_backend.ls_client import ProjectClient
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import preannotation_status, wait_for
from tests.integration.conftest import LS_TOKEN
from tests.reliability.load import (
    annotation_webhook,
    endpoint_figures,
    predict_call,
    run_load,
    setup_call,
    spread,
    table,
)

pytestmark = pytest.mark.integration


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


SENDERS = _env_int("RELIABILITY_LOAD_SENDERS", 10)
REQUESTS_PER_SENDER = _env_int("RELIABILITY_LOAD_REQUESTS", 20)
PREDICT_CALLERS = _env_int("RELIABILITY_LOAD_PREDICT_CALLERS", 2)
# Mean pause of a sender between two calls (s): 0 = back to back (capacity), e.g. 1 = an annotator's pace
PACE_S = float(os.environ.get("RELIABILITY_LOAD_PACE_S", "0"))
PREDICT_BATCH = 10
LOAD_TASKS = _env_int("RELIABILITY_LOAD_TASKS", 20)  # the load project; LOAD_ANNOTATED of them annotated
LOAD_ANNOTATED = 10
BURST_PROJECTS = _env_int("RELIABILITY_BURST_PROJECTS", 2)
BURST_TASKS = _env_int("RELIABILITY_BURST_TASKS", 10)
BURST_ANNOTATORS = _env_int("RELIABILITY_BURST_ANNOTATORS", 5)
LOAD_JSON = os.environ.get("RELIABILITY_LOAD_JSON")  # unset: print only
CONFIG = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
IDLE_TIMEOUT_S = 900  # a shared 2-core machine: every wait is bounded, generously

FIGURES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def load_figures(summary_lines):
    """Print (and with RELIABILITY_LOAD_JSON write) whatever the tests below measured."""
    yield FIGURES
    if not FIGURES:
        return
    for phase in ("load", "burst"):
        if phase in FIGURES:
            summary_lines.append(f"reliability {phase}: {FIGURES[phase]['describe']}")
            summary_lines.extend(table(FIGURES[phase]["endpoints"]))
    if "burst" in FIGURES:
        summary_lines.append("burst per project: " + json.dumps(FIGURES["burst"]["projects"]))
    if LOAD_JSON:
        payload = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **FIGURES}
        Path(LOAD_JSON).parent.mkdir(parents=True, exist_ok=True)
        Path(LOAD_JSON).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        summary_lines.append(f"load figures written to {LOAD_JSON}")


@pytest.fixture(scope="module")
def load_backend(tmp_path_factory, default_model_path, model_cache_dir, label_studio):
    """Our backend as `make run` starts it (one worker, its threads, the in-process job runner), told
    where Label Studio is; the SLM on the light MiniLM encoder, no demonstrations (the cold start is
    measured elsewhere)."""
    from tests.integration.services import backend_process

    env = {
        "MODEL_DIR": str(tmp_path_factory.mktemp("load_store")), "CACHE_DIR": str(model_cache_dir),
        "WORKERS": "1", "LLM_THREADS": os.environ.get("LLM_THREADS", "1"),
        "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "SLM_ENCODER": "minilm", "DEMONSTRATIONS": "0", "BIAS_CALIBRATION": "content_free",
    }
    log_path = tmp_path_factory.mktemp("load_backend") / "backend.log"
    with backend_process(env, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def sst2_rows() -> list[dict]:
    return load_jsonl(shared_path("data", "sst2", "train.jsonl"))


# --- Label Studio projects ----------------------------------------------------------------------------
def _choice(label: str) -> list[dict]:
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def create_project(label_studio: str, title: str, rows: list[dict], annotators_per_task: list[int]) -> dict:
    """A Label Studio project with one task per row, task i carrying annotators_per_task[i] annotations
    (the row's label; every seventh one the other label, so annotators sometimes disagree). Imported in
    one request; Label Studio sends us nothing (the backend is not connected in it)."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=label_studio, api_key=LS_TOKEN, timeout=300)
    project = client.projects.create(title=title, label_config=CONFIG)
    other = {"positive": "negative", "negative": "positive"}
    tasks = []
    for i, (row, annotators) in enumerate(zip(rows, annotators_per_task)):
        labels = [other[row["label"]] if (i + k) % 7 == 6 else row["label"] for k in range(annotators)]
        tasks.append({"data": {"text": row["text"]}, "annotations": [{"result": _choice(label)} for label in labels]})
    client.projects.import_tasks(id=project.id, request=tasks)
    records = list(ProjectClient(label_studio, LS_TOKEN, project.id).tasks(annotations=True))
    assert len(records) == len(rows), f"import of {title!r}: {len(records)} tasks of {len(rows)}"
    annotations = [(a["id"], task.id) for task in records for a in task.annotations]
    return {"id": project.id, "tasks": [task.id for task in records], "annotations": annotations}


def label_studio_annotations(label_studio: str, project_id: int) -> int:
    """Label Studio's own count of the project's annotations (what its webhooks send)."""
    answer = requests.get(f"{label_studio}/api/projects/{project_id}", timeout=60,
                          headers={"Authorization": f"Token {LS_TOKEN}"})
    answer.raise_for_status()
    return int(answer.json()["total_annotations_number"])


def connect(backend: str, label_studio: str, project_id: int) -> str:
    call = setup_call(project_id, CONFIG, label_studio, LS_TOKEN)
    answer = requests.post(f"{backend}{call.path}", json=call.body, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()["model_version"]


def _busy(status: dict) -> bool:
    training = status.get("training") or {}
    return bool(status.get("queued_job") or status.get("running_job")
                or training.get("queued_job") or training.get("running_job"))


def wait_idle(backend: str, project_ids: list[int], what: str) -> None:
    """No pre-annotation or training job queued or running for any of these projects."""
    for project_id in project_ids:
        wait_for(lambda: preannotation_status(backend, project_id), lambda s: not _busy(s),
                 timeout=IDLE_TIMEOUT_S, what=f"{what}: project {project_id} idle")


def training_runs(backend: str, project_id: int) -> int:
    return int((preannotation_status(backend, project_id).get("training") or {}).get("runs", 0))


def _assert_inside_timeouts(figures: dict) -> None:
    for path, f in figures.items():
        assert f["responses_5xx"] == 0 and f["no_answer"] == 0, (path, f)
        assert f["beyond_timeout"] == 0, (path, f)
        assert set(f["statuses"]) == {"200"}, (path, f)


# --- the tests ----------------------------------------------------------------------------------------
def test_webhooks_and_setup_answer_inside_label_studio_timeouts_under_load(
        load_backend, label_studio, sst2_rows):
    backend = load_backend
    rows = sst2_rows[:LOAD_TASKS]
    project = create_project(label_studio, "load", rows, [1] * LOAD_ANNOTATED + [0] * (LOAD_TASKS - LOAD_ANNOTATED))
    project_id, annotations = project["id"], project["annotations"]
    texts = [row["text"] for row in load_jsonl(shared_path("data", "sst2", "test.jsonl"))]

    def sender_calls(sender: int) -> list:
        calls = []
        for number in range(REQUESTS_PER_SENDER):
            if (sender + number) % 4 == 3:  # Label Studio calls /setup each time a project's stream opens
                calls.append(setup_call(project_id, CONFIG, label_studio, LS_TOKEN))
                continue
            annotation_id, task_id = annotations[(sender * REQUESTS_PER_SENDER + number) % len(annotations)]
            action = "ANNOTATION_CREATED" if number % 2 == 0 else "ANNOTATION_UPDATED"
            calls.append(annotation_webhook(action, project_id, annotation_id, task_id, len(annotations), CONFIG))
        return calls

    def predict_batch(caller: int):
        def make(number: int):
            first = ((number * PREDICT_CALLERS + caller) * PREDICT_BATCH) % max(1, len(texts) - PREDICT_BATCH)
            batch = [{"id": 10**9 + first + k, "data": {"text": texts[first + k]}} for k in range(PREDICT_BATCH)]
            return predict_call(project_id, CONFIG, batch)
        return make

    first_version = connect(backend, label_studio, project_id)  # starts the project's pre-annotation job
    result = run_load(backend, [sender_calls(i) for i in range(SENDERS)],
                      repeaters=[predict_batch(i) for i in range(PREDICT_CALLERS)],
                      watch=[f"/preannotate/status?project={project_id}"], pace_s=PACE_S, seed=20261202)
    figures = endpoint_figures(result.samples)
    jobs_seen = sorted({(body.get("state"), (body.get("training") or {}).get("state")) for _, _, body in result.watched},
                       key=str)
    FIGURES["load"] = {
        "describe": (f"{SENDERS} senders x {REQUESTS_PER_SENDER} calls (/webhook, /setup), "
                     f"{'back to back' if PACE_S <= 0 else f'a pause of {PACE_S:g} s on average before each'}, with {PREDICT_CALLERS} "
                     f"/predict callers ({PREDICT_BATCH} tasks a call), {result.wall_s:.1f} s; "
                     f"background jobs seen (pre-annotation, training): {jobs_seen}"),
        "senders": SENDERS, "requests_per_sender": REQUESTS_PER_SENDER, "pace_s": PACE_S,
        "predict_callers": PREDICT_CALLERS,
        "predict_batch": PREDICT_BATCH, "wall_s": round(result.wall_s, 1),
        "background_jobs_seen": [list(pair) for pair in jobs_seen], "endpoints": figures,
    }
    assert {"/webhook", "/setup", "/predict"} <= set(figures), figures
    _assert_inside_timeouts(figures)
    running = {"queued", "running"}
    assert any(pre in running or train in running for pre, train in jobs_seen), (
        f"no background job ran during the load: {jobs_seen}")
    assert requests.get(f"{backend}/health", timeout=10).json()["status"] == "UP"
    assert first_version


def test_a_burst_of_annotation_webhooks_trains_each_project_once_on_all_its_annotations(
        load_backend, label_studio, sst2_rows):
    backend = load_backend
    offset = LOAD_TASKS  # rows the load project did not use
    projects = []
    for number in range(BURST_PROJECTS):
        rows = sst2_rows[offset + number * BURST_TASKS: offset + (number + 1) * BURST_TASKS]
        projects.append(create_project(label_studio, f"burst {number + 1}", rows, [BURST_ANNOTATORS] * BURST_TASKS))
    ids = [p["id"] for p in projects]
    for project_id in ids:
        connect(backend, label_studio, project_id)
    wait_idle(backend, ids, "every project's first pre-annotation and the load test's jobs")
    runs_before = {project_id: training_runs(backend, project_id) for project_id in ids}

    events = [annotation_webhook("ANNOTATION_CREATED", p["id"], annotation_id, task_id, count, CONFIG)
              for p in projects for count, (annotation_id, task_id) in enumerate(p["annotations"], start=1)]
    result = run_load(backend, spread(events, SENDERS, seed=14))
    sent_at = time.monotonic()
    figures = endpoint_figures(result.samples)
    FIGURES["burst"] = {"describe": f"{len(events)} webhooks from {SENDERS} senders, {result.wall_s:.1f} s",
                        "projects": {}, "endpoints": figures}  # completed below, kept if an assert fails

    per_project = {}
    for project in projects:
        project_id = project["id"]
        status = wait_for(
            lambda: preannotation_status(backend, project_id).get("training") or {},
            lambda s: s.get("runs", 0) > runs_before[project_id] and s.get("state") in ("done", "skipped")
            and not s.get("queued_job") and not s.get("running_job"),
            timeout=IDLE_TIMEOUT_S, what=f"project {project_id}'s training after the burst")
        versions = requests.get(f"{backend}/versions", params={"project": project_id}, timeout=30).json()
        (serving,) = [v for v in versions["slm_versions"] if v.get("current")]
        per_project[project_id] = {
            "webhooks": len(project["annotations"]),
            "label_studio_annotations": label_studio_annotations(label_studio, project_id),
            "version_annotations": serving["counts"].get("annotations"),
            "version_annotations_total": serving["counts"].get("annotations_total"),
            "training_runs": status["runs"] - runs_before[project_id],
            "last_run": status.get("state"),
            "slm_version": serving["version"],
            "seconds_until_idle": round(time.monotonic() - sent_at, 1),
        }
    FIGURES["burst"] = {
        "describe": (f"{len(events)} ANNOTATION_CREATED webhooks for {BURST_PROJECTS} projects "
                     f"({BURST_TASKS} tasks x {BURST_ANNOTATORS} annotators each) from {SENDERS} senders, "
                     f"{result.wall_s:.1f} s; training runs per project: "
                     f"{[p['training_runs'] for p in per_project.values()]}"),
        "webhooks": len(events), "projects": per_project, "senders": SENDERS, "wall_s": round(result.wall_s, 1),
        "endpoints": figures,
    }
    for project_id, seen in per_project.items():  # a late answer is a lost webhook: training must not care
        assert 1 <= seen["training_runs"] <= 2, (project_id, seen)  # one run, at most one follow-up
        assert seen["label_studio_annotations"] == BURST_TASKS * BURST_ANNOTATORS, (project_id, seen)
        assert seen["version_annotations_total"] == seen["label_studio_annotations"], (project_id, seen)
        assert seen["version_annotations"] == seen["label_studio_annotations"], (project_id, seen)
    _assert_inside_timeouts(figures)
