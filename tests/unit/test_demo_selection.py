import numpy as np

from training.demo_selection import select_learned_demos


def _clusters(rng, centers, per, labels):
    X = np.vstack([c + 0.05 * rng.standard_normal((per, len(c))) for c in centers])
    y = np.repeat(labels, per)
    return X, y


def test_demonstrations_are_balanced_over_labels_and_cover_each_labels_modes():
    rng = np.random.default_rng(0)
    # label 0 has two far-apart modes, label 1 one mode; 40 examples each mode
    X, y = _clusters(rng, [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])], 40, [0, 0, 1])
    chosen = select_learned_demos(X, y, k=4, seed=0)
    assert len(chosen) == 4
    assert sorted(y[chosen].tolist()) == [0, 0, 1, 1]
    label0 = [i for i in chosen if y[i] == 0]
    assert {int(np.argmax(X[i])) for i in label0} == {0, 1}  # one medoid per mode, not two from one
    assert [y[i] for i in chosen] == [0, 1, 0, 1]  # round-robin order


def test_unlabeled_rows_are_never_chosen_and_a_small_label_gives_its_share_away():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 5))
    y = np.full(30, -1)
    y[:20] = 0
    y[20] = 1  # a single example of label 1
    chosen = select_learned_demos(X, y, k=6)
    assert len(chosen) == 6  # label 1's share is 3 but it has 1 example: label 0 gets the other 5
    assert all(y[i] >= 0 for i in chosen)
    assert sum(y[i] == 1 for i in chosen) == 1


def test_long_texts_are_avoided_unless_a_label_has_nothing_shorter():
    X = np.eye(4)
    y = np.array([0, 0, 1, 1])
    lengths = np.array([1000, 50, 900, 950])
    chosen = select_learned_demos(X, y, k=2, lengths=lengths, max_chars=300)
    assert 0 not in chosen and 1 in chosen  # label 0's short text
    assert any(i in (2, 3) for i in chosen)  # label 1 has only long ones: still shown


def test_no_labels_means_no_demonstrations():
    assert select_learned_demos(np.ones((3, 2)), np.full(3, -1), k=8) == []


def test_fewer_demonstrations_than_labels_takes_one_each_from_some_labels():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 4))
    y = np.repeat([0, 1, 2, 3], 10)
    chosen = select_learned_demos(X, y, k=2)
    assert len(chosen) == 2 and len({int(y[i]) for i in chosen}) == 2
