"""One model server for many workers: throughput through the OpenAI-compatible provider vs in-process.

    .venv/bin/python benchmarks/bench_openai_provider.py [--tasks 24] [--threads 1]

Same model (the embedded default GGUF), same ag_news tasks, zero-shot, no bias correction, in one run:

* **in-process**: `LlamaCppRuntime` through `LabelScorer`, full-sequence and first-token read-outs;
* **server, concurrency c** (1, 2, 4, 8): llama-cpp-python's server (`ml_backend.llm.serve_gguf`) on loopback, the provider with
  LLM_MAX_CONCURRENCY=c (first-token mode: what `auto` picks on llama-cpp-python);
* **two workers, one server**: two providers (two HTTP pools, as two rq workers would have) each
  scoring half the tasks at the same time, vs one in-process worker scoring all of them.

Ratios matter, not seconds: the machine has 2 CPU cores shared with other jobs. Writes
benchmarks/results/openai_provider.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_split, print_table, write_results  # noqa: E402
from ml_backend.config import Settings  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.llm import connect_server  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402
from tests.integration.model_server import llama_cpp_server  # noqa: E402

OPTIONS = PredictionOptions(bias_calibration="none", scoring_mode="first_token", max_text_tokens=128, batch_size=8)


def timed(scorer: LabelScorer, target, texts) -> float:
    started = time.perf_counter()
    scorer.probabilities(target, texts)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = Settings()
    model_path = ensure_default_model(settings.cache_dir)
    target = parse_label_config((REPO_ROOT / "labeling_configs" / "topic_en.xml").read_text()).targets[0]
    texts = [row["text"] for row in load_split("ag_news", "test", args.tasks)]
    rows: list[dict] = []

    runtime = LlamaCppRuntime(model_path, n_ctx=1024, n_threads=args.threads, name="default")
    full = LabelScorer(runtime, PredictionOptions(**{**OPTIONS.__dict__, "scoring_mode": "full_sequence"}))
    first = LabelScorer(runtime, OPTIONS)
    timed(first, target, texts[:1])  # prefix cached, as in a serving process
    in_process = {"full_sequence": timed(full, target, texts), "first_token": timed(first, target, texts)}
    base = in_process["first_token"]
    for mode, seconds in in_process.items():
        rows.append({"setup": f"in-process ({mode})", "tasks_per_s": len(texts) / seconds, "vs_in_process_first_token": base / seconds})

    log_path = Path(tempfile.mkdtemp()) / "server.log"
    with llama_cpp_server(model_path, log_path, n_ctx=1024, threads=args.threads) as (url, _process):
        for concurrency in (1, 2, 4, 8):
            provider = connect_server(Settings(llm_base_url=url, llm_max_concurrency=concurrency))
            scorer = LabelScorer(provider, OPTIONS)
            timed(scorer, target, texts[:1])
            seconds = timed(scorer, target, texts)
            rows.append({"setup": f"server, {concurrency} in flight", "tasks_per_s": len(texts) / seconds,
                         "vs_in_process_first_token": base / seconds})
            provider.close()

        workers = [LabelScorer(connect_server(Settings(llm_base_url=url, llm_max_concurrency=2)), OPTIONS) for _ in range(2)]
        for worker in workers:
            timed(worker, target, texts[:1])
        halves = [texts[0::2], texts[1::2]]
        started = time.perf_counter()
        threads = [threading.Thread(target=timed, args=(w, target, h)) for w, h in zip(workers, halves)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        rows.append({"setup": "two workers, one server", "tasks_per_s": len(texts) / seconds,
                     "vs_in_process_first_token": base / seconds})

    print_table(f"ag_news, {len(texts)} tasks, zero-shot, first-token read-out unless named", rows)
    write_results("openai_provider", {
        "tasks": len(texts), "threads": args.threads, "cpu_count": os.cpu_count(),
        "note": "2 CPU cores shared with other jobs during the run: compare ratios, not seconds. "
                "llama-cpp-python's server runs one request at a time (a global lock) and computes a "
                "log-softmax over all n_ctx rows for every logprobs request; vLLM batches concurrent requests.",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
