"""How many reviews until the dataset is 95% / 98% right? The review queue against random order,
LLM-confidence order and the bound (wrong items first).

    .venv/bin/python -m benchmarks.slm_data llm   --train 2000 --test 0   # LLM distributions, cached (slow, once)
    .venv/bin/python -m benchmarks.slm_data embed --train 2000 --test 0   # EmbeddingGemma vectors, cached
    .venv/bin/python benchmarks/bench_review_order.py [--train 2000] [--batch 50] [--datasets sst2,...]

Per classification set of ../shared/data: the first --train train texts are a project's tasks, gold
labels stand in for the annotators. Everything starts from the service's pre-annotations (the cold
start's prior-matched LLM distributions). Annotators review --batch tasks at a time, in the order of:

(a) random (the mean of three seeds);
(b) LLM confidence only, lowest first (the queue before any training);
(c) ours: after every batch the training job's own fitting code runs on the reviewed tasks
    (`training.job.fit_slm_and_blend` + `fit_queue_priority`: noisy-label SLM, blend, calibration,
    clusters, the P(correct) model) and the served scoring (`slm_model.blend_and_score`) re-predicts
    and re-scores every task; the next batch is the lowest P(correct) among the unreviewed;
(c+, with `--plus`) the same with one more training run before the first review (Start Training pressed on the
    fresh project: the SLM learns from the LLM's labels alone, and the first batch already uses the
    LLM×SLM disagreement; the service does not start that run by itself);
(d) the bound: the LLM's wrong labels first.

After each batch, dataset accuracy = reviewed tasks (gold) + unreviewed tasks (their current
prediction: the LLM's label for a, b, d; the served blend's for c). Reported: reviews to reach 95%
and 98% (in whole batches; "—" if never before every task is reviewed), (c)/(d), (c)/(b), seconds
per retrain + reorder step. Writes benchmarks/results/review_order.json and docs/review_order.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import print_table, write_results  # noqa: E402
from benchmarks.slm_data import CONFIGS, DEFAULT_CACHE, LLMCache, available_prefix, llm_path, load_llm, texts_and_gold  # noqa: E402
from ml_backend.encoders import EmbeddingCache, embed_texts, embeddinggemma_encoder_id, text_key  # noqa: E402
from ml_backend.slm_model import blend_and_score, nearest_centroid  # noqa: E402
from training.job import fit_queue_priority, fit_slm_and_blend  # noqa: E402

TARGETS = (0.95, 0.98)
PLOT_PATH = REPO_ROOT / "docs" / "review_order.png"
STRATEGIES = ("(a) random", "(b) LLM confidence", "(c) ours", "(c+) ours, trained at 0", "(d) bound")


class CachedVectorsOnly:
    """An encoder whose vectors must all be in the cache (run benchmarks.slm_data embed first)."""

    def __init__(self, encoder_id: str):
        self.encoder_id = encoder_id

    def encode(self, texts):
        raise RuntimeError(f"{len(texts)} texts are not in the embedding cache; run "
                           "`python -m benchmarks.slm_data embed --train N --test 0` first")


def dataset_accuracy(reviewed: np.ndarray, predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(reviewed | (predicted == gold)))


def static_curve(order: np.ndarray, predicted: np.ndarray, gold: np.ndarray, batch: int) -> list[float]:
    """Accuracy after each batch when the unreviewed keep their (LLM) prediction."""
    reviewed = np.zeros(len(gold), dtype=bool)
    curve = [dataset_accuracy(reviewed, predicted, gold)]
    for start in range(0, len(order), batch):
        reviewed[order[start:start + batch]] = True
        curve.append(dataset_accuracy(reviewed, predicted, gold))
    return curve


def served_version(X: np.ndarray, llm: np.ndarray, human: np.ndarray, labels: list[str],
                   encoder_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One training run and the served scoring of every task: (predicted label, score = P(correct))."""
    slm, blend, _ = fit_slm_and_blend(X, llm, human, labels, encoder_id=encoder_id)
    queue = fit_queue_priority(X, llm, slm.oof_probabilities_, human, blend)
    state = blend.state()
    served = blend_and_score(llm, slm.predict_proba(X), state["weights"], state["calibration"],
                             priority=queue.model, clusters=nearest_centroid(X, queue.centroids))
    return served.predicted, served.score


def ours_curve(X: np.ndarray, llm: np.ndarray, gold: np.ndarray, labels: list[str], batch: int,
               encoder_id: str, until: float, *, train_first: bool = False) -> tuple[list[float], list[float]]:
    """The queue with the training job after every batch; stops once `until` is reached (or all
    reviewed). `train_first`: one run before any review too (Start Training pressed on a fresh
    project: the SLM learns from the LLM's labels alone, so the first batch already uses disagreement)."""
    n = len(gold)
    reviewed = np.zeros(n, dtype=bool)
    human = np.full(n, -1)
    predicted, score = llm.argmax(axis=1), llm.max(axis=1)  # before any training: the LLM's calibrated score
    step_seconds = []
    if train_first:
        predicted, score = served_version(X, llm, human, labels, encoder_id)
    curve = [dataset_accuracy(reviewed, predicted, gold)]
    while not reviewed.all():
        unreviewed = np.flatnonzero(~reviewed)
        chosen = unreviewed[np.argsort(score[unreviewed], kind="stable")[:batch]]
        reviewed[chosen] = True
        human[chosen] = gold[chosen]
        started = time.perf_counter()
        predicted, score = served_version(X, llm, human, labels, encoder_id)
        step_seconds.append(time.perf_counter() - started)
        curve.append(dataset_accuracy(reviewed, predicted, gold))
        print(f"  (c{'+' if train_first else ''}) {int(reviewed.sum())} reviewed: accuracy {curve[-1]:.4f} "
              f"({step_seconds[-1]:.1f} s)", flush=True)
        if curve[-1] >= until:
            break
    return curve, step_seconds


def reviews_to(curve: list[float], target: float, batch: int, n: int) -> int | None:
    for step, accuracy in enumerate(curve):
        if accuracy >= target - 1e-12:
            return min(step * batch, n)
    return None


def run_dataset(dataset: str, args, encoder) -> tuple[dict, dict]:
    cache = EmbeddingCache(args.cache_dir / "embeddings")
    texts_all, _, _ = texts_and_gold(dataset, args.train, 0)
    keys = set(LLMCache(llm_path(args.cache_dir, dataset)).rows) & {
        text_key(t) for t in texts_all if cache.contains(encoder.encoder_id, t)}
    n_train, _ = available_prefix(dataset, args.train, 0, keys)
    if n_train < 4 * args.batch:
        raise SystemExit(f"{dataset}: only {n_train} train texts are in both caches; run benchmarks.slm_data "
                         f"llm and embed with --train {args.train} --test 0 first")
    texts, gold_names, labels = texts_and_gold(dataset, n_train, 0)
    gold = np.array([labels.index(g) for g in gold_names])
    X = embed_texts(encoder, texts, cache).astype(np.float64)
    llm = load_llm(args.cache_dir, dataset, texts)
    llm_label, llm_confidence = llm.argmax(axis=1), llm.max(axis=1)
    wrong = llm_label != gold
    n, batch = len(gold), args.batch
    print(f"[{dataset}] {n} tasks, LLM accuracy {1 - wrong.mean():.3f}", flush=True)

    random_curves = [static_curve(np.random.default_rng(seed).permutation(n), llm_label, gold, batch)
                     for seed in (0, 1, 2)]
    curves = {
        "(a) random": list(np.mean(random_curves, axis=0)),
        "(b) LLM confidence": static_curve(np.argsort(llm_confidence, kind="stable"), llm_label, gold, batch),
        "(d) bound": static_curve(np.r_[np.flatnonzero(wrong), np.flatnonzero(~wrong)], llm_label, gold, batch),
    }
    curves["(c) ours"], step_seconds = ours_curve(X, llm, gold, labels, batch, encoder.encoder_id, max(TARGETS))
    if args.plus:
        curves["(c+) ours, trained at 0"], _ = ours_curve(X, llm, gold, labels, batch, encoder.encoder_id,
                                                          max(TARGETS), train_first=True)
    row = {"dataset": dataset, "tasks": n, "llm_accuracy": round(float(1 - wrong.mean()), 4)}
    for target in TARGETS:
        strategies = [name for name in STRATEGIES if name in curves]
        needed = {name: reviews_to(curves[name], target, batch, n) for name in strategies}
        for name in strategies:
            row[f"{name.split()[0]} {target:.0%}"] = needed[name] if needed[name] is not None else "—"
        ours, bound, confidence = needed["(c) ours"], needed["(d) bound"], needed["(b) LLM confidence"]
        row[f"c/d {target:.0%}"] = round(ours / bound, 3) if ours is not None and bound else "—"
        row[f"c/b {target:.0%}"] = round(ours / confidence, 3) if ours is not None and confidence else "—"
        if args.plus:
            first = needed["(c+) ours, trained at 0"]
            row[f"c+/d {target:.0%}"] = round(first / bound, 3) if first is not None and bound else "—"
    row["retrain_step_s"] = round(float(np.mean(step_seconds)), 2)
    exact_bound = {f"{t:.0%}": int(max(0, wrong.sum() - np.floor((1 - t) * n + 1e-9))) for t in TARGETS}
    return row, {"curves": {k: [round(v, 5) for v in c] for k, c in curves.items()}, "batch": batch,
                 "exact_bound_reviews": exact_bound, "step_seconds": [round(s, 2) for s in step_seconds]}


def plot(details: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(details), figsize=(5 * len(details), 4), squeeze=False)
    for axis, (dataset, detail) in zip(axes[0], details.items()):
        batch = detail["batch"]
        for name, curve in detail["curves"].items():
            axis.plot(np.arange(len(curve)) * batch, curve, label=name, linewidth=2 if "ours" in name else 1.2)
        for target in TARGETS:
            axis.axhline(target, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(dataset)
        axis.set_xlabel("reviews")
        axis.set_ylabel("dataset accuracy")
        axis.set_ylim(max(0.5, min(min(c) for c in detail["curves"].values()) - 0.02), 1.0)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path.relative_to(REPO_ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--plus", action="store_true",
                        help="also run (c+) (one more training run per step: doubles the run time)")
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    encoder = CachedVectorsOnly(embeddinggemma_encoder_id())
    rows, details = [], {}
    for dataset in args.datasets.split(","):
        row, details[dataset] = run_dataset(dataset, args, encoder)
        rows.append(row)
        print_table(f"reviews to reach 95% / 98% dataset accuracy ({dataset})", [row])
    print_table("reviews to reach 95% / 98% dataset accuracy, batches of "
                f"{args.batch} (a random, b LLM confidence, c ours, d bound)", rows)
    goal = all(isinstance(r["c/d 95%"], float) and r["c/d 95%"] <= 1.5 for r in rows)
    print(f"\ngoal (c) <= 1.5 x (d) at 95% on every set: {'met' if goal else 'NOT met'}")
    plot(details, PLOT_PATH)
    write_results("review_order", {"rows": rows, "goal_met": goal, "details": details,
                                   "train": args.train, "batch": args.batch})


if __name__ == "__main__":
    main()
