"""Cached inputs of bench_slm.py: LLM label distributions and encoder embeddings per dataset.

    .venv/bin/python -m benchmarks.slm_data llm   [--train 1000] [--test 500] [--datasets ...]
    .venv/bin/python -m benchmarks.slm_data embed [--train 1000] [--test 500] [--encoder embeddinggemma]

Both are computed once per text (keyed by the text's SHA-256) and kept on disk (``--cache-dir``,
default ~/.cache/ls-llm-backend/bench_slm); a run resumes where an interrupted one stopped, and the
LLM stage visits the datasets round-robin (two train texts, then one test text), so a run stopped
early leaves a usable prefix of every dataset; bench_slm.py uses the largest cached prefixes.

"LLM labels" are this project's cold start without demonstrations: the default model, the
shipped labeling config with its label definitions, full label sequences, and estimated-prior
matching anchored on content-free + domain-context inputs (``bias_correction.prior_matching``),
the prior estimated on all the texts (train + test) as the service does on a project's tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import DATASETS, load_split  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("BENCH_SLM_CACHE", Path.home() / ".cache" / "ls-llm-backend" / "bench_slm"))
CONFIGS = dict(DATASETS)


def texts_and_gold(dataset: str, n_train: int, n_test: int) -> tuple[list[str], list[str], list[str]]:
    """Train texts first, then test texts; gold labels; label names in the config's order."""
    from ml_backend.label_config import parse_label_config

    target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text()).targets[0]
    rows = load_split(dataset, "train", n_train) + load_split(dataset, "test", n_test)
    return [r["text"] for r in rows], [r["label"] for r in rows], list(target.result_values)


def llm_path(cache_dir: Path, dataset: str) -> Path:
    return cache_dir / f"llm_{dataset}.npz"


def _save_npz(path: Path, **arrays) -> None:
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def scoring_order(dataset: str, n_train: int, n_test: int) -> list[str]:
    """Texts in the order they are scored/encoded: one test text per two train texts, so that a
    run stopped early still leaves a usable train and test prefix of every dataset."""
    train = [r["text"] for r in load_split(dataset, "train", n_train)]
    test = [r["text"] for r in load_split(dataset, "test", n_test)]
    order, i, j = [], 0, 0
    while i < len(train) or j < len(test):
        order += train[i:i + 2]
        i += 2
        if j < len(test):
            order.append(test[j])
            j += 1
    return order


class LLMCache:
    """Raw LLM label distributions per text (keyed by SHA-256) and the bias anchors, for one dataset."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, np.ndarray] = {}
        self.anchors: np.ndarray | None = None
        if path.exists():
            data = np.load(path)
            self.rows = dict(zip(data["keys"].tolist(), data["raw"]))
            self.anchors = data["anchors"] if "anchors" in data and data["anchors"].size else None

    def save(self) -> None:
        keys = list(self.rows)
        raw = np.stack([self.rows[k] for k in keys]) if keys else np.zeros((0, 0))
        _save_npz(self.path, keys=np.array(keys), raw=raw,
                  anchors=self.anchors if self.anchors is not None else np.zeros((0, 0)))


def llm_stage(datasets: list[str], n_train: int, n_test: int, cache_dir: Path, threads: int,
              max_text_tokens: int = 256, chunk: int = 25) -> None:
    """Score every dataset round-robin, ``chunk`` texts at a time, resuming from the cache."""
    from ml_backend import bias_correction
    from ml_backend.config import Settings
    from ml_backend.label_config import parse_label_config
    from ml_backend.llm.default_model import ensure_default_model
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime
    from ml_backend.predictor import LabelScorer, PredictionOptions
    from ml_backend.encoders import text_key

    runtime = LlamaCppRuntime(ensure_default_model(Settings().cache_dir), n_threads=threads)
    scorer = LabelScorer(runtime, PredictionOptions(bias_calibration="none", max_text_tokens=max_text_tokens))
    state = {}
    for dataset in datasets:
        target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text()).targets[0]
        cache = LLMCache(llm_path(cache_dir, dataset))
        order = scoring_order(dataset, n_train, n_test)
        if not anchors_current(cache.anchors):  # none yet, or drawn with another DOMAIN_CONTEXT_INPUTS
            texts = [scorer.task_text(t) for t in order]
            anchors = list(bias_correction.CONTENT_FREE_INPUTS) + scorer.provider.domain_context_inputs(texts)
            cache.anchors = scorer.raw_probabilities(target, anchors)
            cache.save()
        todo = [t for t in order if text_key(t) not in cache.rows]
        state[dataset] = (target, cache, todo)
        print(f"[llm] {dataset}: {len(order) - len(todo)}/{len(order)} cached", flush=True)
    started, scored = time.perf_counter(), 0
    while any(todo for _, _, todo in state.values()):
        for dataset, (target, cache, todo) in state.items():
            batch, todo[:] = todo[:chunk], todo[chunk:]
            if not batch:
                continue
            raw = scorer.raw_probabilities(target, [scorer.task_text(t) for t in batch])
            for text, row in zip(batch, raw):
                cache.rows[text_key(text)] = row
            cache.save()
            scored += len(batch)
            print(f"[llm] {dataset}: {len(cache.rows)} cached, {len(todo)} to go "
                  f"({scored / (time.perf_counter() - started):.2f} tasks/s overall)", flush=True)


def available_prefix(dataset: str, n_train: int, n_test: int, keys: set[str]) -> tuple[int, int]:
    """The largest (train, test) prefixes, within the asked sizes, whose texts are all in ``keys``."""
    from ml_backend.encoders import text_key

    sizes = []
    for split, n in (("train", n_train), ("test", n_test)):
        count = 0
        for row in load_split(dataset, split, n):
            if text_key(row["text"]) not in keys:
                break
            count += 1
        sizes.append(count)
    return sizes[0], sizes[1]


def load_llm_raw(cache_dir: Path, dataset: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(raw distributions for ``texts``, bias anchors)."""
    from ml_backend.encoders import text_key

    cache = LLMCache(llm_path(cache_dir, dataset))
    if not anchors_current(cache.anchors):
        raise SystemExit(f"{cache.path}: its bias anchors are missing or were drawn with another "
                         "DOMAIN_CONTEXT_INPUTS; run `python -m benchmarks.slm_data llm` to score them again")
    return np.stack([cache.rows[text_key(t)] for t in texts]), cache.anchors


def anchors_current(anchors: np.ndarray | None) -> bool:
    """Whether cached anchors are what the cold start scores now (content-free + domain-context inputs)."""
    from ml_backend import bias_correction

    expected = len(bias_correction.CONTENT_FREE_INPUTS) + bias_correction.DOMAIN_CONTEXT_INPUTS
    return anchors is not None and len(anchors) == expected


def load_llm(cache_dir: Path, dataset: str, texts: list[str]) -> np.ndarray:
    """Prior-matched LLM distributions for ``texts``; the prior is estimated on these same texts
    (the project's tasks), as the service does."""
    from ml_backend import bias_correction

    raw, anchors = load_llm_raw(cache_dir, dataset, texts)
    return bias_correction.prior_matching(raw, raw, anchor_probabilities=anchors)


def embed_stage(datasets: list[str], n_train: int, n_test: int, cache_dir: Path, encoder_name: str) -> None:
    from ml_backend.encoders import EmbeddingCache, EncodeStats, embed_texts, load_encoder

    encoder = load_encoder(encoder_name)
    cache = EmbeddingCache(cache_dir / "embeddings")
    for dataset in datasets:
        texts = scoring_order(dataset, n_train, n_test)
        stats = EncodeStats()
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            print(f"[embed] {encoder_name} {dataset}: {done}/{total} "
                  f"({done / max(time.perf_counter() - started, 1e-9):.1f} texts/s)", flush=True)

        embed_texts(encoder, texts, cache, progress=progress, stats=stats)
        print(f"[embed] {encoder_name} {dataset}: {stats.encoded} encoded, {stats.cached} cached, "
              f"{stats.seconds:.0f} s", flush=True)


def load_embeddings(cache_dir: Path, dataset: str, n_train: int, n_test: int, encoder) -> np.ndarray:
    from ml_backend.encoders import EmbeddingCache, embed_texts

    texts, _, _ = texts_and_gold(dataset, n_train, n_test)
    return embed_texts(encoder, texts, EmbeddingCache(cache_dir / "embeddings"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["llm", "embed"])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder", default="embeddinggemma")
    parser.add_argument("--max-text-tokens", type=int, default=256)
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets.split(",")
    if args.stage == "llm":
        llm_stage(datasets, args.train, args.test, args.cache_dir, args.threads, args.max_text_tokens)
    else:
        embed_stage(datasets, args.train, args.test, args.cache_dir, args.encoder)


if __name__ == "__main__":
    main()
