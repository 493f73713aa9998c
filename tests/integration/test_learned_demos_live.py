"""Round two (issue 11, item 6) on the real default LLM and the real EmbeddingGemma encoder: the
cross-fitted evaluation scores every human-labeled task under a prompt that holds other tasks'
labels, its decision is the pure rule's, and the adopted prompt is balanced over labels.
(Whether it is adopted depends on the texts; the training-loop tests check both outcomes.)"""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.predictor import LabelScorer, PredictionOptions
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from training.learned_demos import corrected_under, decide, evaluate_learned_demos, learned_prompt

pytestmark = pytest.mark.integration

N_TASKS = 32


def test_learned_demonstrations_are_evaluated_cross_fitted_on_the_real_llm(llama_runtime, embeddinggemma):
    target = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text(encoding="utf-8")).targets[0]
    rows = load_jsonl(shared_path("data", "ag_news", "train.jsonl"), limit=N_TASKS)
    texts = [row["text"] for row in rows]
    gold = np.array([target.result_values.index(row["label"]) for row in rows])
    scorer = LabelScorer(llama_runtime, PredictionOptions(bias_calibration="prior_matching", max_text_tokens=128),
                         memo_size=1024)
    serving, _ = corrected_under(scorer, target, texts, ())  # the zero-shot prompt serves
    embeddings = embeddinggemma.encode(texts)

    evaluation = evaluate_learned_demos(scorer, target, texts, embeddings, gold, serving, k=4)

    assert evaluation.n_eval == N_TASKS and sorted(evaluation.cross_fitted) == list(range(N_TASKS))
    learned = np.stack([evaluation.cross_fitted[i] for i in range(N_TASKS)])
    np.testing.assert_allclose(learned.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(learned - serving).max() > 0.05, "the demonstrations reached the prompt"
    adopt, reason, stats = decide(gold, serving.argmax(axis=1), learned.argmax(axis=1))
    assert (adopt, reason, stats["wins"], stats["losses"]) == (evaluation.adopt, evaluation.reason,
                                                              evaluation.wins, evaluation.losses)
    print(f"ag_news, {N_TASKS} tasks: {evaluation.as_dict()}")

    demo_rows, prompt = learned_prompt(scorer, target, texts, embeddings, gold, np.arange(N_TASKS), k=4, sample_size=16)
    assert sorted({int(gold[row]) for row in demo_rows}) == [0, 1, 2, 3]  # one per label
    assert [d["text"] for d in prompt["demonstrations"]] == [texts[row] for row in demo_rows]
    assert len(prompt["label_bias"]) == 4 and abs(sum(prompt["label_bias"]) - 1.0) < 1e-3
