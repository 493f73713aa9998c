"""Reconciliation against real processes (issue 14, items 3 and 4).

1. The embedded in-process runner (no Redis): the gunicorn backend is SIGKILLed mid
   pre-annotation and started again; nobody calls /setup, yet every task gets its prediction,
   none twice (the start-up sweep, `ml_backend.reconcile`).
2. Redis down during a burst of annotation webhooks: each answers 200 ("deferred"), and when
   Redis is back the sweep replays them: one training run is queued with every event, and the
   version an rq worker trains from it has learned every annotation made during the outage.

No timing assertions: the latencies and the resumption time are printed as figures (README,
"Reliability"). Sizes: RECONCILE_TEST_TASKS (60) and REDIS_OUTAGE_S (5); `make soak` raises them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest
import requests

from scripts import stack
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.backend_status import preannotation_status, versions_per_task, wait_for
from tests.integration.conftest import LS_TOKEN, free_port, require, stop, wait_until
from tests.integration.services import backend_process, kill_hard, start_backend, start_worker

pytestmark = pytest.mark.integration

N_TASKS = int(os.environ.get("RECONCILE_TEST_TASKS", "60"))
OUTAGE_S = float(os.environ.get("REDIS_OUTAGE_S", "5"))
N_WEBHOOKS = int(os.environ.get("REDIS_OUTAGE_WEBHOOKS", "20"))
SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
NO_COLD_START = {"DEMONSTRATIONS": "0", "BIAS_CALIBRATION": "content_free"}


def _texts(n: int) -> list[str]:
    return [row["text"] for row in load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=n)]


def _figure(name: str, **values) -> None:
    print(f"figure {name} " + json.dumps(values, sort_keys=True))


def test_a_backend_killed_mid_preannotation_resumes_by_itself_after_a_restart(
    ls_client, label_studio, tmp_path, model_cache_dir
):
    env = {
        "MODEL_DIR": str(tmp_path / "store"), "CACHE_DIR": str(model_cache_dir), "REDIS_URL": "",
        "PREANNOTATE_SCORE_BATCH": "4", "PREANNOTATE_WRITE_BATCH": "4", "RECONCILE_INTERVAL_S": "5",
        **NO_COLD_START,
    }
    process, url = start_backend(env, tmp_path / "backend-1.log")
    try:
        project = ls_client.projects.create(title="killed mid-job", label_config=SENTIMENT_EN)
        ls_client.ml.create(url=url, project=project.id, title="llm", is_interactive=False)  # → /setup
        ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_TASKS)])
        running = wait_for(lambda: preannotation_status(url, project.id),
                           lambda s: s.get("phase") == "predict" and N_TASKS // 4 <= s.get("done", 0) < N_TASKS,
                           timeout=600, interval=0.2, what="the job a quarter done")
        version = running["model_version"]
    finally:
        kill_hard(process)  # SIGKILL: the in-memory queue and progress die with it
    task_ids = [t.id for t in ls_client.tasks.list(project=project.id)]
    before = versions_per_task(ls_client, project.id)
    stored_at_kill = sum(1 for t in task_ids if before.get(t, Counter())[version])
    assert 0 < stored_at_kill < N_TASKS

    started = time.monotonic()
    with backend_process(env, tmp_path / "backend-2.log"):  # a new port: Label Studio is not told, no /setup
        after = wait_for(lambda: versions_per_task(ls_client, project.id),
                         lambda per_task: all(per_task.get(t, Counter())[version] for t in task_ids),
                         timeout=600, what="every task predicted after the restart")
        resumed_s = time.monotonic() - started
    missing = [t for t in task_ids if after.get(t, Counter())[version] == 0]
    duplicated = [t for t in task_ids if after.get(t, Counter())[version] > 1]
    _figure("restart_resumption", tasks=N_TASKS, stored_at_kill=stored_at_kill, missing=len(missing),
            duplicated=len(duplicated), seconds_from_restart=round(resumed_s, 1))
    assert not missing and not duplicated


# --- Redis down -------------------------------------------------------------------------------------------------
class RedisServer:
    """A redis-server of this test only (the session's one serves other tests): stop and start it
    again on the same port, empty (no persistence, as `tests/integration/conftest.redis_url`)."""

    def __init__(self, tmp_path) -> None:
        binary = shutil.which("redis-server")
        require(binary is not None, "redis-server not found: apt-get install redis-server (.ci/run does)")
        self.binary, self.port, self.workdir = binary, free_port(), tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(stack.redis_argv(self.binary, self.port, self.workdir),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url).ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_until(answers, timeout=20, what="redis-server", process=self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def test_webhooks_while_redis_is_down_answer_200_and_are_reconciled_when_it_returns(
    ls_client, label_studio, tmp_path, model_cache_dir
):
    import redis

    server = RedisServer(tmp_path)
    server.start()
    worker = None
    env = {
        "MODEL_DIR": str(tmp_path / "store"), "CACHE_DIR": str(model_cache_dir), "REDIS_URL": server.url,
        "RQ_QUEUE": f"outage-{time.time_ns()}", "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "PREANNOTATE_AUTO": "false", "TRAIN_MIN_NEW_ANNOTATIONS": "5", "RECONCILE_INTERVAL_S": "2",
        **NO_COLD_START,
    }
    try:
        with backend_process(env, tmp_path / "backend.log") as url:
            project = ls_client.projects.create(title="redis outage", label_config=SENTIMENT_EN)
            ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in _texts(N_WEBHOOKS)])
            key = f"{project.id}.{int(project.created_at.timestamp())}"
            assert requests.post(f"{url}/setup", json={"project": key, "schema": SENTIMENT_EN},
                                 timeout=10).status_code == 200
            task_ids = [t.id for t in ls_client.tasks.list(project=project.id)]

            server.kill()
            down_at = time.monotonic()
            latencies, answers, created = [], [], []
            for n, task_id in enumerate(task_ids, start=1):
                annotation = ls_client.annotations.create(id=task_id, result=[{
                    "from_name": "sentiment", "to_name": "text", "type": "choices",
                    "value": {"choices": ["positive" if n % 2 else "negative"]}}])
                created.append(annotation.id)
                sent = time.perf_counter()  # what Label Studio sends (its project object carries the count)
                response = requests.post(f"{url}/webhook", timeout=10, json={
                    "action": "ANNOTATION_CREATED", "annotation": {"id": annotation.id}, "task": {"id": task_id},
                    "project": {"id": project.id, "created_at": project.created_at.isoformat(),
                                "total_annotations_number": n}})
                latencies.append(time.perf_counter() - sent)
                answers.append((response.status_code, response.json()))
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            back_at = time.monotonic()  # from the restart of redis-server (it answers within a second)
            server.start()

            store = redis.Redis.from_url(server.url, decode_responses=True)
            events_key = f"lsllm:train:events:{key}"
            wait_for(lambda: store.smembers(events_key) | store.smembers(f"lsllm:train:active:{key}"),
                     lambda events: len(events) >= len(created), timeout=120, interval=0.2,
                     what="the deferred webhooks replayed")
            reconciled_s = time.monotonic() - back_at
            training = wait_for(lambda: preannotation_status(url, project.id)["training"],
                                lambda t: t.get("queued_job") or t.get("running_job"), timeout=60,
                                what="a training run queued")
            recorded = {e.split(":", 1)[1] for e in store.smembers(events_key)}
            queued_runs = [job for job in store.lrange(f"rq:queue:{env['RQ_QUEUE']}", 0, -1)]

            # An rq worker takes the run: the version it trains reads the annotations from Label Studio.
            worker = start_worker(env, tmp_path / "worker.log")
            versions = wait_for(lambda: requests.get(f"{url}/versions", params={"project": key}, timeout=10).json(),
                                lambda v: any(s.get("current") for s in v["slm_versions"]), timeout=600,
                                what="the version trained after the outage")
            (trained,) = [s for s in versions["slm_versions"] if s.get("current")]
    finally:
        if worker is not None:
            kill_hard(worker)
        server.kill()

    latencies.sort()
    missing = [a for a in created if str(a) not in recorded]
    missing_from_version = len(created) - trained["counts"]["annotations_total"]
    _figure("redis_outage", webhooks=len(answers), outage_s=OUTAGE_S,
            statuses=dict(Counter(status for status, _ in answers)),
            p50_ms=round(1000 * latencies[len(latencies) // 2], 1), max_ms=round(1000 * latencies[-1], 1),
            seconds_to_reconcile=round(reconciled_s, 1), annotations_missing_from_events=len(missing),
            annotations_missing_from_trained_version=missing_from_version,
            training_runs_queued=len(queued_runs))
    assert {status for status, _ in answers} == {200}
    assert all(body["status"] == "deferred" and body["queued"] is False for _, body in answers)
    assert not missing  # every annotation made during the outage is in the run's events
    assert training["pending_events"] >= len(created)
    assert len(queued_runs) == 1  # several sweeps and the replay: one run
    assert missing_from_version == 0 and trained["counts"]["human_labels"] == len(created)
