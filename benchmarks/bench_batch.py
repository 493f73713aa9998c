"""`lsllm label` against the service's bulk path, same model, same rows, side by side.

    .venv/bin/python benchmarks/bench_batch.py [--rows 1000] [--ner-rows 200]

For classification (sst2 texts, --labels positive,negative) and NER (CoNLL-2003 texts, ner_en):
  batch    the installed `lsllm label` on a CSV: reading, cold start on the file's rows, scoring,
           checkpoints, the atomic output file — the whole command as a user runs it
  service  what the bulk pre-annotation job runs for a project of the same tasks, minus Label
           Studio's I/O: the cold start (`RoundOne.run`) then `LLMBackend.predict` in batches of
           PREANNOTATE_SCORE_BATCH, in a fresh process and MODEL_DIR
Each runs in its own process (peak RSS from /proc via psutil, sampled every 0.2 s). Rates are
rows per second of wall time including the cold start; the ratio batch/service is what to read
(the machine is shared: absolute seconds vary). Prints a table, writes benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402

CLASSIFICATION = {"dataset": "sst2", "task": ["--labels", "positive,negative"]}
NER = {"dataset": "conll2003", "task": ["--config", "ner_en"]}


def _peak_rss_of(process: subprocess.Popen) -> tuple[int, float]:
    """Wait for the process; return (exit code, peak RSS in GB of it and its children)."""
    import psutil

    peak = 0
    handle = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            rss = handle.memory_info().rss + sum(c.memory_info().rss for c in handle.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    return process.returncode, peak / 1e9


def _texts(dataset: str, n: int) -> list[str]:
    rows = load_split(dataset, "train", limit=n)
    return [row["text"] for row in rows]


def run_batch(texts: list[str], task: list[str], workdir: Path) -> dict:
    source = workdir / "rows.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([[t] for t in texts])
    env = {**os.environ, "LSLLM_HOME": str(workdir / "home")}
    started = time.perf_counter()
    process = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "lsllm"), "label", str(source), "--text-column",
                                "text", *task, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, peak = _peak_rss_of(process)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"lsllm failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "rows_per_s": len(texts) / seconds, "peak_rss_gb": peak}


def run_service(texts: list[str], task: list[str], workdir: Path) -> dict:
    payload = workdir / "service.json"
    payload.write_text(json.dumps({"texts": texts, "task": task}), encoding="utf-8")
    env = {**os.environ, "MODEL_DIR": str(workdir / "store")}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--service-worker", str(payload)], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, peak = _peak_rss_of(process)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"service worker failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "rows_per_s": len(texts) / seconds, "peak_rss_gb": peak}


def service_worker(payload_path: Path) -> None:
    """The bulk job's work for a project of these tasks: cold start, then predict in batches."""
    from ml_backend.batch.engine import task_definition
    from ml_backend.config import load_settings
    from ml_backend.wiring import build_services

    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    task = payload["task"]
    definition = task_definition(config=task[1] if task[0] == "--config" else None,
                                 labels=task[1] if task[0] == "--labels" else None, hints=None, ner=False,
                                 instruction=None)
    settings = load_settings(preannotate_auto=False, redis_url=None)
    services = build_services(settings, preannotation=False)
    project = "1.1700000000"
    services.service.setup(project, definition.label_config)
    key = definition.data_keys[0]
    tasks = [{"id": i + 1, "data": {key: text}} for i, text in enumerate(payload["texts"])]
    if services.profiles.resolve(project).cold_start_due:
        services.round_one.run(project, tasks)
    batch = settings.preannotate_score_batch
    for start in range(0, len(tasks), batch):
        services.service.predict(tasks[start:start + batch], project=project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="classification rows")
    parser.add_argument("--ner-rows", type=int, default=200, help="NER rows (generation: ~1-2 s a row on 2 cores)")
    parser.add_argument("--service-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.service_worker:
        service_worker(args.service_worker)
        return
    results = []
    for name, setup, n in (("classification", CLASSIFICATION, args.rows), ("ner", NER, args.ner_rows)):
        if n <= 0:
            continue
        texts = _texts(setup["dataset"], n)
        with tempfile.TemporaryDirectory() as batch_dir, tempfile.TemporaryDirectory() as service_dir:
            batch = run_batch(texts, setup["task"], Path(batch_dir))
            service = run_service(texts, setup["task"], Path(service_dir))
        results.append({
            "task": name, "rows": n,
            "batch_rows_per_s": round(batch["rows_per_s"], 2), "service_rows_per_s": round(service["rows_per_s"], 2),
            "batch_over_service": round(batch["rows_per_s"] / service["rows_per_s"], 3),
            "batch_s": round(batch["seconds"], 1), "service_s": round(service["seconds"], 1),
            "batch_peak_rss_gb": round(batch["peak_rss_gb"], 2), "service_peak_rss_gb": round(service["peak_rss_gb"], 2),
        })
        print_table("lsllm label vs the service's bulk path (same model, same rows)", results)
    write_results("batch", {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                            "results": results})


if __name__ == "__main__":
    main()
