"""The end-to-end test (`make e2e`, also part of `make test`): the whole loop on the stack a team runs.

`scripts/stack start` brings up Label Studio 1.23.2, redis-server, the backend under gunicorn and two
rq workers, exactly as a user without Docker starts them. Then, as a team would:

1. an English sentiment project and a Chinese NER project, both connected to the backend; their
   tasks get pre-annotations in the background (nobody presses "Retrieve predictions");
2. two annotators join through the invite link and label tasks in their own browser sessions;
   Label Studio's webhooks (counted on the backend's /metrics: one must arrive) start training;
3. the rq worker holding the training run is SIGKILLed while the old version keeps serving; the other
   worker trains (the follow-up run of the later webhooks, or the killed run's retry) and the killed
   run is retried to its end; the new version reaches every unlabeled task, `project.model_version`
   and `/next` (least-likely-right first), the report counts the reviewed tasks;
4. the NER project is untouched by all that (its version, its predictions), then learns from its own
   annotations and gets a new version, leaving the sentiment project as it was: no leak either way;
5. the threshold report as files and the queue re-applied from the command line;
6. team features on the trained project: two annotators pulling `/next` get different tasks,
   auto-accept + undo, a burst of 50 webhooks coalesced into one or two runs.

Every wait is bounded; a failing step prints its name and the last lines of every service's log.
Each step prints its duration (`-rP` shows them): the timings of the closing note. No timing
assertions: speed is measured in benchmarks/.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from typing import Iterator

import pytest
import requests

from ml_backend.auto_accept import AUTO_ACCEPT_EMAIL
from ml_backend.human_labels import is_automatic
from ml_backend.ls_client import ProjectClient
from ml_backend.versioning import llm_version
from scripts import stack
from tests.conftest import LABELING_CONFIGS, REPO_ROOT, load_jsonl, shared_path
from tests.integration.annotators import annotate, sign_up_annotator
from tests.integration.backend_status import is_finished, preannotation_status, versions_per_task, wait_for
from tests.integration.conftest import LS_TOKEN, free_port, require
from tests.integration.services import run_cli

pytestmark = pytest.mark.integration

N_TASKS = 40  # sentiment project
N_ANNOTATED = 12  # sentiment tasks labeled by the two annotators (4 of them by both)
N_NER_TASKS = 14
N_NER_ANNOTATED = 10  # = TRAIN_MIN_NEW_ANNOTATIONS: exactly enough to start the NER project's run
SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
NER_ZH = (LABELING_CONFIGS / "ner_zh.xml").read_text(encoding="utf-8")
SENTIMENT_LABELS = {"positive", "negative"}
NER_LABELS = {"name", "organization", "position", "company", "address", "game", "government", "scene",
              "movie", "book"}


# --- the stack, and steps that say where they stalled ------------------------------------------------
@pytest.fixture
def e2e_stack(tmp_path, model_cache_dir) -> Iterator[stack.StackConfig]:
    """`scripts/stack start` with two workers on free ports in a throw-away folder; `stop` afterwards."""
    require(shutil.which("redis-server") is not None, "redis-server not found: bash scripts/install.sh redis")
    require(stack.label_studio_binary().exists(), "Label Studio venv missing: make label-studio (or LS_VENV)")
    env = {
        **os.environ,
        "STACK_DIR": str(tmp_path / "stack"),
        "STACK_PYTHON": sys.executable,
        "STACK_LS_PORT": str(free_port()),
        "STACK_REDIS_PORT": str(free_port()),
        "PORT": str(free_port()),
        "STACK_WORKERS": "2",
        "CACHE_DIR": str(model_cache_dir),
        "LLM_THREADS": os.environ.get("LLM_THREADS", "1"),
        # Short leases so the killed worker's run is retried within seconds, not minutes.
        "JOB_LEASE_S": "4",
        "JOB_RETRY_BACKOFF_S": "1",
        "WORKER_HEARTBEAT_S": "2",
        "WORKER_MAINTENANCE_S": "5",
        "TRAIN_MIN_NEW_ANNOTATIONS": str(N_NER_ANNOTATED),
        "DEMONSTRATIONS": "0",  # the cold start is tested elsewhere; here it would only add a version
        # Round two (learned demonstrations) is evaluated by the training run on the 12 human labels.
        "LEARNED_DEMOS": "4",
        "LEARNED_DEMOS_MIN_LABELS": str(N_ANNOTATED),
        "BIAS_CALIBRATION": "content_free",
    }
    env.pop("MODEL_DIR", None)
    config = stack.StackConfig.from_env(env)
    started = time.monotonic()
    try:
        result = subprocess.run([str(REPO_ROOT / "scripts" / "stack"), "start"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"scripts/stack start failed:\n{result.stdout}\n{result.stderr}"
        print(f"e2e_step name='stack started' s={time.monotonic() - started:.1f}")
        yield config
    finally:
        subprocess.run([str(REPO_ROOT / "scripts" / "stack"), "stop"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=300)


def log_tails(config: stack.StackConfig, lines: int = 25) -> str:
    parts = []
    for path in sorted(config.logs.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(parts)


@contextlib.contextmanager
def step(config: stack.StackConfig, name: str) -> Iterator[None]:
    """One step of the story: its duration on success; its name and every service's log tail on failure."""
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"\n=== e2e failed at step: {name} (after {time.monotonic() - started:.0f} s) ===\n"
              f"{log_tails(config)}")
        raise
    print(f"e2e_step name={name!r} s={time.monotonic() - started:.1f}")


# --- reading the backend ------------------------------------------------------------------------------
def _training(backend_url: str, project_id: int) -> dict:
    return preannotation_status(backend_url, project_id).get("training") or {}


def _setup(backend_url: str, project_id: int, schema: str) -> str:
    return requests.post(f"{backend_url}/setup", json={"project": str(project_id), "schema": schema},
                         timeout=10).json()["model_version"]


def _webhooks_received(backend_url: str, action: str) -> float:
    """The backend's own count of webhook calls with this action (Prometheus /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{backend_url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "lsllm_webhook_events_total" and sample.labels.get("action") == action)


def _worker_running(redis_url: str, job_id: str) -> int | None:
    """The pid of the rq worker executing `job_id` (None if no worker holds it)."""
    import redis
    from rq import Worker

    for worker in Worker.all(connection=redis.Redis.from_url(redis_url)):
        if worker.get_current_job_id() == job_id:
            return worker.pid
    return None


def _job_status(config: stack.StackConfig, job_id: str) -> str:
    import redis
    from rq.job import Job

    return str(Job.fetch(job_id, connection=redis.Redis.from_url(config.redis_url)).get_status(refresh=True).value)


def _rq_idle(redis_url: str, queue_name: str) -> bool:
    """Nothing queued, scheduled (a retry) or started on the queue: every job, retries included, is over."""
    import redis
    from rq import Queue

    queue = Queue(queue_name, connection=redis.Redis.from_url(redis_url))
    return queue.count == 0 and queue.scheduled_job_registry.count == 0 and queue.started_job_registry.count == 0


def _labels_of(predictions: list) -> set[str]:
    """Every label a list of stored predictions names (choices or span labels)."""
    labels: set[str] = set()
    for prediction in predictions:
        for region in prediction.result or []:
            value = region.get("value", {})
            labels.update(value.get("choices", []) + value.get("labels", []))
    return labels


def _pre_annotated(config: stack.StackConfig, project_id: int, version: str, what: str) -> dict:
    return wait_for(lambda: preannotation_status(config.backend_url, project_id),
                    partial(is_finished, version=version), timeout=900, what=what)


# --- the story ------------------------------------------------------------------------------------------
def test_the_whole_loop_on_the_stack(e2e_stack, tmp_path):
    from label_studio_sdk import LabelStudio

    config = e2e_stack
    ls = config.ls_url
    backend = config.backend_url
    client = LabelStudio(base_url=ls, api_key=LS_TOKEN, timeout=300)
    rows = load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=N_TASKS)
    ner_rows = load_jsonl(shared_path("data", "cluener", "train.jsonl"), limit=N_NER_TASKS)

    with step(config, "first predictions on both projects (background job, no Retrieve predictions)"):
        project = client.projects.create(title="e2e sentiment (en)", label_config=SENTIMENT_EN)
        ner = client.projects.create(title="e2e NER (zh)", label_config=NER_ZH)
        for created in (project, ner):
            client.ml.create(url=backend, project=created.id, title="llm", is_interactive=False)
        client.projects.import_tasks(id=project.id, request=[{"text": row["text"]} for row in rows])
        client.projects.import_tasks(id=ner.id, request=[{"text": row["text"]} for row in ner_rows])
        first = _setup(backend, project.id, SENTIMENT_EN)
        ner_first = _setup(backend, ner.id, NER_ZH)
        _pre_annotated(config, project.id, first, "sentiment project pre-annotated")
        _pre_annotated(config, ner.id, ner_first, "NER project pre-annotated")
        task_ids = sorted(t.id for t in client.tasks.list(project=project.id))
        ner_ids = sorted(t.id for t in client.tasks.list(project=ner.id))
        ner_before = versions_per_task(client, ner.id)
        assert all(ner_before[t][ner_first] == 1 for t in ner_ids), ner_before
        assert _labels_of(client.predictions.list(project=project.id)) <= SENTIMENT_LABELS

    with step(config, "two annotators join and label; webhooks arrive"):
        annotators = [sign_up_annotator(ls, LS_TOKEN, f"annotator{i}-{project.id}@example.com", f"pw-{i}-annotator")
                      for i in (1, 2)]
        webhooks_before = _webhooks_received(backend, "ANNOTATION_CREATED")
        gold = {task_id: row["label"] for task_id, row in zip(task_ids, rows)}
        labeled = task_ids[:N_ANNOTATED]
        # Annotator 1 labels the first 8, annotator 2 the last 8: 4 tasks carry two annotations.
        shares = [(annotators[0], labeled[:8]), (annotators[1], labeled[4:])]
        for session, tasks in shares:
            for task_id in tasks:
                annotate(session, ls, task_id, [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                                  "value": {"choices": [gold[task_id]]}}])
        wait_for(lambda: _webhooks_received(backend, "ANNOTATION_CREATED") - webhooks_before,
                 lambda n: n >= 16, timeout=60, what="Label Studio's 16 ANNOTATION_CREATED webhooks")
        authors = {a["completed_by"] for t in ProjectClient(ls, LS_TOKEN, project.id).tasks(annotations=True)
                   for a in t.annotations}
        assert len(authors) == 2, authors

    with step(config, "webhook -> training; its worker SIGKILLed; the old version keeps serving"):
        running = wait_for(lambda: _training(backend, project.id),
                           lambda s: s.get("state") == "running" and s.get("stage") in ("llm", "embed", "fit"),
                           timeout=600, what="training started by the annotation webhooks", interval=0.2)
        pid = _worker_running(config.redis_url, running["job_id"])
        assert pid in stack.stack_pids(config).values(), (pid, stack.stack_pids(config))
        os.killpg(pid, signal.SIGKILL)  # no cleanup, no lease release: an OOM kill or a pulled plug
        assert _setup(backend, project.id, SENTIMENT_EN) == first
        answer = requests.post(f"{backend}/predict", timeout=100, json={
            "tasks": [{"id": 10**9, "data": {"text": "A wonderful, moving film."}}], "project": project.id})
        assert answer.status_code == 200 and answer.json()["model_version"] == first

    with step(config, "the surviving worker trains the new version"):
        trained = wait_for(lambda: _training(backend, project.id),
                           lambda s: s.get("state") == "done" and s.get("slm_version")
                           and s.get("human_labels") == N_ANNOTATED,
                           timeout=900, what="training retried by the surviving worker")
        assert trained["runs"] >= 2
        second = trained["model_version"]
        assert second != first and _setup(backend, project.id, SENTIMENT_EN) == second

    with step(config, "re-prediction of the project with the new version"):
        _pre_annotated(config, project.id, second, "the new version written to every unlabeled task")
        per_task = versions_per_task(client, project.id)
        unlabeled = [t for t in task_ids if t not in labeled]
        assert all(per_task[t][second] == 1 for t in unlabeled), per_task
        assert all(per_task.get(t, Counter())[second] == 0 for t in labeled)
        assert client.projects.get(id=project.id).model_version == second
        current = [p for p in client.predictions.list(project=project.id) if p.model_version == second]
        scores = [p.score for p in current]
        assert len(set(round(s, 6) for s in scores)) > 1  # a real, varying score, not a constant
        assert _labels_of(current) <= SENTIMENT_LABELS

    with step(config, "the queue: clusters, uncertainty sampling, Review queue view, /next, report"):
        assert all(isinstance(p.cluster, int) for p in current) and len({p.cluster for p in current}) > 1
        assert client.projects.get(id=project.id).sampling == "Uncertainty sampling"
        titles = [(v.data or {}).get("title") for v in client.views.list(project=project.id)]
        assert titles.count("Review queue") == 1
        served_next = requests.get(f"{ls}/api/projects/{project.id}/next", timeout=60,
                                   headers={"Authorization": f"Token {LS_TOKEN}"}).json()
        assert [p.score for p in current if p.task == served_next["id"]] == [pytest.approx(min(scores))]
        report = requests.get(f"{backend}/report", params={"project": project.id, "format": "json"},
                              timeout=120).json()
        assert report["reviewed"] == N_ANNOTATED and 0.0 <= report["accuracy"] <= 1.0
        (slm,) = requests.get(f"{backend}/versions", params={"project": project.id}, timeout=10).json()["slm_versions"]
        assert slm["current"] and slm["counts"]["human_labels"] == N_ANNOTATED
        assert "disagreement_rate" in slm["metrics"]
        # The annotators used both labels, so the SLM can learn each (`training.label_coverage`).
        assert slm["labels_out_of_reach"] == [] and slm["metrics"]["labels_out_of_reach"] == 0.0
        # Round two ran on the human-labeled tasks with the real LLM; its decision is the prompt served:
        # adopted → a new LLM prompt (and every task scored under it, checked above), else the same one.
        assert slm["metrics"]["learned_demos_evaluated"] == N_ANNOTATED
        adopted = slm["metrics"]["learned_demos_adopted"] == 1.0
        assert (llm_version(second) != llm_version(first)) == adopted, slm["metrics"]

    env = config.backend_env()  # the CLI on the stack: its Label Studio, Redis and model store
    with step(config, "the report as files and the queue re-applied from the command line"):
        written = run_cli(env, "report", "--project", str(project.id), "-o", str(tmp_path / "report"))
        assert written.returncode == 0, written.stderr[-3000:]
        assert "| threshold |" in written.stdout and "95.0% accuracy" in written.stdout
        table = (tmp_path / "report" / "thresholds.csv").read_text().splitlines()
        assert table[0].startswith("threshold") and len(table) > 2
        assert all((tmp_path / "report" / name).stat().st_size > 1000 for name in ("reliability.png", "coverage.png"))
        client.projects.update(id=project.id, sampling="Sequential sampling")  # someone changed it by hand
        refreshed = run_cli(env, "queue-refresh", "--project", str(project.id), "--here")
        assert refreshed.returncode == 0, refreshed.stderr[-3000:]
        assert client.projects.get(id=project.id).sampling == "Uncertainty sampling"
        assert versions_per_task(client, project.id) == per_task  # nothing predicted twice

    with step(config, "the NER project was left alone by the sentiment project's training"):
        assert _setup(backend, ner.id, NER_ZH) == ner_first
        assert versions_per_task(client, ner.id) == ner_before
        assert client.projects.get(id=ner.id).model_version in (None, "", ner_first)
        assert _training(backend, ner.id).get("runs", 0) == 0

    with step(config, "the NER project learns from its own annotations, the sentiment project stays"):
        labeled_ner = ner_ids[:N_NER_ANNOTATED]
        for number, (task_id, row) in enumerate(zip(labeled_ner, ner_rows)):
            spans = [{"from_name": "label", "to_name": "text", "type": "labels", "value": {
                "start": e["start"], "end": e["end"], "text": row["text"][e["start"]:e["end"]],
                "labels": [e["label"]]}} for e in row["entities"]]
            annotate(annotators[number % 2], ls, task_id, spans)
        ner_trained = wait_for(lambda: _training(backend, ner.id),
                               lambda s: s.get("state") == "done" and s.get("human_labels") == N_NER_ANNOTATED,
                               timeout=900, what="the NER project's training run")
        ner_second = ner_trained["model_version"]
        assert ner_second not in (ner_first, first, second)
        _pre_annotated(config, ner.id, ner_second, "the NER project's new version on its unlabeled tasks")
        ner_now = versions_per_task(client, ner.id)
        assert all(ner_now[t][ner_second] == 1 for t in ner_ids[N_NER_ANNOTATED:]), ner_now
        assert _labels_of(client.predictions.list(project=ner.id)) <= NER_LABELS
        assert _setup(backend, project.id, SENTIMENT_EN) == second
        assert versions_per_task(client, project.id) == per_task

    with step(config, "the killed worker's run is retried to its end: nothing lost, nothing twice"):
        wait_for(lambda: _rq_idle(config.redis_url, config.queue), bool, timeout=600, what="the queue drained")
        assert _job_status(config, running["job_id"]) == "finished"
        assert _setup(backend, project.id, SENTIMENT_EN) == second  # its retry found nothing new to learn
        assert versions_per_task(client, project.id) == per_task

    with step(config, "two annotators pulling /next get different tasks"):
        _two_annotators_get_different_tasks(ls, project.id, annotators, set(unlabeled))

    with step(config, "auto-accept above the median score, then undo"):
        _auto_accept_and_undo(env, backend, ls, project.id, second, scores, set(labeled))

    with step(config, "a burst of 50 webhooks: all answered, one or two training runs"):
        _burst_is_coalesced(config, project.id)


def _two_annotators_get_different_tasks(label_studio: str, project_id: int, sessions: list,
                                        unlabeled: set[int]) -> None:
    """The second annotator pulls /next while the first holds the task it got, and Label Studio's task
    lock gives it another one. (Two requests in the very same instant can both read the task before
    either lock is written on Label Studio's SQLite: seen once, so the pulls are one after the other.)"""
    pulled = [s.get(f"{label_studio}/api/projects/{project_id}/next", timeout=60).json() for s in sessions]
    ids = [task["id"] for task in pulled]
    assert ids[0] != ids[1] and set(ids) <= unlabeled, pulled


def _auto_accept_and_undo(env: dict, backend_url: str, label_studio: str, project_id: int, version: str,
                          scores: list[float], labeled: set[int]) -> None:
    """`cli auto-accept` above the median score writes marked annotations only where the current
    version's score reaches it, never on a human-labeled task; their webhooks start no training;
    `--undo` removes exactly them."""
    client = ProjectClient(label_studio, LS_TOKEN, project_id)
    runs_before = _training(backend_url, project_id).get("runs", 0)
    threshold = sorted(scores)[len(scores) // 2]
    done = run_cli(env, "auto-accept", "--project", str(project_id), "--threshold", f"{threshold:.6f}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    tasks = list(client.tasks(annotations=True))
    bot = client.ensure_user(AUTO_ACCEPT_EMAIL)
    automatic = {t.id: [a for a in t.annotations if is_automatic(a)] for t in tasks}
    automatic = {task_id: found for task_id, found in automatic.items() if found}
    assert summary["accepted"] == len(automatic) > 0, summary
    for task in tasks:
        if task.id not in automatic:
            continue
        (annotation,) = task.annotations  # alone on its task: never beside a human annotation
        assert task.id not in labeled and annotation["completed_by"] == bot
        (shown,) = [p for p in task.predictions if p["model_version"] == version]
        assert shown["score"] >= threshold and annotation["result"] == shown["result"]
        assert annotation["parent_prediction"] == shown["id"]
    time.sleep(3)  # Label Studio has sent their ANNOTATION_CREATED webhooks by now (synchronously)
    training = _training(backend_url, project_id)
    assert training.get("runs", 0) == runs_before and training.get("state") not in ("queued", "running")

    undone = run_cli(env, "auto-accept", "--project", str(project_id), "--undo")
    assert undone.returncode == 0, undone.stderr[-3000:]
    after = list(client.tasks(annotations=True))
    assert not any(is_automatic(a) for t in after for a in t.annotations)
    assert sorted(t.id for t in after if t.annotations) == sorted(labeled)


def _burst_is_coalesced(config: stack.StackConfig, project_id: int) -> None:
    """50 concurrent annotation webhooks: every one answered 200, one or two runs (not 50). First
    every earlier job must be over (the killed run's retry may still be scheduled)."""
    backend_url = config.backend_url
    wait_for(lambda: _rq_idle(config.redis_url, config.queue), bool, timeout=600, what="the queue drained")
    runs_before = _training(backend_url, project_id)["runs"]
    project_body = {"id": project_id, "total_annotations_number": N_ANNOTATED}

    def send(i: int) -> int:
        body = {"action": "ANNOTATION_UPDATED", "annotation": {"id": 10_000 + i}, "project": project_body}
        return requests.post(f"{backend_url}/webhook", json=body, timeout=5).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(send, range(50)))
    assert codes == [200] * 50
    after = wait_for(lambda: _training(backend_url, project_id),
                     lambda s: s.get("state") in ("done", "skipped") and not s.get("queued_job")
                     and not s.get("running_job") and s.get("runs", 0) > runs_before,
                     timeout=600, what="the burst's training runs")
    assert 1 <= after["runs"] - runs_before <= 2
