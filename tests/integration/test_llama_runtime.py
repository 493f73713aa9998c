"""The multi-sequence batched scorer computes exactly what a plain full-prompt evaluation computes."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.predictor import LabelScorer, PredictionOptions
from ml_backend.scoring import label_probabilities
from tests.conftest import LABELING_CONFIGS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference_llm(default_model_path):
    from llama_cpp import Llama

    from ml_backend.llm.llama_cpp_runtime import plain_cpu_layout

    with plain_cpu_layout():  # the runtime's layout: same numbers, no crash on AMX CPUs
        return Llama(model_path=str(default_model_path), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)


def reference_logprob(llm, tokens: list[int], n_context: int) -> float:
    """log P(tokens[n_context:] | tokens[:n_context]) from one plain, full-prompt evaluation."""
    llm.reset()
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    total = 0.0
    for position in range(n_context, len(tokens)):
        row = scores[position - 1]
        total += row[tokens[position]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total


def test_batched_tree_scoring_matches_plain_evaluation(llama_runtime, reference_llm):
    target = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text()).targets[0]
    scorer = LabelScorer(llama_runtime, PredictionOptions(bias_calibration="none"))
    prompt = scorer.prompt(target)
    prefix = llama_runtime.prefix_tokens(prompt.prefix)
    continuations = scorer.continuations(target, prompt)
    assert len(continuations[3]) > len(continuations[0])  # Sci/Tech takes more tokens than World
    texts = ["NASA launches a new telescope to study distant galaxies.", "Oil prices rise as markets slump."]
    tasks = [llama_runtime.tokenize(t, special=False) for t in texts]

    batched = llama_runtime.score_continuations(prefix, tasks, continuations)

    # Tree batching is exact: each continuation alone in its own call gives the same numbers
    # (with the runtime's plain weight layout; llama.cpp's repacked kernels differ by batch size).
    one_at_a_time = np.array(
        [[llama_runtime.score_continuations(prefix, [task], [c])[0, 0] for c in continuations] for task in tasks]
    )
    np.testing.assert_allclose(batched, one_at_a_time, atol=1e-3)

    for i, task in enumerate(tasks):
        expected = np.array(
            [reference_logprob(reference_llm, prefix + task + c, len(prefix) + len(task)) for c in continuations]
        )
        # An independent full-prompt evaluation agrees up to the float noise that evaluating the
        # prefix in a separate batch causes in the quantized kernels. That noise shifts all labels
        # of a task together (seen: 0.3-0.5 nats on one CPU, < 0.35 on another); what decides the
        # prediction is the differences between labels, which agree far more tightly (< 0.15).
        np.testing.assert_allclose(batched[i], expected, atol=1.0)
        np.testing.assert_allclose(batched[i] - batched[i].mean(), expected - expected.mean(), atol=0.3)
        np.testing.assert_allclose(label_probabilities(batched[i : i + 1]), label_probabilities(expected[None]), atol=0.08)
    # The prefix cache is reused across calls without drift.
    np.testing.assert_allclose(llama_runtime.score_continuations(prefix, tasks, continuations), batched, atol=1e-3)


def test_labels_sharing_a_first_token_are_told_apart(llama_runtime):
    config = """<View><Text name="t" value="$t"/><Choices name="c" toName="t">
      <Choice value="Sci"/><Choice value="Sci/Tech"/><Choice value="Sports"/></Choices></View>"""
    target = parse_label_config(config).targets[0]
    scorer = LabelScorer(llama_runtime, PredictionOptions(bias_calibration="none"))
    probabilities = scorer.probabilities(target, ["A new chip doubles laptop battery life."])
    assert probabilities.shape == (1, 3)
    assert abs(probabilities[0, 0] - probabilities[0, 1]) > 1e-3  # not one shared first-token number
    first_token = LabelScorer(llama_runtime, PredictionOptions(bias_calibration="none", scoring_mode="first_token"))
    p_first = first_token.probabilities(target, ["A new chip doubles laptop battery life."])
    assert p_first[0, 0] == pytest.approx(p_first[0, 1])  # the LabelFast read-out cannot tell them apart
