"""The multi-sequence batched scorer computes exactly what a plain full-prompt evaluation computes."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.predictor import LabelScorer, PredictionOptions
from tests.conftest import LABELING_CONFIGS

pytestmark = pytest.mark.integration


def reference_logprob(default_model_path, tokens: list[int], n_context: int) -> float:
    """log P(tokens[n_context:] | tokens[:n_context]) from one plain llama-cpp-python evaluation."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(default_model_path), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    total = 0.0
    for position in range(n_context, len(tokens)):
        row = scores[position - 1]
        total += row[tokens[position]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total


def test_batched_tree_scoring_matches_plain_evaluation(llama_runtime, default_model_path):
    target = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text()).targets[0]
    scorer = LabelScorer(llama_runtime, PredictionOptions(bias_calibration="none"))
    prompt = scorer.prompt(target)
    prefix = llama_runtime.prefix_tokens(prompt.prefix)
    continuations = scorer.continuations(target, prompt)
    texts = ["NASA launches a new telescope to study distant galaxies.", "Oil prices rise as markets slump."]
    tasks = [llama_runtime.tokenize(t, special=False) for t in texts]

    batched = llama_runtime.score_continuations(prefix, tasks, continuations)

    for i, task in enumerate(tasks):
        for j in (0, 3):  # World and Sci/Tech: Sci/Tech is several tokens
            expected = reference_logprob(default_model_path, prefix + task + continuations[j], len(prefix) + len(task))
            assert batched[i, j] == pytest.approx(expected, abs=0.05)
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
