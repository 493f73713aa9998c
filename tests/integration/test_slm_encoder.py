"""The real default SLM encoder (EmbeddingGemma-300M, prepared by `make encoders`): deterministic,
multilingual, and each text encoded once thanks to the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.encoders import (
    EmbeddingCache,
    EncodeStats,
    embed_texts,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(embeddinggemma):  # the session's EmbeddingGemma (tests/integration/conftest.py)
    return embeddinggemma


def test_embeddings_are_deterministic_normalised_and_cached(encoder, tmp_path):
    texts = ["A warm, funny and moving film.", "这家酒店的服务太差了，房间也很脏。", "Stocks fell 3% on Monday 😀"]
    first = encoder.encode(texts)
    again = encoder.encode(list(reversed(texts)))[::-1]
    assert first.shape == (3, 768) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(again, first, atol=1e-5)  # same vector whatever the batch order

    cache = EmbeddingCache(tmp_path)
    cold = EncodeStats()
    cached_first = embed_texts(encoder, texts, cache, stats=cold)
    warm = EncodeStats()
    cached_second = embed_texts(encoder, texts + texts[:1], cache, stats=warm)
    assert (cold.encoded, cold.cached) == (3, 0)
    assert (warm.encoded, warm.cached) == (0, 4)
    np.testing.assert_array_equal(cached_second[:3], cached_first)
    np.testing.assert_allclose(cached_first, first, atol=1e-5)


def test_similar_meanings_are_closer_across_languages(encoder):
    vectors = encoder.encode(["The room was dirty and the staff were rude.",
                              "房间很脏，服务员态度恶劣。",
                              "The team won the championship last night."])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
