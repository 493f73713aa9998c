"""Cold-start quality before any human label: naive zero-shot → bias calibration → self-labeled
demonstrations → label definitions → the prompt chosen on 50 labeled dev tasks.

    .venv/bin/python benchmarks/bench_cold_start.py [--tasks 200] [--dev 50] [--datasets sst2,ag_news,chnsenticorp]

For each dataset the project's "unlabeled tasks" are the test texts: the label-free steps (bias
estimates, demonstration choice) read them without their labels, as the service does with a
project's tasks. Demonstration tasks are excluded from the scores of the rows that use them.
(e) picks among `training.prompt_selection.DEFAULT_VARIANTS` by log-loss on 50 labeled train
tasks (disjoint from the test tasks) and reports that variant's test scores.

Cost: each prompt (hints on/off × demos on/off) is evaluated once, scoring the full-sequence and
first-token continuations in the same pass; tasks/s is that pass's throughput.
Prints a table and writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import DATASETS, load_split, print_table, write_results  # noqa: E402
from ml_backend import calibration  # noqa: E402
from ml_backend.config import Settings  # noqa: E402
from ml_backend.label_config import Target, parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.llm.prompts import Demonstration  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402
from ml_backend.scoring import label_probabilities  # noqa: E402
from training.demos import select_self_labeled_demos  # noqa: E402
from training.evaluate import label_quality  # noqa: E402
from training.prompt_selection import DEFAULT_VARIANTS, PromptVariant, choose_variant  # noqa: E402


def without_hints(target: Target) -> Target:
    return dataclasses.replace(target, options=tuple(dataclasses.replace(o, hint=None) for o in target.options))


class PromptPass:
    """One evaluation of a prompt over test + dev texts: full and first-token log-probs, content-free too."""

    def __init__(self, runtime, target: Target, demos: tuple[Demonstration, ...], texts: list[str]):
        full = LabelScorer(runtime, PredictionOptions(bias_calibration="none"))
        first = LabelScorer(runtime, PredictionOptions(bias_calibration="none", scoring_mode="first_token"))
        prompt = full.prompt(target, demos)
        prefix = runtime.prefix_tokens(prompt.prefix)
        continuations = full.continuations(target, prompt) + first.continuations(target, prompt)
        n_labels = len(target.options)
        tokens = [full.task_tokens(t) for t in texts]
        content_free = [runtime.tokenize(t, special=False) for t in calibration.CONTENT_FREE_INPUTS]
        started = time.perf_counter()
        logprobs = runtime.score_continuations(prefix, tokens, continuations)
        self.tasks_per_s = len(texts) / (time.perf_counter() - started)
        cf_logprobs = runtime.score_continuations(prefix, content_free, continuations)
        self.raw = {"full_sequence": label_probabilities(logprobs[:, :n_labels]),
                    "first_token": label_probabilities(logprobs[:, n_labels:])}
        self.content_free = {"full_sequence": label_probabilities(cf_logprobs[:, :n_labels]),
                             "first_token": label_probabilities(cf_logprobs[:, n_labels:])}

    def probabilities(self, mode: str, bias_calibration: str, unlabeled_rows: np.ndarray) -> np.ndarray:
        raw = self.raw[mode]
        if bias_calibration == "content_free":
            return calibration.contextual_calibration(raw, self.content_free[mode])
        if bias_calibration == "prior_matching":
            return calibration.divide_out_prior(raw, calibration.matching_bias(raw[unlabeled_rows]))
        return raw


def evaluate_dataset(runtime, dataset: str, config_name: str, n_tasks: int, n_dev: int, k_demos: int) -> list[dict]:
    configured = parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text()).targets[0]
    test = load_split(dataset, "test", n_tasks)
    dev = load_split(dataset, "train", n_dev)
    texts = [r["text"] for r in test] + [r["text"] for r in dev]
    test_rows = np.arange(len(test))
    dev_rows = np.arange(len(test), len(texts))
    gold_test = [r["label"] for r in test]
    labels = configured.result_values
    gold_dev_index = np.array([labels.index(r["label"]) for r in dev])

    passes: dict[tuple[bool, bool], PromptPass] = {}
    demo_rows: dict[bool, np.ndarray] = {}
    for hints in (False, True):
        target = configured if hints else without_hints(configured)
        zero = passes[(hints, False)] = PromptPass(runtime, target, (), texts)
        # Self-labeled demonstrations from the project's unlabeled (test) texts, content-free corrected.
        corrected = zero.probabilities("full_sequence", "content_free", test_rows)[test_rows]
        chosen = select_self_labeled_demos([r["text"] for r in test], corrected, k=k_demos)
        demos = tuple(Demonstration(test[c.index]["text"], (target.options[c.label].prompt_name,)) for c in chosen)
        demo_rows[hints] = np.array([c.index for c in chosen], dtype=int)
        passes[(hints, True)] = PromptPass(runtime, target, demos, texts)

    def scores(variant: PromptVariant, rows: np.ndarray, exclude: np.ndarray) -> dict:
        prompt_pass = passes[(variant.use_hints, variant.n_demonstrations > 0)]
        probabilities = prompt_pass.probabilities(variant.scoring_mode, variant.bias_calibration, test_rows)
        keep = np.setdiff1d(rows, exclude)
        quality = label_quality([gold_test[i] for i in keep], probabilities[keep], labels)
        return {**quality.as_dict(), "tasks_per_s": prompt_pass.tasks_per_s}

    naive = PromptVariant("naive", scoring_mode="first_token", use_hints=False, n_demonstrations=0, bias_calibration="none")
    steps = [
        ("(a) naive zero-shot: first token, raw, label names only", naive),
        ("(a') zero-shot, full label sequence, raw", dataclasses.replace(naive, scoring_mode="full_sequence")),
        ("(b) + bias calibration: content-free", dataclasses.replace(naive, bias_calibration="content_free")),
        ("(b') + bias calibration: prior matching on unlabeled tasks", dataclasses.replace(naive, bias_calibration="prior_matching")),
        # The same three read-outs with the shipped config's label definitions in the prompt: where
        # the definitions tilt the model toward one label, (a) is biased and calibration must fix it.
        ("(a+) zero-shot with definitions, raw", PromptVariant("a+", use_hints=True, n_demonstrations=0, bias_calibration="none")),
        ("(b+) zero-shot with definitions + content-free", PromptVariant("b+", use_hints=True, n_demonstrations=0)),
        ("(b+') zero-shot with definitions + prior matching", PromptVariant("b+'", use_hints=True, n_demonstrations=0, bias_calibration="prior_matching")),
        ("(c) + 8 self-labeled demos, full sequence, content-free", PromptVariant("c", use_hints=False, n_demonstrations=8)),
        ("(c') + 8 self-labeled demos, full sequence, prior matching", PromptVariant("c2", use_hints=False, n_demonstrations=8, bias_calibration="prior_matching")),
        ("(d) + label definitions (hints), demos, content-free", PromptVariant("d", use_hints=True, n_demonstrations=8)),
        ("(d') + label definitions (hints), demos, prior matching = the service default", PromptVariant("d2", use_hints=True, n_demonstrations=8, bias_calibration="prior_matching")),
    ]
    rows = []
    for name, variant in steps:
        exclude = demo_rows[variant.use_hints] if variant.n_demonstrations else np.array([], dtype=int)
        rows.append({"dataset": dataset, "step": name, **scores(variant, test_rows, exclude)})

    candidates = [v for v in DEFAULT_VARIANTS if v.n_demonstrations in (0, 8)]
    dev_probabilities = {
        v.name: passes[(v.use_hints, v.n_demonstrations > 0)].probabilities(v.scoring_mode, v.bias_calibration, test_rows)[dev_rows]
        for v in candidates
    }
    best_name, losses = choose_variant(dev_probabilities, gold_dev_index)
    best = next(v for v in candidates if v.name == best_name)
    exclude = demo_rows[best.use_hints] if best.n_demonstrations else np.array([], dtype=int)
    rows.append({"dataset": dataset, "step": f"(e) chosen on {n_dev} dev tasks: {best_name}", **scores(best, test_rows, exclude)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--dev", type=int, default=50)
    parser.add_argument("--demos", type=int, default=8)
    parser.add_argument("--datasets", default=",".join(d for d, _ in DATASETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=args.threads)
    wanted = args.datasets.split(",")
    rows = []
    for dataset, config_name in DATASETS:
        if dataset in wanted:
            rows += evaluate_dataset(runtime, dataset, config_name, args.tasks, args.dev, args.demos)
            print_table(f"Cold start on {dataset}", [r for r in rows if r["dataset"] == dataset])
    write_results("cold_start", {"rows": rows, "tasks": args.tasks, "dev": args.dev})


if __name__ == "__main__":
    main()
