"""Classification scoring: speed of our scorer vs generate-and-parse vs the forward-pass floor,
and quality of the raw label probabilities (full sequence vs first token) for both runtimes.

    .venv/bin/python benchmarks/bench_classification.py [--tasks 200] [--transformers-tasks 60]

Prints tables and writes benchmarks/results/classification.json. Speed is compared within one
run, on the same model, tasks and 8-demonstration prompt: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    DATASETS,
    demonstrations,
    load_split,
    print_table,
    write_results,
)
from ml_backend.config import Settings  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.metrics import label_quality  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402
from ml_backend.scoring import label_probabilities  # noqa: E402


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def time_our_scorer(scorer: LabelScorer, target, texts, demos) -> float:
    started = time.perf_counter()
    scorer.probabilities(target, texts, demonstrations=demos)
    return time.perf_counter() - started


def time_floor(scorer: LabelScorer, target, texts, demos) -> float:
    runtime = scorer.runtime
    prompt = scorer.prompt(target, demos)
    prefix = runtime.prefix_tokens(prompt.prefix)
    tokens = [scorer.task_tokens(t) for t in texts]
    runtime.forward_only(prefix, tokens[:1])  # make sure the prefix is cached, as in (a)
    started = time.perf_counter()
    runtime.forward_only(prefix, tokens)
    return time.perf_counter() - started


def time_generate_and_parse(model_path: Path, scorer: LabelScorer, target, texts, gold, demos, threads: int):
    """(b): how most LLM backends label: full prompt per task, greedy decoding, parse the text."""
    from llama_cpp import Llama

    from ml_backend.llm.llama_cpp_runtime import plain_cpu_layout

    with plain_cpu_layout():  # the runtime's layout: same numbers, no crash on AMX CPUs
        llm = Llama(model_path=str(model_path), n_ctx=2048, n_threads=threads, verbose=False)
    prompt = scorer.prompt(target, demos)
    names = [o.prompt_name for o in target.options]
    correct = 0
    started = time.perf_counter()
    for text, label in zip(texts, gold):
        llm.reset()  # no prefix reuse: every task evaluates its whole prompt
        tokens = llm.tokenize((prompt.prefix + text + prompt.answer_lead).encode(), add_bos=True, special=True)
        tokens = tokens[: 2048 - 16]
        generated = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(generated) >= 8:
                break
            generated.append(token)
            piece = llm.detokenize(generated).decode("utf-8", errors="ignore")
            if "<|im_end|>" in piece or "\n" in piece:
                break
        answer = llm.detokenize(generated).decode("utf-8", errors="ignore").strip().lower()
        parsed = next((n for n in names if answer.startswith(n.lower())), None)
        option = next((o for o in target.options if o.prompt_name == parsed), None)
        correct += int(option is not None and option.result_value == label)
    seconds = time.perf_counter() - started
    del llm
    return seconds, correct / len(texts)


def quality_rows(runtime, runtime_name: str, n_tasks: int) -> list[dict]:
    """Raw-score quality per dataset; both read-outs come from one pass (their continuations share a tree)."""
    rows = []
    for dataset, config_name in DATASETS:
        target = parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text()).targets[0]
        test = load_split(dataset, "test", n_tasks)
        texts, gold = [r["text"] for r in test], [r["label"] for r in test]
        full = LabelScorer(runtime, PredictionOptions(bias_calibration="none"))
        first = LabelScorer(runtime, PredictionOptions(bias_calibration="none", scoring_mode="first_token"))
        prompt = full.prompt(target)
        continuations = full.continuations(target, prompt) + first.continuations(target, prompt)
        started = time.perf_counter()
        logprobs = runtime.score_continuations(
            runtime.prefix_tokens(prompt.prefix), [full.task_tokens(t) for t in texts], continuations
        )
        seconds = time.perf_counter() - started
        n_labels = len(target.options)
        for mode, columns in (("full_sequence", slice(0, n_labels)), ("first_token", slice(n_labels, None))):
            quality = label_quality(gold, label_probabilities(logprobs[:, columns]), target.result_values)
            rows.append(
                {
                    "runtime": runtime_name,
                    "dataset": dataset,
                    "mode": mode,
                    **quality.as_dict(),
                    "tasks_per_s_both_modes": len(texts) / seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="tasks of the speed comparison (default 200)")
    parser.add_argument("--quality-tasks", type=int, default=200, help="tasks per dataset for llama.cpp quality rows")
    parser.add_argument("--speed-dataset", default="ag_news", help="dataset of the speed comparison")
    parser.add_argument(
        "--transformers-tasks", type=int, default=60, help="tasks per dataset for the (slower) transformers runtime; 0 skips"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    settings = Settings()
    model_path = ensure_default_model(settings.cache_dir)
    rss_before = psutil.Process().memory_info().rss / 1e9
    runtime = LlamaCppRuntime(model_path, n_ctx=2048, n_threads=args.threads)
    rss_loaded = psutil.Process().memory_info().rss / 1e9

    # --- speed: (a) ours, (b) generate-per-task, (c) floor; same 200 tasks, 8 demonstrations
    config_name = dict(DATASETS)[args.speed_dataset]
    target = parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text()).targets[0]
    demos = demonstrations(args.speed_dataset, target, k=8)
    test = load_split(args.speed_dataset, "test", args.tasks)
    texts, gold = [r["text"] for r in test], [r["label"] for r in test]
    scorer = LabelScorer(runtime, PredictionOptions(bias_calibration="none"))
    time_c = time_floor(scorer, target, texts, demos)
    time_a = time_our_scorer(scorer, target, texts, demos)
    rss_serving = peak_rss_gb()
    time_b, accuracy_b = time_generate_and_parse(model_path, scorer, target, texts, gold, demos, args.threads)
    probabilities = scorer.probabilities(target, texts, demonstrations=demos)
    accuracy_a = label_quality(gold, probabilities, target.result_values).accuracy
    speed = {
        "dataset": args.speed_dataset,
        "tasks": len(texts),
        "demonstrations": len(demos),
        "a_ours_tasks_per_s": len(texts) / time_a,
        "b_generate_tasks_per_s": len(texts) / time_b,
        "c_floor_tasks_per_s": len(texts) / time_c,
        "ratio_b_time_over_a_time": time_b / time_a,
        "ratio_a_time_over_c_time": time_a / time_c,
        "accuracy_a": accuracy_a,
        "accuracy_b": accuracy_b,
        "rss_gb_model_loaded": rss_loaded,
        "rss_gb_before_model": rss_before,
        "peak_rss_gb_scoring": rss_serving,
    }
    print_table(
        f"Speed on {len(texts)} {args.speed_dataset} tasks, 8 demonstrations (llama.cpp, {args.threads} threads)",
        [
            {"method": "(a) ours: cached prefix, all labels in one batched pass", "tasks/s": speed["a_ours_tasks_per_s"], "accuracy": accuracy_a},
            {"method": "(b) full prompt per task, greedy generate + parse", "tasks/s": speed["b_generate_tasks_per_s"], "accuracy": accuracy_b},
            {"method": "(c) floor: cached prefix, forward over task tokens only", "tasks/s": speed["c_floor_tasks_per_s"], "accuracy": float("nan")},
        ],
    )
    print(
        f"time(b)/time(a) = {speed['ratio_b_time_over_a_time']:.2f}x (goal >= 5)   "
        f"time(a)/time(c) = {speed['ratio_a_time_over_c_time']:.2f}x (goal <= 1.3)   "
        f"peak RSS = {rss_serving:.2f} GB (goal <= 1.5)"
    )

    # --- quality of raw scores, full sequence vs first token, both runtimes
    quality = quality_rows(runtime, "llama_cpp", args.quality_tasks)
    del runtime
    if args.transformers_tasks > 0:
        from ml_backend.llm.transformers_runtime import TransformersRuntime

        hf_runtime = TransformersRuntime(model_path.parent, gguf_file=model_path.name)
        quality += quality_rows(hf_runtime, "transformers", args.transformers_tasks)
    print_table("Raw label probabilities (no bias correction, zero-shot)", quality)

    write_results(
        "classification",
        {
            "speed": speed,
            "quality": quality,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    )


if __name__ == "__main__":
    main()
