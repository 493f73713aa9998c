import numpy as np

from ml_backend.demos import k_medoids, select_self_labeled_demos, text_vectors
from ml_backend.prompt_variants import choose_variant, log_loss


def test_k_medoids_picks_one_text_per_obvious_cluster():
    texts = ["apple pie", "apple tart", "apple cake", "football match", "football game", "足球比赛", "足球运动"]
    medoids = k_medoids(text_vectors(texts), 3, seed=1)
    groups = [{0, 1, 2}, {3, 4}, {5, 6}]
    assert sorted(next(g for g, members in enumerate(groups) if m in members) for m in medoids) == [0, 1, 2]


def test_self_labeled_demos_are_confident_balanced_and_short():
    rng = np.random.default_rng(0)
    texts = [f"review number {i} " + ("great" if i % 2 else "awful") * (1 + i % 3) for i in range(60)]
    texts[5] = "x" * 1000  # too long to be a demonstration
    p_positive = np.where(np.arange(60) % 2 == 1, 0.9, 0.15) + rng.normal(0, 0.02, 60)
    probabilities = np.stack([p_positive, 1 - p_positive], axis=1)
    demos = select_self_labeled_demos(texts, probabilities, k=6, min_confidence=0.7)
    assert len(demos) == 6
    assert [d.label for d in demos].count(0) == 3  # balanced over the two labels
    assert all(d.confidence >= 0.7 for d in demos)
    assert 5 not in {d.index for d in demos}
    assert len({d.index for d in demos}) == 6


def test_no_demo_below_the_confidence_floor():
    probabilities = np.full((10, 2), 0.5)
    assert select_self_labeled_demos([f"t{i}" for i in range(10)], probabilities, k=4, min_confidence=0.6) == []


def test_variant_with_lowest_log_loss_wins():
    gold = np.array([0, 1, 1])
    sharp = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    flat = np.full((3, 2), 0.5)
    best, losses = choose_variant({"sharp": sharp, "flat": flat}, gold)
    assert best == "sharp"
    assert losses["flat"] == log_loss(flat, gold) == np.log(2)
