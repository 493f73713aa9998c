"""Choosing in-context demonstrations (pure functions on texts and probabilities).

Round one (CORAL's self-labeling, before any human label): pick k *diverse* tasks — k-medoids
on cheap character n-gram TF-IDF vectors, which work for English and Chinese alike — and
label them with the LLM itself, keeping only confident ones and balancing over labels, so the
prompt shows the model what each label looks like in this project's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class DemoCandidate:
    index: int  # position in the input texts
    label: int  # label index (argmax of the probabilities)
    confidence: float


def text_vectors(texts: list[str], *, max_features: int = 20000) -> np.ndarray:
    """L2-normalized char 1–3-gram TF-IDF vectors: language-agnostic, no model, milliseconds."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), max_features=max_features, sublinear_tf=True)
    return vectorizer.fit_transform(texts).toarray().astype(np.float32)


def k_medoids(vectors: np.ndarray, k: int, *, seed: int = 0, iterations: int = 20) -> list[int]:
    """Indices of k medoids (real rows, not averages) under cosine distance; alternating k-medoids.

    Initialized with k-means++ style farthest-point sampling, so the medoids spread over the data.
    """
    n = len(vectors)
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    similarity = vectors @ vectors.T
    distance = 1.0 - similarity
    medoids = [int(rng.integers(n))]
    while len(medoids) < k:
        nearest = distance[:, medoids].min(axis=1)
        weights = nearest**2
        if weights.sum() <= 0:
            remaining = [i for i in range(n) if i not in medoids]
            medoids.append(int(rng.choice(remaining)))
            continue
        medoids.append(int(rng.choice(n, p=weights / weights.sum())))
    for _ in range(iterations):
        assignment = np.argmin(distance[:, medoids], axis=1)
        updated = []
        for cluster in range(k):
            members = np.flatnonzero(assignment == cluster)
            if len(members) == 0:
                updated.append(medoids[cluster])
                continue
            within = distance[np.ix_(members, members)].sum(axis=1)
            updated.append(int(members[np.argmin(within)]))
        if updated == medoids:
            break
        medoids = updated
    return medoids


def select_self_labeled_demos(
    texts: list[str],
    probabilities: np.ndarray,
    *,
    k: int = 8,
    pool_factor: int = 4,
    min_confidence: float = 0.6,
    max_chars: int = 300,
    seed: int = 0,
) -> list[DemoCandidate]:
    """Up to k demonstrations: diverse (medoids of a k·pool_factor clustering), confident, label-balanced.

    probabilities: shape (n_texts, n_labels), the LLM's (bias-corrected) label probabilities.
    Texts longer than max_chars are avoided (they make the shared prefix long and slow).
    Returns candidates ordered round-robin over labels, so no label dominates the prompt's end.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    eligible = [i for i, text in enumerate(texts) if 0 < len(text) <= max_chars]
    if not eligible:
        eligible = list(range(len(texts)))
    vectors = text_vectors([texts[i] for i in eligible])
    medoid_rows = k_medoids(vectors, min(len(eligible), k * pool_factor), seed=seed)
    pool = [eligible[row] for row in medoid_rows]

    n_labels = probabilities.shape[1]
    per_label: dict[int, list[DemoCandidate]] = {label: [] for label in range(n_labels)}
    for index in pool:
        label = int(np.argmax(probabilities[index]))
        confidence = float(probabilities[index, label])
        if confidence >= min_confidence:
            per_label[label].append(DemoCandidate(index=index, label=label, confidence=confidence))
    for candidates in per_label.values():
        candidates.sort(key=lambda c: -c.confidence)

    return round_robin(per_label, k)


def round_robin(per_label: dict[int, list[T]], k: int) -> list[T]:
    """Up to k items taken one label at a time, in the dict's label order, each label's list front
    first: no label dominates the prompt's end. Consumes the lists."""
    chosen: list[T] = []
    while len(chosen) < k and any(per_label.values()):
        for items in per_label.values():
            if items and len(chosen) < k:
                chosen.append(items.pop(0))
    return chosen
