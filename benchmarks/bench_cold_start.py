"""Cold-start quality before any human label: naive zero-shot → bias calibration → self-labeled
demonstrations → label definitions → the prompt chosen on 50 labeled dev tasks.

    .venv/bin/python benchmarks/bench_cold_start.py [--tasks 200] [--dev 50] [--datasets sst2,ag_news,chnsenticorp]
        [--mix-tasks 150] [--mix-demos 8] [--mixes-only] [--cache /tmp/cold_start_scores.pkl] [--dump-dir DIR]

For each dataset the project's "unlabeled tasks" are the test texts: the label-free steps (bias
estimates, demonstration choice) read them without their labels, as the service does with a
project's tasks. Demonstration tasks are excluded from the scores of the rows that use them.
(e) picks among `ml_backend.prompt_variants.DEFAULT_VARIANTS` by log-loss on 50 labeled train
tasks (disjoint from the test tasks) and reports that variant's test scores. "prior matching" in
the steps is the service default (estimated prior); (d'') is the old uniform prior matching.

Cost: each prompt (hints on/off × demos on/off) is evaluated once, scoring the full-sequence and
first-token continuations in the same pass; tasks/s is that pass's throughput.
Label mixes ("mixes" in the JSON): the service path (label definitions + self-labeled demos) on
the first --tasks test tasks as they come ("as-is") and on skewed projects subsampled from the
test split (seeded; sst2 and chnsenticorp 80/20 and 90/10 negative/positive, ag_news with World
at 5%). Each is a fresh project: demonstrations are self-labeled from its own tasks (--mix-demos 0:
the zero-shot prompt with definitions, one pass per text shared by every mix: cheap). Per
correction — raw read-out, uniform prior matching (the old default), content-free, estimated
prior (the new default) — accuracy, balanced accuracy, and the predicted label mix against the
true one (mix_error = total variation distance between the two).

--cache keeps every scored (prompt, text) pair on disk, so a rerun only scores what changed;
--dump-dir writes each mix's raw / anchor probabilities and gold labels as .npz for offline work.
Prints a table and writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    DATASETS,
    RESULTS_DIR,
    load_split,
    print_table,
    write_results,
)
from ml_backend import bias_correction  # noqa: E402
from ml_backend.config import Settings  # noqa: E402
from ml_backend.demos import select_self_labeled_demos  # noqa: E402
from ml_backend.label_config import Target, parse_label_config  # noqa: E402
from ml_backend.llm.default_model import ensure_default_model  # noqa: E402
from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime  # noqa: E402
from ml_backend.llm.prompts import Demonstration  # noqa: E402
from ml_backend.metrics import balanced_accuracy, label_quality  # noqa: E402
from ml_backend.predictor import LabelScorer, PredictionOptions  # noqa: E402
from ml_backend.prompt_variants import DEFAULT_VARIANTS, PromptVariant, choose_variant  # noqa: E402
from ml_backend.scoring import label_probabilities  # noqa: E402


def without_hints(target: Target) -> Target:
    return dataclasses.replace(target, options=tuple(dataclasses.replace(o, hint=None) for o in target.options))


class ScoreCache:
    """Log-probabilities per (prompt prefix, continuations, task tokens): a rerun scores only what is new."""

    CHUNK = 32  # tasks scored between two saves

    def __init__(self, path: Path | None = None):
        self.path = path
        self.rows: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            self.rows = pickle.loads(path.read_bytes())

    @staticmethod
    def _key(prefix, continuations, tokens) -> str:
        blob = repr((list(prefix), [list(c) for c in continuations], list(tokens)))
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()

    def score(self, runtime, prefix, token_lists, continuations) -> np.ndarray:
        keys = [self._key(prefix, continuations, tokens) for tokens in token_lists]
        missing = [i for i, key in enumerate(keys) if key not in self.rows]
        for start in range(0, len(missing), self.CHUNK):
            chunk = missing[start : start + self.CHUNK]
            scored = runtime.score_continuations(prefix, [token_lists[i] for i in chunk], continuations)
            for i, row in zip(chunk, scored):
                self.rows[keys[i]] = row
            self.save()
        if not keys:
            return np.zeros((0, len(continuations)))
        return np.stack([self.rows[key] for key in keys])

    def save(self) -> None:
        if self.path is not None:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(pickle.dumps(self.rows))
            temporary.replace(self.path)


class PromptPass:
    """One evaluation of a prompt over test + dev texts: full and first-token log-probs, and the
    anchors for the model's own label bias: content-free inputs and domain-context inputs drawn
    from the project's texts (`anchor_rows`, default all)."""

    def __init__(self, runtime, target: Target, demos: tuple[Demonstration, ...], texts: list[str],
                 cache: ScoreCache, anchor_rows: np.ndarray | None = None):
        full = LabelScorer(runtime, PredictionOptions(bias_calibration="none"))
        first = LabelScorer(runtime, PredictionOptions(bias_calibration="none", scoring_mode="first_token"))
        prompt = full.prompt(target, demos)
        prefix = runtime.prefix_tokens(prompt.prefix)
        continuations = full.continuations(target, prompt) + first.continuations(target, prompt)
        n_labels = len(target.options)
        tokens = [full.task_tokens(t) for t in texts]
        content_free = [runtime.tokenize(t, special=False) for t in bias_correction.CONTENT_FREE_INPUTS]
        rows = np.arange(len(texts)) if anchor_rows is None else anchor_rows
        domain_context = bias_correction.domain_context_inputs([tokens[i] for i in rows])
        started = time.perf_counter()
        n_cached = sum(ScoreCache._key(prefix, continuations, t) in cache.rows for t in tokens)
        logprobs = cache.score(runtime, prefix, tokens, continuations)
        elapsed = time.perf_counter() - started
        self.tasks_per_s = (len(texts) - n_cached) / elapsed if n_cached < len(texts) and elapsed > 0 else float("nan")
        anchor_logprobs = cache.score(runtime, prefix, content_free + domain_context, continuations)

        def split(matrix: np.ndarray) -> dict[str, np.ndarray]:
            return {"full_sequence": label_probabilities(matrix[:, :n_labels]),
                    "first_token": label_probabilities(matrix[:, n_labels:])}

        self.raw = split(logprobs)
        self.content_free = split(anchor_logprobs[: len(content_free)])
        self.domain_context = split(anchor_logprobs[len(content_free):])

    def anchor(self, mode: str) -> np.ndarray:
        """What the service divides out as the model's own bias before estimating the prior."""
        return np.concatenate([self.content_free[mode], self.domain_context[mode]])

    def probabilities(self, mode: str, bias_calibration: str, unlabeled_rows: np.ndarray) -> np.ndarray:
        raw = self.raw[mode]
        if bias_calibration == "content_free":
            return bias_correction.contextual_calibration(raw, self.content_free[mode])
        if bias_calibration == "prior_matching":  # the service default: estimated prior
            return bias_correction.prior_matching(raw, raw[unlabeled_rows], anchor_probabilities=self.anchor(mode))
        if bias_calibration == "uniform_prior_matching":  # the old default
            return bias_correction.prior_matching(raw, raw[unlabeled_rows])
        return raw


def evaluate_dataset(runtime, cache: ScoreCache, dataset: str, config_name: str, n_tasks: int, n_dev: int,
                     k_demos: int) -> list[dict]:
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
        zero = passes[(hints, False)] = PromptPass(runtime, target, (), texts, cache, test_rows)
        # Self-labeled demonstrations from the project's unlabeled (test) texts, content-free corrected.
        corrected = zero.probabilities("full_sequence", "content_free", test_rows)[test_rows]
        chosen = select_self_labeled_demos([r["text"] for r in test], corrected, k=k_demos)
        demos = tuple(Demonstration(test[c.index]["text"], (target.options[c.label].prompt_name,)) for c in chosen)
        demo_rows[hints] = np.array([c.index for c in chosen], dtype=int)
        passes[(hints, True)] = PromptPass(runtime, target, demos, texts, cache, test_rows)

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
        ("(b') + bias calibration: estimated-prior matching on unlabeled tasks", dataclasses.replace(naive, bias_calibration="prior_matching")),
        # The same three read-outs with the shipped config's label definitions in the prompt: where
        # the definitions tilt the model toward one label, (a) is biased and calibration must fix it.
        ("(a+) zero-shot with definitions, raw", PromptVariant("a+", use_hints=True, n_demonstrations=0, bias_calibration="none")),
        ("(b+) zero-shot with definitions + content-free", PromptVariant("b+", use_hints=True, n_demonstrations=0)),
        ("(b+') zero-shot with definitions + prior matching", PromptVariant("b+'", use_hints=True, n_demonstrations=0, bias_calibration="prior_matching")),
        ("(c) + 8 self-labeled demos, full sequence, content-free", PromptVariant("c", use_hints=False, n_demonstrations=8)),
        ("(c') + 8 self-labeled demos, full sequence, prior matching", PromptVariant("c2", use_hints=False, n_demonstrations=8, bias_calibration="prior_matching")),
        ("(d) + label definitions (hints), demos, content-free", PromptVariant("d", use_hints=True, n_demonstrations=8)),
        ("(d') + label definitions (hints), demos, estimated-prior matching = the service default", PromptVariant("d2", use_hints=True, n_demonstrations=8, bias_calibration="prior_matching")),
        ("(d'') + label definitions (hints), demos, uniform prior matching (the old default)", PromptVariant("d3", use_hints=True, n_demonstrations=8, bias_calibration="uniform_prior_matching")),
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


# Skewed projects subsampled from the test split: label → share of the project's tasks.
SKEWED_MIXES = {
    "sst2": [("80/20", {"negative": 0.8, "positive": 0.2}), ("90/10", {"negative": 0.9, "positive": 0.1})],
    "chnsenticorp": [("80/20", {"negative": 0.8, "positive": 0.2}), ("90/10", {"negative": 0.9, "positive": 0.1})],
    "ag_news": [("World 5%", {"World": 0.05, "Sports": 0.95 / 3, "Business": 0.95 / 3, "Sci/Tech": 0.95 / 3})],
}
CORRECTIONS = [
    ("raw zero-shot", "zero", "none"),
    ("raw", "demos", "none"),
    ("uniform prior matching (old default)", "demos", "uniform_prior_matching"),
    ("content-free", "demos", "content_free"),
    ("estimated prior (new default)", "demos", "prior_matching"),
]


def skewed_sample(rows: list[dict], shares: dict[str, float], n_tasks: int, *, seed: int = 0) -> list[dict]:
    """n_tasks rows with the given label shares (rounded), drawn without replacement, shuffled.

    Each label's rows are taken from the front of one seeded permutation of that label's rows, so
    the mixes of a dataset overlap (the zero-shot pass is shared through the score cache)."""
    chosen = []
    for label, share in shares.items():
        pool = [r for r in rows if r["label"] == label]
        count = min(len(pool), max(1, int(round(share * n_tasks))))
        order = np.random.default_rng([seed, len(pool)]).permutation(len(pool))
        chosen += [pool[i] for i in order[:count]]
    return [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))]


def label_mix(indices: np.ndarray, n_labels: int) -> np.ndarray:
    return np.bincount(indices, minlength=n_labels) / max(1, len(indices))


def evaluate_mixes(runtime, cache: ScoreCache, dataset: str, config_name: str, n_tasks: int, n_mix: int,
                   k_demos: int, dump_dir: Path | None) -> list[dict]:
    """The service path (definitions + self-labeled demos) on the as-is and the skewed projects."""
    target = parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text()).targets[0]
    labels = target.result_values
    test = load_split(dataset, "test")
    projects = [("as-is", test[:n_tasks])] + [
        (name, skewed_sample(test, shares, n_mix)) for name, shares in SKEWED_MIXES.get(dataset, [])
    ]
    results = []
    for mix_name, rows in projects:
        texts = [r["text"] for r in rows]
        gold = np.array([labels.index(r["label"]) for r in rows])
        every = np.arange(len(texts))
        zero = PromptPass(runtime, target, (), texts, cache)
        if k_demos > 0:
            chosen = select_self_labeled_demos(texts, zero.probabilities("full_sequence", "content_free", every), k=k_demos)
            demos = tuple(Demonstration(texts[c.index], (target.options[c.label].prompt_name,)) for c in chosen)
            with_demos = PromptPass(runtime, target, demos, texts, cache)
        else:  # zero-shot only: one pass per text, shared by every mix through the cache
            chosen, with_demos = [], zero
        keep = np.setdiff1d(every, [c.index for c in chosen])
        true_mix = label_mix(gold[keep], len(labels))
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)
            np.savez(dump_dir / f"{dataset}_k{k_demos}_{mix_name.replace('/', '-').replace(' ', '_')}.npz",
                     raw=with_demos.raw["full_sequence"], content_free=with_demos.content_free["full_sequence"],
                     domain_context=with_demos.domain_context["full_sequence"], gold=gold, keep=keep,
                     zero_raw=zero.raw["full_sequence"])
        for correction, prompt_name, mode in CORRECTIONS:
            prompt_pass = zero if prompt_name == "zero" else with_demos
            probabilities = prompt_pass.probabilities("full_sequence", mode, every)[keep]
            predicted = probabilities.argmax(axis=1)
            predicted_mix = label_mix(predicted, len(labels))
            if prompt_name == "zero" and k_demos == 0:
                continue  # the same as "raw"
            results.append({
                "dataset": dataset,
                "mix": mix_name,
                "prompt": f"definitions + {k_demos} self-labeled demos" if k_demos else "zero-shot + definitions",
                "correction": correction,
                "n": int(len(keep)),
                "accuracy": float(np.mean(predicted == gold[keep])),
                "balanced_accuracy": balanced_accuracy(gold[keep], predicted),
                "true_mix": "/".join(f"{x:.2f}" for x in true_mix),
                "predicted_mix": "/".join(f"{x:.2f}" for x in predicted_mix),
                "mix_error": float(0.5 * np.abs(predicted_mix - true_mix).sum()),
            })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--dev", type=int, default=50)
    parser.add_argument("--demos", type=int, default=8)
    parser.add_argument("--mix-tasks", type=int, default=150, help="tasks per skewed project (0 = no mixes)")
    parser.add_argument("--mix-demos", type=int, default=None,
                        help="demonstrations in the mixes' prompt (default --demos, as the service; 0 = zero-shot, cheap)")
    parser.add_argument("--datasets", default=",".join(d for d, _ in DATASETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="pickle of scored (prompt, text) pairs to reuse")
    parser.add_argument("--dump-dir", type=Path, default=None, help="write each mix's probabilities as .npz")
    parser.add_argument("--mixes-only", action="store_true", help="skip the step-by-step rows")
    args = parser.parse_args()

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=args.threads)
    cache = ScoreCache(args.cache)
    wanted = args.datasets.split(",")
    rows, mixes = [], []
    config_of = dict(DATASETS)
    for dataset in wanted:  # in the order asked for; results are written after each
        config_name = config_of[dataset]
        if not args.mixes_only:
            rows += evaluate_dataset(runtime, cache, dataset, config_name, args.tasks, args.dev, args.demos)
            print_table(f"Cold start on {dataset}", [r for r in rows if r["dataset"] == dataset])
        if args.mix_tasks > 0:
            mixes += evaluate_mixes(runtime, cache, dataset, config_name, args.tasks, args.mix_tasks,
                                    args.demos if args.mix_demos is None else args.mix_demos, args.dump_dir)
            labels = "/".join(parse_label_config((REPO_ROOT / "labeling_configs" / config_name).read_text())
                              .targets[0].result_values)
            print_table(f"Label mixes on {dataset} (mix order {labels})", [r for r in mixes if r["dataset"] == dataset])
        write_results("cold_start", merged_with_previous(rows, mixes, wanted, vars(args)))


def merged_with_previous(rows: list[dict], mixes: list[dict], datasets: list[str], arguments: dict) -> dict:
    """This run's rows, plus the previous results file's rows for datasets not run this time
    (so a run on one dataset updates its rows and keeps the others)."""
    path = RESULTS_DIR / "cold_start.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    kept_rows = [r for r in previous.get("rows", []) if r["dataset"] not in datasets or not rows]
    kept_mixes = [r for r in previous.get("mixes", []) if r["dataset"] not in datasets or not mixes]
    settings = {key: arguments[key] for key in ("tasks", "dev", "demos", "mix_tasks", "mix_demos")}
    runs = {**previous.get("runs", {}), **{dataset: settings for dataset in datasets}}
    return {"rows": kept_rows + rows, "mixes": kept_mixes + mixes, "runs": runs}


if __name__ == "__main__":
    main()
