"""Does the SLM learn more from the LLM's labels than the LLM knows? Noisy-label learning, the blend
and its calibrated score, with k = 0, 50, 200 gold labels standing in for annotators.

    .venv/bin/python -m benchmarks.slm_data llm      # LLM label distributions, cached (slow, once)
    .venv/bin/python -m benchmarks.slm_data embed    # encoder embeddings, cached (slow, once)
    .venv/bin/python benchmarks/bench_slm.py [--train 1000] [--test 500] [--sizes sst2=400/200,...]
        [--ks 0,50,200] [--seeds 0,1,2] [--encoder embeddinggemma]

Per dataset the first --train train texts are the project's tasks (their gold labels are hidden
except for the k "human-labeled" ones, drawn at random per seed), and the first --test test texts
are scored. Rows, each on the same encoder (EmbeddingGemma-300M by default):

(a) the LLM (cold start: label definitions, full label sequences, estimated-prior matching);
(c) SLM trained naively on the LLM labels (human labels override, weighted up);
(d) SLM on LLM labels minus cleanlab ``find_label_issues`` flags (out-of-fold, default settings);
(e) our noisy-label SLM (GMM divide on out-of-fold losses + consistent pseudo-labels), taught by the
    LLM distribution the training job would choose (`training.llm_teacher`: the corrected one,
    or the read-out where that is clearly more consistent with the embeddings; `teacher` column);
(f) the served blend of (a) and (e), weights and calibrator fit on the k human labels (cross-fitted),
    scored as the backend serves it: the `score` Label Studio gets is the queue's P(correct)
    (`ml_backend.review_priority`: the blend's calibrated top, the LLM's and SLM's confidence,
    disagreement and the text cluster's reviewed accuracy, fit on the k human labels from 30 on);
gold: the SLM trained on every train text's gold label (the ceiling; independent of k).

Metrics on test: accuracy, balanced accuracy, ECE and AUROC of the confidence (for (f): the
served score; `ece_blend_top`/`auroc_blend_top`: the blend's own calibrated top) vs correctness.
`ece_floor` on (f): the mean ECE that a perfectly calibrated score with the same values would show on
the same number of test tasks (outcomes drawn from the score itself), i.e. the sampling noise
below which no ECE can be told apart from calibrated. "LLM label wrong" detection on the train tasks without a human
label: precision/recall of (e)'s P(clean) < 0.5 vs cleanlab's flags. Seeds average k > 0 rows.
`labels_out_of_reach_k0` per dataset: the labels a k = 0 run reports as out of the SLM's reach
(`training.label_coverage`), with the AUROC of the LLM's probability of that label vs the gold label.
Prints tables and writes benchmarks/results/slm.json.
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
from benchmarks.slm_data import (  # noqa: E402
    CONFIGS,
    DEFAULT_CACHE,
    LLMCache,
    available_prefix,
    llm_path,
    load_llm_raw,
    texts_and_gold,
)
from ml_backend.metrics import auroc, balanced_accuracy, expected_calibration_error  # noqa: E402
from ml_backend.review_priority import features as priority_features, priority  # noqa: E402
from ml_backend.bias_correction import divide_out_prior, estimated_prior_bias  # noqa: E402
from ml_backend.slm_model import nearest_centroid, restore_prior  # noqa: E402
from training.llm_teacher import choose_llm_teacher  # noqa: E402
from training.label_coverage import labels_out_of_reach  # noqa: E402
from ml_backend.label_config import parse_label_config  # noqa: E402
from training.blend import BlendOptions, LLMSLMBlend  # noqa: E402
from training.job import fit_queue_priority  # noqa: E402
from ml_backend.encoders import EmbeddingCache, embed_texts  # noqa: E402
from training.slm import SLMClassifier  # noqa: E402


class CachedVectorsOnly:
    """Stands in for an encoder whose vectors are all cached (bench_slm uses cached prefixes only)."""

    def __init__(self, encoder_id: str, dim: int):
        self.encoder_id, self.dim = encoder_id, dim

    def encode(self, texts):
        raise RuntimeError(f"{len(texts)} texts are not in the embedding cache; run benchmarks.slm_data embed")


ROWS = ("(a) LLM", "(c) SLM naive", "(d) SLM cleanlab", "(e) SLM noisy", "(f) blend", "gold SLM")


def quality(gold: np.ndarray, probabilities: np.ndarray, confidence: np.ndarray | None = None) -> dict:
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1) if confidence is None else confidence
    correct = predicted == gold
    return {"accuracy": float(correct.mean()), "balanced_accuracy": balanced_accuracy(gold, predicted),
            "ece": expected_calibration_error(confidence, correct), "auroc": auroc(confidence, correct)}


def ece_floor(score: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Mean ECE of a perfectly calibrated score with these values on this many tasks."""
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(score, rng.random(len(score)) < score) for _ in range(draws)]))


def served_score(X_train: np.ndarray, X_test: np.ndarray, llm_train: np.ndarray, llm_test: np.ndarray,
                 noisy: SLMClassifier, human: np.ndarray, blend: LLMSLMBlend, served) -> np.ndarray:
    """The `score` the backend writes for each test task: the training job's queue priority model
    (`training.job.fit_queue_priority`) applied as `ml_backend.slm_model` applies it."""
    queue = fit_queue_priority(X_train, llm_train, noisy.oof_probabilities_, human, blend)
    cluster = queue.model.cluster_feature(nearest_centroid(X_test, queue.centroids), len(X_test))
    x = priority_features(llm_test, noisy.predict_proba(X_test), served.probabilities, served.score, cluster)
    return priority(queue.model, x)


def detection(flagged: np.ndarray, wrong: np.ndarray) -> dict:
    hits = int((flagged & wrong).sum())
    return {"flagged": int(flagged.sum()), "precision": hits / max(1, int(flagged.sum())),
            "recall": hits / max(1, int(wrong.sum()))}


def run_dataset(dataset: str, args, encoder) -> tuple[list[dict], list[dict], dict]:
    asked_train, asked_test = args.sizes.get(dataset, (args.train, args.test))
    embeddings = EmbeddingCache(args.cache_dir / "embeddings")
    llm_keys = set(LLMCache(llm_path(args.cache_dir, dataset)).rows)
    if not args.encode_missing:  # use the texts both caches hold (a prefix of each split)
        texts_all, _, _ = texts_and_gold(dataset, asked_train, asked_test)
        from ml_backend.encoders import text_key

        llm_keys &= {text_key(t) for t in texts_all if embeddings.contains(encoder.encoder_id, t)}
    n_train, n_test = available_prefix(dataset, asked_train, asked_test, llm_keys)
    texts, gold_names, label_names = texts_and_gold(dataset, n_train, n_test)
    gold = np.array([label_names.index(g) for g in gold_names])
    n = len(texts)
    X = embed_texts(encoder, texts, embeddings).astype(np.float64)
    raw, anchors = load_llm_raw(args.cache_dir, dataset, texts)
    label_bias = estimated_prior_bias(raw, anchors)  # the cold start's label_bias
    llm = divide_out_prior(raw, label_bias)  # = slm_data.load_llm, without reading the cache twice
    train, test = np.arange(n_train), np.arange(n_train, n)
    X_train, X_test, llm_train, llm_test = X[train], X[test], llm[train], llm[test]
    gold_train, gold_test = gold[train], gold[test]
    n_classes = len(label_names)
    llm_train_wrong = llm_train.argmax(axis=1) != gold_train
    teacher = choose_llm_teacher(X_train, llm_train, label_bias)  # as the training job chooses (no labels needed)
    teacher_train = teacher.probabilities
    teacher_test = llm_test if teacher.prior is None else restore_prior(llm_test, np.asarray(teacher.prior))

    ceiling = SLMClassifier(method="human", cross_fit=False).fit(X_train, None, gold_train, n_classes=n_classes)
    fixed = {"(a) LLM": quality(gold_test, llm_test), "gold SLM": quality(gold_test, ceiling.predict_proba(X_test))}
    raw_read_out = quality(gold_test, raw[test])
    rows, detections = [], []
    for k in [k for k in args.ks if k < n_train]:  # k must leave LLM-only tasks to learn from
        seeds = [0] if k == 0 else args.seeds
        per_seed: dict[str, list[dict]] = {name: [] for name in ROWS}
        det: dict[str, list[dict]] = {"ours (e)": [], "cleanlab (d)": []}
        fit_seconds = []
        for seed in seeds:
            human = np.full(n_train, -1)
            if k:
                chosen = np.random.default_rng(1000 + seed).choice(n_train, size=k, replace=False)
                human[chosen] = gold_train[chosen]
            models = {}
            for name, method in (("(c) SLM naive", "naive"), ("(d) SLM cleanlab", "cleanlab"),
                                 ("(e) SLM noisy", "noisy")):
                started = time.perf_counter()
                taught_by = teacher_train if method == "noisy" else llm_train
                models[name] = SLMClassifier(method=method, seed=seed).fit(X_train, taught_by, human)
                if method == "noisy":
                    fit_seconds.append(time.perf_counter() - started)
                per_seed[name].append(quality(gold_test, models[name].predict_proba(X_test)))
            noisy = models["(e) SLM noisy"]
            rows_h = np.flatnonzero(human >= 0)
            blend = LLMSLMBlend(BlendOptions(seed=seed)).fit(teacher_train[rows_h], noisy.oof_probabilities_[rows_h],
                                                             gold_train[rows_h])
            served = blend.predict(teacher_test, noisy.predict_proba(X_test))
            score = served_score(X_train, X_test, teacher_train, teacher_test, noisy, human, blend, served)
            blend_top = quality(gold_test, served.probabilities, served.score)
            per_seed["(f) blend"].append({**quality(gold_test, served.probabilities, score),
                                          "ece_blend_top": blend_top["ece"], "auroc_blend_top": blend_top["auroc"],
                                          "ece_floor": ece_floor(score, seed=seed),
                                          "weights": list(blend.weights_), "calibration": blend.calibration()["method"],
                                          "llm_wrong_auroc": auroc(served.llm_wrong_probability,
                                                                   teacher_test.argmax(1) != gold_test),
                                          "disagreement_rate": float(served.disagreement.mean())})
            per_seed["(a) LLM"].append(fixed["(a) LLM"])
            per_seed["gold SLM"].append(fixed["gold SLM"])
            unlabeled = human < 0
            teacher_wrong = teacher_train.argmax(axis=1) != gold_train  # (e) judges the labels it was taught
            det["ours (e)"].append(detection((noisy.clean_probability_ < 0.5)[unlabeled], teacher_wrong[unlabeled]))
            cleanlab_model = models["(d) SLM cleanlab"]
            cleanlab_implementation = cleanlab_model.cleanlab_implementation_
            det["cleanlab (d)"].append(detection(cleanlab_model.label_issue_mask_[unlabeled],
                                                 llm_train_wrong[unlabeled]))
        for name in ROWS:
            mean = {key: float(np.mean([r[key] for r in per_seed[name]]))
                    for key in ("accuracy", "balanced_accuracy", "ece", "auroc")}
            extra = {}
            if name == "(e) SLM noisy":
                extra = {"teacher": teacher.name}
            if name == "(f) blend":
                extra = {**{key: float(np.mean([r[key] for r in per_seed[name]]))
                            for key in ("ece_floor", "ece_blend_top", "auroc_blend_top")},
                         "weights": "/".join(f"{np.mean([r['weights'][i] for r in per_seed[name]]):.2f}" for i in (0, 1)),
                         "calibration": ",".join(sorted({r["calibration"] for r in per_seed[name]}))}
            rows.append({"dataset": dataset, "k": k, "row": name, **mean, **extra})
        for name, values in det.items():
            detections.append({"dataset": dataset, "k": k, "detector": name,
                               "flagged": float(np.mean([v["flagged"] for v in values])),
                               "precision": float(np.mean([v["precision"] for v in values])),
                               "recall": float(np.mean([v["recall"] for v in values]))})
        rows[-2]["fit_s"] = float(np.mean(fit_seconds))  # on the (f) row: (e)'s fit time incl. cross-fitting
    info = {"dataset": dataset, "n_train": n_train, "labels_out_of_reach_k0": out_of_reach_k0(
                dataset, label_names, teacher_train, raw[test], gold_test), "n_test": int(len(test)), "encoder_id": encoder.encoder_id,
            "llm_train_accuracy": float((~llm_train_wrong).mean()), "raw_read_out": raw_read_out,
            "teacher": teacher.name, "teacher_consistency": teacher.consistency,
            "teacher_train_accuracy": float((teacher_train.argmax(axis=1) == gold_train).mean()),
            "cleanlab_implementation": cleanlab_implementation}
    return rows, detections, info


def out_of_reach_k0(dataset: str, label_names: list[str], teacher_train: np.ndarray, raw_test: np.ndarray,
                    gold_test: np.ndarray) -> list[dict]:
    """The labels a k = 0 run reports as out of reach (`training.label_coverage`), and whether the
    LLM's read-out knows them at all: AUROC of its probability of the label vs "the gold label is it"
    on the test texts (.5: no idea which texts they are, so no score can find them before a human label)."""
    target = parse_label_config((REPO_ROOT / "labeling_configs" / CONFIGS[dataset]).read_text(encoding="utf-8"))
    target = target.classification_targets[0]
    found = labels_out_of_reach(teacher_train, np.full(len(teacher_train), -1), target)
    return [{"label": item.label, "llm_tasks": item.llm_tasks, "tasks": item.tasks,
             "gold_share_test": float((gold_test == label_names.index(item.label)).mean()),
             "llm_auroc_test": auroc(raw_test[:, label_names.index(item.label)],
                                     gold_test == label_names.index(item.label))}
            for item in found]


def goals(rows: list[dict], raw_auroc: dict[str, float]) -> list[dict]:
    """The issue's goals per dataset, from the table rows."""
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        def get(k, name, key="accuracy"):
            return next(r[key] for r in rows if r["dataset"] == dataset and r["k"] == k and r["row"] == name)

        result = {"dataset": dataset}
        for k, share in ((0, 0.5), (200, 0.75)):
            if not any(r["k"] == k and r["dataset"] == dataset for r in rows):
                continue
            naive, ceiling, ours = get(k, "(c) SLM naive"), get(k, "gold SLM"), get(k, "(e) SLM noisy")
            closed = (ours - naive) / (ceiling - naive) if ceiling > naive else float("nan")
            result[f"gap_closed_k{k}"] = closed
            result[f"gap_goal_k{k}_met"] = bool(closed >= share)
            result[f"f_minus_a_bal_k{k}"] = get(k, "(f) blend", "balanced_accuracy") - get(k, "(a) LLM", "balanced_accuracy")
        if any(r["k"] == 0 and r["dataset"] == dataset for r in rows):
            result["f_auroc_k0"] = get(0, "(f) blend", "auroc")
            result["raw_read_out_auroc"] = raw_auroc[dataset]
            result["k0_ranks_at_least_raw"] = bool(result["f_auroc_k0"] >= raw_auroc[dataset])
        ks = sorted({r["k"] for r in rows if r["dataset"] == dataset})
        result["e_beats_d_everywhere"] = all(get(k, "(e) SLM noisy") > get(k, "(d) SLM cleanlab") for k in ks)
        result["f_best_everywhere"] = all(
            get(k, "(f) blend") >= max(get(k, name) for name in ROWS if name not in ("(f) blend", "gold SLM"))
            for k in ks)
        if "f_minus_a_bal_k0" in result:
            result["f_plus5_k0_met"] = bool(result["f_minus_a_bal_k0"] >= 0.05)
        if "f_minus_a_bal_k200" in result:
            result["f_plus10_k200_met"] = bool(result["f_minus_a_bal_k200"] >= 0.10)
            result["f_ece_k200"] = get(200, "(f) blend", "ece")
            result["f_ece_k200_met"] = bool(result["f_ece_k200"] <= 0.03)
            result["f_ece_floor_k200"] = get(200, "(f) blend", "ece_floor")
        out.append(result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--sizes", default="",
                        help="per-dataset train/test sizes overriding --train/--test, e.g. sst2=400/200,ag_news=300/200")
    parser.add_argument("--ks", default="0,50,200")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--encoder", default="embeddinggemma")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--encode-missing", action="store_true",
                        help="encode texts missing from the embedding cache (default: use the cached prefix)")
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    args.sizes = {name: tuple(int(x) for x in size.split("/"))
                  for name, size in (item.split("=") for item in args.sizes.split(",") if item)}
    args.seeds = [int(s) for s in args.seeds.split(",")]
    from ml_backend.encoders import embeddinggemma_encoder_id, load_encoder

    if args.encode_missing or args.encoder != "embeddinggemma":
        encoder = load_encoder(args.encoder)
    else:  # every vector comes from the cache: no need to load the model
        encoder = CachedVectorsOnly(embeddinggemma_encoder_id(), 768)
    rows, detections, infos = [], [], []
    for dataset in args.datasets.split(","):
        dataset_rows, dataset_detections, info = run_dataset(dataset, args, encoder)
        rows += dataset_rows
        detections += dataset_detections
        infos.append(info)
        print_table(f"SLM on {dataset} ({info['n_train']} train tasks, LLM label accuracy "
                    f"{info['llm_train_accuracy']:.3f}; {info['encoder_id']})", dataset_rows)
        print_table(f"'LLM label wrong' detection on {dataset} (train tasks without a human label)",
                    dataset_detections)
        if info["labels_out_of_reach_k0"]:
            print_table(f"Labels out of reach at k = 0 on {dataset}", info["labels_out_of_reach_k0"])
    goal_rows = goals(rows, {info["dataset"]: info["raw_read_out"]["auroc"] for info in infos})
    print_table("Goals", goal_rows)
    write_results("slm", {"ks": args.ks, "seeds": args.seeds, "encoder": args.encoder,
                          "rows": rows, "detection": detections, "goals": goal_rows, "datasets": infos})


if __name__ == "__main__":
    main()
