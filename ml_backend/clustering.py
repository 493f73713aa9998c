"""Cluster ids for Label Studio's `prediction.cluster`: k-means on text embeddings.

Why: Label Studio's uncertainty sampling serves the least-annotated cluster first, then the
lowest score in it; clusters of similar texts make the least-sure tasks an annotator sees spread
over the kinds of text in the project instead of ten near-duplicates in a row.
"""

from __future__ import annotations

import math

import numpy as np

MAX_CLUSTERS = 20


def cluster_count(n_items: int) -> int:
    """About sqrt(n / 2) clusters (a common rule of thumb), between 1 and MAX_CLUSTERS."""
    if n_items < 4:
        return 1
    return int(min(MAX_CLUSTERS, max(2, round(math.sqrt(n_items / 2)))))


def fit_clusters(embeddings: np.ndarray, k: int | None = None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(one cluster id per row, the (k, dim) centroids), deterministic for the same embeddings;
    a new text gets the id of its nearest centroid (`slm_model.nearest_centroid`)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    n = len(embeddings)
    k = cluster_count(n) if k is None else max(1, min(int(k), n))
    if k <= 1:
        return np.zeros(n, dtype=int), embeddings.mean(axis=0, keepdims=True) if n else np.zeros((0, 0))
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(embeddings)
    return fitted.labels_.astype(int), fitted.cluster_centers_.astype(np.float32)


def cluster_ids(embeddings: np.ndarray, k: int | None = None, *, seed: int = 0) -> np.ndarray:
    """One cluster id per row (0..k-1)."""
    return fit_clusters(embeddings, k, seed=seed)[0]
