"""The OpenAI-compatible provider against a REAL local server: llama-cpp-python's
`python -m llama_cpp.server` with the embedded default GGUF, started by a fixture on loopback.

* the same labels (classification, 30 tasks) and the same entities (NER) as the in-process runtime
  computing the same read-out, with label probabilities within a measured tolerance;
* the accuracy cost of the first-token read-out (what `auto` picks on this server) against the
  full-sequence scores of the in-process runtime, on the same tasks;
* echo mode (forced) lines up after the BOS workaround and matches the in-process full-sequence score;
* the shared prefix is reused by the server (first request vs later ones);
* faults: server stopped mid-batch, slower than the timeout, 500s, no logprobs → clear errors,
  bounded retries, no crash, one prediction per task.

Tolerance (measured here, 2 shared CPU cores, 1 thread each side): see PROBABILITY_TOLERANCE. Both
sides use llama.cpp's plain CPU weight layout (`ml_backend.llm.serve_gguf`), but the server splits a
prompt into batches its own way (its prefix reuse, its n_batch), and a batched prompt pass and a
one-token step differ by a few hundredths of a nat: labels agree except on near-ties inside that noise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pytest

from ml_backend.config import Settings
from ml_backend.errors import ModelServerUnavailable, ModelServerUnsupported
from ml_backend.label_config import parse_label_config
from ml_backend.llm import connect_server
from ml_backend.llm.provider import Continuation, RuntimeProvider
from ml_backend.ner.extractor import NerExtractor
from ml_backend.predictor import LabelScorer, PredictionOptions
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.model_server import FaultProxy, llama_cpp_server

pytestmark = pytest.mark.integration

PROBABILITY_TOLERANCE = 0.08  # measured: max |Δp| 0.054 and 0.048 over 50 tasks (two runs; CI scores 30)
TASKS_PER_SET = 15  # sst2 + ag_news: 30 tasks, three scoring passes each (~80 s on 2 cores)
THREADS = int(os.environ.get("LLM_THREADS", "1"))


@pytest.fixture(scope="module")
def model_server(default_model_path, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp_server(default_model_path, log_path, threads=THREADS) as (url, _process):
        yield url


def served_settings(url: str, cache_dir, **overrides) -> Settings:
    return Settings(llm_base_url=url, cache_dir=cache_dir, llm_retry_backoff_s=0.05, **overrides)


@pytest.fixture(scope="module")
def provider(model_server, model_cache_dir):
    return connect_server(served_settings(model_server, model_cache_dir, llm_max_concurrency=2))


class FirstTokenReference(RuntimeProvider):
    """The in-process runtime computing the read-out the server gives: lead + the answer's first token."""

    def _score_labels(self, prefix, task_texts, continuations):
        first = [Continuation(c.lead, c.answer, first_token_only=bool(c.answer)) for c in continuations]
        return super()._score_labels(prefix, task_texts, first)


def classification_tasks():
    cases = []
    for dataset, config in (("sst2", "sentiment_en.xml"), ("ag_news", "topic_en.xml")):
        target = parse_label_config((LABELING_CONFIGS / config).read_text(encoding="utf-8")).targets[0]
        rows = load_jsonl(shared_path("data", dataset, "test.jsonl"), limit=TASKS_PER_SET)
        cases.append((dataset, target, rows))
    return cases


def test_the_mode_is_detected_and_logged(model_server, model_cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="ml_backend.llm.openai_provider"):
        provider = connect_server(served_settings(model_server, model_cache_dir))
    assert provider.mode == "first_token" and provider.server_mode.tokenizer == "extras"
    assert any("event=llm_provider_mode mode=first_token" in r.getMessage() for r in caplog.records)


def test_classification_gives_the_in_process_labels_on_30_tasks(provider, llama_runtime):
    options = PredictionOptions(bias_calibration="none", scoring_mode="first_token", max_text_tokens=128)
    served = LabelScorer(provider, options)
    reference = LabelScorer(FirstTokenReference(llama_runtime), options)
    full_sequence = LabelScorer(llama_runtime, dataclasses.replace(options, scoring_mode="full_sequence"))
    worst, report, flips = 0.0, [], []
    for dataset, target, rows in classification_tasks():
        texts = [row["text"] for row in rows]
        gold = [[o.result_value for o in target.options].index(row["label"]) for row in rows]
        started = time.perf_counter()
        p_served = served.probabilities(target, texts)
        served_s = time.perf_counter() - started
        p_reference = reference.probabilities(target, texts)
        p_full = full_sequence.probabilities(target, texts)
        assert p_served.shape == (len(rows), len(target.options))
        top_two = np.sort(p_reference, axis=1)[:, -2:]
        margin = top_two[:, 1] - top_two[:, 0]
        differ = p_served.argmax(1) != p_reference.argmax(1)
        # Same labels, except near-ties inside the numeric noise (the server runs llama.cpp's
        # repacked CPU kernels, our runtime the plain layout: up to ~0.1 nats, llama_cpp_runtime.py).
        assert np.all(margin[differ] < PROBABILITY_TOLERANCE), (dataset, margin[differ])
        flips.append(int(differ.sum()))
        worst = max(worst, float(np.abs(p_served - p_reference).max()))
        report.append(f"{dataset}: served {served_s:.1f} s, accuracy first-token {np.mean(p_served.argmax(1) == gold):.2f}"
                      f" vs full-sequence {np.mean(p_full.argmax(1) == gold):.2f},"
                      f" agreement {np.mean(p_served.argmax(1) == p_full.argmax(1)):.2f}")
    print("\n" + "\n".join(report) + f"\nmax |p_served - p_in_process| = {worst:.4f}, near-tie flips {flips}")
    assert worst < PROBABILITY_TOLERANCE


def test_ner_gives_the_in_process_entities(provider, llama_runtime):
    target = parse_label_config((LABELING_CONFIGS / "ner_zh.xml").read_text(encoding="utf-8")).span_targets[0]
    texts = [row["text"] for row in load_jsonl(shared_path("data", "cluener", "test.jsonl"), limit=6)]
    options = PredictionOptions(bias_calibration="none")
    served = NerExtractor(LabelScorer(provider, options)).predict(target, texts)
    reference = NerExtractor(LabelScorer(FirstTokenReference(llama_runtime), options)).predict(target, texts)
    served_entities = [[(e.start, e.end, e.label) for e in t.entities] for t in served]
    reference_entities = [[(e.start, e.end, e.label) for e in t.entities] for t in reference]
    common = sum(len(set(a) & set(b)) for a, b in zip(served_entities, reference_entities))
    f1 = 2 * common / max(1, sum(map(len, served_entities)) + sum(map(len, reference_entities)))
    same_texts = sum(a == b for a, b in zip(served_entities, reference_entities))
    print(f"\nNER: {same_texts}/{len(texts)} texts with identical entities, entity F1 served vs in-process {f1:.2f}")
    # measured over three runs: 5/6 identical (F1 0.94), 4/6 (F1 0.76), 3/6 (F1 0.61). The server's
    # numbers depend on how its prefix reuse splits the prompt into batches, so greedy NER generation
    # diverges after the first near-tie token; the in-process run against itself is 1.0.
    assert same_texts >= 2 and f1 >= 0.5
    assert sum(map(len, served_entities)) > 0
    same = [i for i, (a, b) in enumerate(zip(served_entities, reference_entities)) if a == b]
    assert max(abs(served[i].score - reference[i].score) for i in same) < PROBABILITY_TOLERANCE


def test_forced_echo_mode_lines_up_after_bos_and_matches_full_sequence_scores(model_server, model_cache_dir, llama_runtime):
    provider = connect_server(served_settings(model_server, model_cache_dir, llm_logprobs_mode="echo"))
    assert provider.mode == "echo" and provider.server_mode.prompt_lead == "<|endoftext|>"
    prefix, task = "<|im_start|>user\nSentiment of: ", "a great film"
    continuations = [Continuation("<|im_end|>\n<|im_start|>assistant\n", "positive"),
                     Continuation("<|im_end|>\n<|im_start|>assistant\n", "negative")]
    served = provider.score_labels(prefix, [task], continuations)
    local = RuntimeProvider(llama_runtime).score_labels("<|endoftext|>" + prefix, [task], continuations)
    print(f"\necho served {served} in-process {local}")
    # measured: these sums over the whole echoed prompt (~-56 and -60 nats) were 0.05-0.16 nats apart
    # (0.1-0.3 %: the noise of a batched prompt pass, summed over ~30 tokens), the labels' difference 0.12
    np.testing.assert_allclose(served, local, rtol=0.005)
    np.testing.assert_allclose(served[0, 0] - served[0, 1], local[0, 0] - local[0, 1], atol=0.2)


def test_the_shared_prefix_is_reused_by_the_server(provider):
    from ml_backend.llm.openai_provider import timed_probe

    prompt = "<|im_start|>system\n" + f"Fresh prefix {time.time()}. " + "Label the news by topic. " * 40
    first, *later = timed_probe(provider, prompt + "<|im_end|>\n", repeats=3)
    print(f"\nprefix cache: first {first:.2f} s, later {[round(s, 2) for s in later]} s")
    assert min(later) < first


def test_faults_give_clear_errors_bounded_retries_and_one_prediction_per_task(model_server, model_cache_dir, llama_runtime):
    proxy = FaultProxy(model_server)
    try:
        settings = served_settings(proxy.url, model_cache_dir, llm_retries=2, llm_timeout_s=5, llm_breaker_failures=100)
        proxy.delay_s = 8.0  # slower than LLM_TIMEOUT_S (a real request takes about 1 s here)
        provider = connect_server(settings)
        target = classification_tasks()[0][1]
        scorer = LabelScorer(provider, PredictionOptions(bias_calibration="none", scoring_mode="first_token"))

        for fault in ("500", "slow"):
            proxy.fault, before = fault, proxy.completions
            with pytest.raises(ModelServerUnavailable) as error:
                scorer.probabilities(target, ["a fine film"])
            assert proxy.completions - before == 3, fault  # 1 + LLM_RETRIES attempts, no more
            assert ("HTTP 500" if fault == "500" else "LLM_TIMEOUT_S=5") in error.value.message
        proxy.fault = "no_logprobs"
        with pytest.raises(ModelServerUnsupported, match="top_logprobs"):
            scorer.probabilities(target, ["a fine film"])
        with pytest.raises(ModelServerUnsupported, match="no log-probabilities"):
            connect_server(settings)  # at start-up (and so at /setup): a clear error, never constant scores
        proxy.fault = None
        assert scorer.probabilities(target, ["a fine film"]).shape == (1, 2)
    finally:
        proxy.close()


def test_server_stopped_mid_batch_keeps_every_task_slot(default_model_path, model_cache_dir, tmp_path):
    from ml_backend.inference import Inference
    from ml_backend.profile import Profiles
    from ml_backend.model_store import ModelStore

    config = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
    with llama_cpp_server(default_model_path, tmp_path / "server.log", threads=THREADS) as (url, process):
        settings = served_settings(url, model_cache_dir, model_dir=tmp_path / "store", bias_calibration="none",
                                   llm_retries=1, llm_breaker_failures=2, llm_breaker_cooldown_s=60, llm_max_concurrency=1)
        provider = connect_server(settings)
        profiles = Profiles(settings, ModelStore(settings.model_dir))
        profile = profiles.resolve("manual", config)
        inference = Inference(lambda: provider)
        score = inference.task_scorer(profile, keep_failed=True)
        rows = load_jsonl(shared_path("data", "sst2", "test.jsonl"), limit=6)
        tasks = [{"id": i, "data": {"text": r["text"]}} for i, r in enumerate(rows)]
        first = score(tasks[:2])
        os.killpg(process.pid, 9)
        process.wait(timeout=20)
        started = time.perf_counter()
        rest = score(tasks[2:])
        elapsed = time.perf_counter() - started
    assert len(first) == 2 and all(p["result"] for p in first)
    assert len(rest) == 4 and all(p["result"] == [] and p["model_version"].endswith("-pending") for p in rest)
    print(f"\nserver killed: 4 tasks answered with placeholders in {elapsed:.2f} s (breaker open after 2 failures)")
    assert elapsed < 10
