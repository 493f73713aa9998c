"""`/metrics` from a real gunicorn with two workers: the counts of every worker add up in one scrape.

Each worker writes its values to PROMETHEUS_MULTIPROC_DIR (gunicorn_conf empties and exports it);
whichever worker answers the scrape sums them all. Requests are sent concurrently until both
workers have answered some (their pids appear in the folder), then every scrape must count all.
"""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LABELING_CONFIGS
from tests.integration.conftest import wait_until
from tests.integration.services import backend_process

pytestmark = pytest.mark.integration

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text()


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def pids_with_values(folder) -> set[str]:
    return {m[1] for path in folder.glob("histogram_*.db") if (m := re.fullmatch(r"histogram_(\d+)\.db", path.name))}


def test_metrics_add_up_across_two_gunicorn_workers(tmp_path, default_model_path, model_cache_dir):
    metrics_dir = tmp_path / "prometheus"
    env = {
        "WORKERS": "2", "THREADS": "2", "LLM_THREADS": "1", "MODEL_DIR": str(tmp_path / "store"),
        "CACHE_DIR": str(model_cache_dir), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    body = {"tasks": [{"data": {"text": "A wonderful, moving film."}}], "label_config": SENTIMENT_EN}

    def predict(_: int) -> int:
        response = requests.post(f"{url}/predict", json=body, timeout=120)
        assert response.status_code == 200 and len(response.json()["results"]) == 1
        return 1

    with backend_process(env, tmp_path / "backend.log") as url:
        sent = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            while len(pids_with_values(metrics_dir)) < 2 and sent < 200:
                sent += sum(pool.map(predict, range(4)))
        assert len(pids_with_values(metrics_dir)) == 2, "one worker answered every request"
        for _ in range(6):  # any worker may answer the scrape: every answer counts both workers' requests
            scraped = samples(url)
            assert scraped[("lsllm_predict_seconds_count", ())] == sent
            assert scraped[("lsllm_tasks_predicted_total", (("source", "scored"),))] == sent
            assert scraped[("lsllm_predict_seconds_bucket", (("le", "+Inf"),))] == sent
            assert scraped[("lsllm_queue_depth", (("runner", "in-process"),))] == 0

        # A worker killed (OOM, timeout): gunicorn's child_exit marks it dead, a new one starts, and
        # the dead worker's requests still count.
        os.kill(int(sorted(pids_with_values(metrics_dir))[0]), signal.SIGKILL)
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).ok, timeout=120, what="backend after a kill")
        assert samples(url)[("lsllm_predict_seconds_count", ())] == sent
