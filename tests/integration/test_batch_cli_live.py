"""`lsllm` as a user runs it: the installed console command, the default model, EmbeddingGemma, a
real Label Studio.

An English CSV and a Chinese XLSX built from ../shared/data go label → report → train (English)
→ to-label-studio --upload; Label Studio stores every prediction with the file's score, and `/next`
serves the lowest score first. A `label` process SIGKILLed halfway is rerun: every row exactly once.
No timing assertions (benchmarks/bench_batch.py measures speed).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from ml_backend.batch.engine import config_from_labels
from ml_backend.batch.files import read_table, table_bytes
from tests.conftest import LABELING_CONFIGS, REPO_ROOT, load_jsonl, shared_path
from tests.integration.conftest import LS_TOKEN

pytestmark = pytest.mark.integration

LSLLM = REPO_ROOT / ".venv" / "bin" / "lsllm"


@pytest.fixture
def env(tmp_path, model_cache_dir, default_model_path, label_studio) -> dict[str, str]:
    return {**os.environ, "LSLLM_HOME": str(tmp_path / "home"), "CACHE_DIR": str(model_cache_dir),
            "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": LS_TOKEN}


def lsllm(env: dict[str, str], *args, timeout: float = 900) -> subprocess.CompletedProcess:
    answer = subprocess.run([str(LSLLM), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert answer.returncode == 0, f"lsllm {' '.join(map(str, args))} failed:\n{answer.stderr[-3000:]}"
    return answer


def _english_csv(path: Path, n: int, offset: int = 0) -> Path:
    rows = load_jsonl(shared_path("data", "sst2", "test.jsonl"), limit=offset + n)[offset:]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sentence", "gold"])
        writer.writerows([[f"en-{offset + i}", row["text"], row["label"]] for i, row in enumerate(rows)])
    return path


def _chinese_xlsx(path: Path, n: int) -> Path:
    rows = load_jsonl(shared_path("data", "chnsenticorp", "test.jsonl"), limit=n)
    path.write_bytes(table_bytes(["评论", "人工标签"], [{"评论": r["text"], "人工标签": r["label"]} for r in rows], "xlsx"))
    return path


def _project_predictions(label_studio: str, project_id: int) -> list[dict]:
    answer = requests.get(f"{label_studio}/api/predictions", params={"project": project_id},
                          headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=60)
    answer.raise_for_status()
    return answer.json()


def _next_task(label_studio: str, project_id: int) -> dict:
    answer = requests.get(f"{label_studio}/api/projects/{project_id}/next",
                          headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=60)
    answer.raise_for_status()
    return answer.json()


def _round_trip(env, ls_client, label_studio, source: Path, text_column: str, gold: str, task: list[str],
                label_config: str, *, train: bool) -> None:
    labeled = source.with_name(f"{source.stem}.labeled{source.suffix}")
    lsllm(env, "label", source, "--text-column", text_column, *task, "--no-progress")
    table = read_table(labeled)
    assert len(table.rows) == len(read_table(source).rows)
    assert all(row["label"] in ("positive", "negative") and 0 <= float(row["confidence"]) <= 1 for row in table.rows)
    right = sum(row["label"] == row[gold] for row in table.rows) / len(table.rows)
    assert right > 0.6, f"the default model labels {source.name} no better than chance ({right:.2f})"

    report = lsllm(env, "report", labeled, "--gold", gold, "-o", source.parent / f"{source.stem}-report")
    assert "reviewed items" in report.stdout
    assert (source.parent / f"{source.stem}-report" / "reliability.png").stat().st_size > 1000

    if train:
        trained = lsllm(env, "train", labeled, "--text-column", text_column, *task, "--gold-column", gold, "--no-progress")
        assert json.loads(trained.stdout[:trained.stdout.rindex("}") + 1])["status"] == "done"
        more = _english_csv(source.with_name("more.csv"), 12, offset=200)
        lsllm(env, "label", more, "--text-column", text_column, *task, "--no-progress")
        relabeled = read_table(more.with_name("more.labeled.csv"))
        assert {"llm_label", "slm_label", "agreement", "llm_wrong_probability"} <= set(relabeled.columns)
        assert {row["agreement"] for row in relabeled.rows} <= {"true", "false"}

    project = ls_client.projects.create(title=f"lsllm {source.name}", label_config=label_config)
    uploaded = lsllm(env, "to-label-studio", labeled, "--text-column", text_column, *task, "--upload", project.id)
    assert f"into project {project.id}" in uploaded.stdout
    stored = _project_predictions(label_studio, project.id)
    assert len(stored) == len(table.rows)
    assert sorted(round(p["score"], 4) for p in stored) == sorted(round(float(r["confidence"]), 4) for r in table.rows)
    assert {p["model_version"] for p in stored} == {table.rows[0]["model_version"]}
    assert all(isinstance(p["cluster"], int) for p in stored)
    lowest = min(p["score"] for p in stored)
    served = _next_task(label_studio, project.id)
    served_scores = [p["score"] for p in stored if p["task"] == served["id"]]
    assert served_scores == [pytest.approx(lowest)], "Label Studio's /next did not serve the least-likely-right task first"


def test_english_csv_round_trip_into_label_studio(tmp_path, env, ls_client, label_studio):
    source = _english_csv(tmp_path / "sst2.csv", 40)
    _round_trip(env, ls_client, label_studio, source, "sentence", "gold", ["--labels", "positive,negative"],
                config_from_labels(["positive", "negative"], {}, ner=False), train=True)


def test_chinese_xlsx_round_trip_into_label_studio(tmp_path, env, ls_client, label_studio):
    source = _chinese_xlsx(tmp_path / "评论.xlsx", 30)
    config = (LABELING_CONFIGS / "sentiment_zh.xml").read_text(encoding="utf-8")
    _round_trip(env, ls_client, label_studio, source, "评论", "人工标签", ["--config", "sentiment_zh"], config,
                train=False)


def test_ner_rows_get_entities_with_code_point_offsets(tmp_path, env):
    rows = load_jsonl(shared_path("data", "cluener", "test.jsonl"), limit=4)
    source = tmp_path / "news.jsonl"
    source.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lsllm(env, "label", source, "--text-column", "text", "--labels", "name,company,address", "--ner", "--no-progress")
    out = read_table(tmp_path / "news.labeled.jsonl")
    assert len(out.rows) == 4
    for row in out.rows:
        for entity in json.loads(row["entities"]):
            assert row["text"][entity["start"]:entity["end"]] == entity["text"]
            assert entity["label"] in ("name", "company", "address")


def test_a_killed_run_resumes_with_every_row_exactly_once(tmp_path, env):
    source = _english_csv(tmp_path / "big.csv", 80)
    env = {**env, "COLD_START_TASKS": "10"}  # a short cold start: most rows are scored after it
    output = tmp_path / "big.labeled.csv"
    checkpoint = tmp_path / "big.labeled.csv.partial.jsonl"
    process = subprocess.Popen([str(LSLLM), "label", str(source), "--text-column", "sentence",
                                "--labels", "positive,negative", "--no-progress"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and len(checkpoint.read_text(encoding="utf-8").splitlines()) >= 1 + 16:
            break
        time.sleep(0.2)
    assert process.poll() is None, f"lsllm ended before it could be killed: {process.communicate()[1][-2000:]}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not output.exists()
    done_before = len(checkpoint.read_text(encoding="utf-8").splitlines()) - 1

    rerun = lsllm(env, "label", source, "--text-column", "sentence", "--labels", "positive,negative", "--no-progress")
    assert "from an earlier run" in rerun.stdout and done_before >= 16
    rows = read_table(output).rows
    assert [row["id"] for row in rows] == [f"en-{i}" for i in range(80)]  # every row exactly once, in order
    assert all(row["label"] in ("positive", "negative") for row in rows)
    assert not checkpoint.exists()
