"""The learning loop against the real thing: Label Studio 1.23.2 sending its own webhooks, Redis,
two rq workers (one SIGKILLed mid-training), the default LLM and EmbeddingGemma.

Annotations made through Label Studio's API reach the backend as webhooks; a training run starts,
its worker is killed, another worker retries it while the old version keeps serving; the new
version then appears on every unlabeled task and as `project.model_version`. No timing
assertions: speed is measured in benchmarks/.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter
from functools import partial

import pytest
import requests

from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import is_finished, preannotation_status, versions_per_task, wait_for
from tests.integration.conftest import LS_TOKEN
from ml_backend.auto_accept import AUTO_ACCEPT_EMAIL
from ml_backend.human_labels import is_automatic
from ml_backend.ls_client import ProjectClient
from tests.integration.annotators import sign_up_annotator
from tests.integration.services import backend_process, kill_hard, run_cli, start_worker

pytestmark = pytest.mark.integration

N_TASKS = 40
N_ANNOTATED = 12
SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")


def _training(backend_url: str, project_id: int) -> dict:
    return preannotation_status(backend_url, project_id).get("training") or {}


def _worker_running(redis_url: str, job_id: str) -> int | None:
    """The pid of the rq worker executing `job_id` (None if no worker holds it)."""
    import redis
    from rq import Worker

    for worker in Worker.all(connection=redis.Redis.from_url(redis_url)):
        if worker.get_current_job_id() == job_id:
            return worker.pid
    return None


def _rq_idle(redis_url: str, queue_name: str) -> bool:
    """Nothing queued, scheduled (a retry) or started on the queue: every job, retries included, is over."""
    import redis
    from rq import Queue

    queue = Queue(queue_name, connection=redis.Redis.from_url(redis_url))
    return queue.count == 0 and queue.scheduled_job_registry.count == 0 and queue.started_job_registry.count == 0


def _setup(backend_url: str, project_id: int) -> str:
    return requests.post(f"{backend_url}/setup", json={"project": str(project_id), "schema": SENTIMENT_EN},
                         timeout=10).json()["model_version"]


def test_annotations_train_a_version_that_survives_a_killed_worker_and_reaches_every_task(
    ls_client, label_studio, redis_url, tmp_path, model_cache_dir
):
    env = {
        "MODEL_DIR": str(tmp_path / "store"),
        "CACHE_DIR": str(model_cache_dir),
        "REDIS_URL": redis_url,
        "LABEL_STUDIO_URL": label_studio,
        "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "RQ_QUEUE": f"train-test-{int(time.time())}",
        "JOB_LEASE_S": "4",
        "JOB_RETRY_BACKOFF_S": "1",
        "WORKER_HEARTBEAT_S": "2",
        "WORKER_MAINTENANCE_S": "5",
        "TRAIN_MIN_NEW_ANNOTATIONS": "10",
        "DEMONSTRATIONS": "0",  # the cold start is tested elsewhere; here it would only add a version
        "BIAS_CALIBRATION": "content_free",
    }
    rows = load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=N_TASKS)
    workers = [start_worker(env, tmp_path / f"worker-{i}.log") for i in (1, 2)]
    try:
        with backend_process(env, tmp_path / "backend.log") as backend_url:
            project = ls_client.projects.create(title="training loop", label_config=SENTIMENT_EN)
            ls_client.ml.create(url=backend_url, project=project.id, title="llm", is_interactive=False)
            ls_client.projects.import_tasks(id=project.id, request=[{"text": row["text"]} for row in rows])
            first = _setup(backend_url, project.id)
            wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=first),
                     timeout=900, what="first pre-annotation")
            task_ids = sorted(t.id for t in ls_client.tasks.list(project=project.id))
            gold = {task_id: row["label"] for task_id, row in zip(task_ids, rows)}

            # Annotators label tasks in Label Studio; its webhooks (not the test) tell the backend.
            labeled = task_ids[:N_ANNOTATED]
            for task_id in labeled:
                ls_client.annotations.create(id=task_id, result=[{
                    "from_name": "sentiment", "to_name": "text", "type": "choices",
                    "value": {"choices": [gold[task_id]]}}])

            running = wait_for(lambda: _training(backend_url, project.id),
                               lambda s: s.get("state") == "running" and s.get("stage") in ("llm", "embed", "fit"),
                               timeout=600, what="training started by annotation webhooks", interval=0.2)
            pid = _worker_running(redis_url, running["job_id"])
            victim = next(w for w in workers if w.pid == pid)
            kill_hard(victim)
            # The old version serves while the run is retried by the other worker.
            assert _setup(backend_url, project.id) == first
            answer = requests.post(f"{backend_url}/predict", timeout=100, json={
                "tasks": [{"id": 10**9, "data": {"text": "A wonderful, moving film."}}], "project": project.id})
            assert answer.json()["model_version"] == first

            trained = wait_for(lambda: _training(backend_url, project.id),
                               lambda s: s.get("state") == "done" and s.get("slm_version"),
                               timeout=900, what="training retried by the surviving worker")
            assert trained["runs"] >= 2 and trained["human_labels"] == N_ANNOTATED
            second = trained["model_version"]
            assert second != first and _setup(backend_url, project.id) == second
            wait_for(lambda: preannotation_status(backend_url, project.id), partial(is_finished, version=second),
                     timeout=900, what="the new version written to every unlabeled task")

            per_task = versions_per_task(ls_client, project.id)
            unlabeled = [t for t in task_ids if t not in labeled]
            assert all(per_task[t][second] == 1 for t in unlabeled), per_task
            assert all(per_task.get(t, Counter())[second] == 0 for t in labeled)
            assert ls_client.projects.get(id=project.id).model_version == second
            scores = [p.score for p in ls_client.predictions.list(project=project.id) if p.model_version == second]
            assert len(set(round(s, 6) for s in scores)) > 1  # a real, varying score, not a constant

            # The queue: clusters on the stored predictions (PATCHed: Label Studio's import drops
            # them), uncertainty sampling on the new version, one "Review queue" view for two versions,
            # and /next serving the least-likely-right unlabeled task first.
            current = [p for p in ls_client.predictions.list(project=project.id) if p.model_version == second]
            assert all(isinstance(p.cluster, int) for p in current) and len({p.cluster for p in current}) > 1
            assert ls_client.projects.get(id=project.id).sampling == "Uncertainty sampling"
            titles = [(v.data or {}).get("title") for v in ls_client.views.list(project=project.id)]
            assert titles.count("Review queue") == 1
            served_next = requests.get(f"{label_studio}/api/projects/{project.id}/next", timeout=60,
                                       headers={"Authorization": f"Token {LS_TOKEN}"}).json()
            assert [p.score for p in current if p.task == served_next["id"]] == [pytest.approx(min(scores))]
            report = requests.get(f"{backend_url}/report", params={"project": project.id, "format": "json"},
                                  timeout=120).json()
            assert report["reviewed"] == N_ANNOTATED and 0.0 <= report["accuracy"] <= 1.0

            _two_annotators_get_different_tasks(label_studio, project.id, set(unlabeled))
            _auto_accept_and_undo(env, backend_url, label_studio, project.id, second, scores, set(labeled))

            versions = requests.get(f"{backend_url}/versions", params={"project": project.id}, timeout=10).json()
            (slm,) = versions["slm_versions"]
            assert slm["current"] and slm["counts"]["human_labels"] == N_ANNOTATED
            assert "disagreement_rate" in slm["metrics"]
            served = requests.post(f"{backend_url}/predict", timeout=100, json={
                "tasks": [{"id": 10**9 + 1, "data": {"text": "Dull, lifeless and far too long."}}],
                "project": project.id}).json()
            assert served["model_version"] == second and "mislabeling" in served["results"][0]

            # A burst of 50 concurrent annotation webhooks: all answered, one or two runs. First let
            # every earlier job finish (the killed run's retry may still be scheduled).
            wait_for(lambda: _rq_idle(redis_url, env["RQ_QUEUE"]), bool, timeout=600, what="the queue drained")
            runs_before = _training(backend_url, project.id)["runs"]
            project_body = {"id": project.id, "total_annotations_number": N_ANNOTATED}

            def send(i: int) -> int:
                body = {"action": "ANNOTATION_UPDATED", "annotation": {"id": 10_000 + i}, "project": project_body}
                return requests.post(f"{backend_url}/webhook", json=body, timeout=5).status_code

            with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
                codes = list(pool.map(send, range(50)))
            assert codes == [200] * 50
            after = wait_for(lambda: _training(backend_url, project.id),
                             lambda s: s.get("state") in ("done", "skipped") and not s.get("queued_job")
                             and not s.get("running_job") and s.get("runs", 0) > runs_before,
                             timeout=600, what="the burst's training runs")
            assert 1 <= after["runs"] - runs_before <= 2
    finally:
        for worker in workers:
            kill_hard(worker)


def _two_annotators_get_different_tasks(label_studio: str, project_id: int, unlabeled: set[int]) -> None:
    """Two annotators who joined through the invite link work at the same time: the second pulls
    /next while the first holds the task it got, and Label Studio's task lock gives it another one.
    (Two requests in the very same instant can both read the task before either lock is written on
    Label Studio's SQLite: seen once here, so the pulls are one after the other.)"""
    sessions = [sign_up_annotator(label_studio, LS_TOKEN, f"annotator{i}-{project_id}@example.com", f"pw-{i}-annotator")
                for i in (1, 2)]
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
