"""Greedy generation after the cached prefix matches a plain evaluation and leaves the cache intact."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def plain_greedy(default_model_path, tokens: list[int], n_new: int) -> list[int]:
    """Greedy tokens from a fresh llama-cpp-python Llama evaluating the whole prompt."""
    from llama_cpp import Llama

    from ml_backend.llm.llama_cpp_runtime import plain_cpu_layout

    with plain_cpu_layout():  # the runtime's layout: same numbers, no crash on AMX CPUs
        llm = Llama(model_path=str(default_model_path), n_ctx=2048, n_threads=1, verbose=False)
    llm.eval(tokens)
    generated = []
    for _ in range(n_new):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        token = int(np.argmax(logits))
        generated.append(token)
        llm.eval([token])
    return generated


def test_generate_reuses_the_prefix_and_matches_plain_greedy_decoding(llama_runtime, default_model_path):
    rt = llama_runtime
    prefix = rt.prefix_tokens("<|im_start|>system\nList the people named in the text as a JSON array.<|im_end|>\n<|im_start|>user\n")
    task = rt.tokenize("Angela Merkel met Barack Obama in Berlin.", special=False)
    suffix = rt.tokenize("<|im_end|>\n<|im_start|>assistant\n[", special=True)
    continuations = [rt.tokenize("<|im_end|>\n<|im_start|>assistant\n" + w, special=True) for w in ("yes", "no")]
    before = rt.score_continuations(prefix, [task, task[:3]], continuations)

    text = rt.generate(prefix, task, suffix, max_tokens=12)

    expected = rt._model.detokenize(plain_greedy(default_model_path, prefix + task + suffix, 12)).decode("utf-8", "ignore")
    assert text == expected[: len(text)] and text
    assert "Merkel" in text
    # the cached prefix and all continuation sequences are clean again: same scores as before
    np.testing.assert_allclose(rt.score_continuations(prefix, [task, task[:3]], continuations), before, atol=1e-3)
    assert rt.generate(prefix, task, suffix, max_tokens=12) == text
    assert rt.generate(prefix, task, suffix, max_tokens=40, stop=['"]']).count('"]') == 0
