"""The OpenAI-compatible provider against a fake server (httpx.MockTransport): label scores summed
from the echoed prompt logprobs by text offsets, the first-token fallback, no logprobs → a clear
error, bounded retries, the circuit breaker, timeouts, and /predict keeping every task's slot."""

from __future__ import annotations

import json
import os
import sys

import httpx
import numpy as np
import pytest

from ml_backend.errors import ModelServerUnavailable, ModelServerUnsupported
from ml_backend.llm.openai_provider import OpenAICompatibleProvider
from ml_backend.llm.prompts import ChatFormat
from ml_backend.llm.provider import Continuation
from ml_backend.llm.server_client import CircuitBreaker, ClientPolicy, ServerClient
from tests.conftest import QWEN_LIKE_TEMPLATE


def char_logprob(ch: str) -> float:
    """The fake model: each character is a token; its log-probability depends only on the character."""
    return -0.1 * (1 + ord(ch) % 7)


class FakeServer:
    """A vLLM-like server: characters are tokens, offsets index the prompt, /tokenize exists.

    misaligned: echo shifts every value one position (llama-cpp-python without BOS);
    logprobs=False: answers without logprobs; failures: status codes returned before answering."""

    def __init__(self, *, misaligned=False, logprobs=True, echo=True, tokenize=True) -> None:
        self.misaligned, self.logprobs, self.echo, self.tokenize = misaligned, logprobs, echo, tokenize
        self.failures: list[int | Exception] = []
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, text="overloaded")
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake"}]})
        if path == "/tokenize" and self.tokenize:
            return httpx.Response(200, json={"tokens": [ord(c) for c in body["prompt"]]})
        if path == "/detokenize" and self.tokenize:
            return httpx.Response(200, json={"prompt": "".join(chr(t) for t in body["tokens"])})
        if path == "/v1/completions":
            return httpx.Response(200, json=self.complete(body))
        return httpx.Response(404, text="not found")

    def complete(self, body: dict) -> dict:
        prompt = body["prompt"]
        top = {"yes": -0.2, "no": -1.8, "S": -0.4, "W": -2.5, "B": -3.0}
        if not self.logprobs or "logprobs" not in body:
            return {"choices": [{"text": "!", "logprobs": None}], "usage": {"completion_tokens": 1}}
        if not body.get("echo"):
            bang = char_logprob("!")
            return {"choices": [{"text": "!", "logprobs": {"tokens": ["!"], "token_logprobs": [bang],
                                                           "text_offset": [len(prompt)], "top_logprobs": [{**top, "!": bang}]}}],
                    "usage": {"completion_tokens": 1}}
        if not self.echo:
            return {"choices": [{"text": prompt + "!", "logprobs": None}], "usage": {"completion_tokens": 1}}
        text = prompt + "x"  # echo generates one more token after the prompt
        values = [None] + [char_logprob(c) for c in text[1:]]  # the same values generation gives
        if self.misaligned:
            values = values[1:] + [-9.0]
        return {"choices": [{"text": text, "logprobs": {"tokens": list(text), "token_logprobs": values,
                                                          "text_offset": list(range(len(text))), "top_logprobs": None}}],
                "usage": {"completion_tokens": 1}}


def provider_on(server: FakeServer, *, mode="auto", policy=ClientPolicy(retries=0, backoff_s=0), sleeps=None):
    client = ServerClient("http://fake", policy=policy, transport=httpx.MockTransport(server),
                          sleep=(sleeps.append if sleeps is not None else lambda s: None))
    return OpenAICompatibleProvider(client, model="fake", chat_format=ChatFormat(template=QWEN_LIKE_TEMPLATE),
                                    name="fake-openai", mode=mode, max_concurrency=2)


def test_echo_mode_sums_the_continuations_prompt_logprobs_found_by_text_offsets():
    server = FakeServer()
    provider = provider_on(server)
    assert provider.mode == "echo" and provider.server_mode.offsets == "prompt"
    continuations = [Continuation("<|im_end|>\n", "Sports"), Continuation("<|im_end|>\n", "Sci", end="<|im_end|>"),
                     Continuation("Q? ", "yes", first_token_only=True)]
    scores = provider.score_labels("prefix ", ["task one", "😀 𠮷"], continuations)
    for row in scores:
        np.testing.assert_allclose(row, [
            sum(map(char_logprob, "<|im_end|>\nSports")),
            sum(map(char_logprob, "<|im_end|>\nSci<")),  # the end marker's first token only
            sum(map(char_logprob, "Q? y")),  # first_token_only: the lead and the answer's first token
        ])
    prompts = [b["prompt"] for path, b in server.requests if path == "/v1/completions" and b.get("echo")]
    assert all(p.startswith("prefix ") for p in prompts[-6:])  # the shared prefix is sent as is
    assert all(b["max_tokens"] == 1 for _, b in server.requests if "max_tokens" in b)  # 0 = unlimited on llama-cpp-python


def test_misaligned_echo_falls_back_to_first_token_top_logprobs():
    server = FakeServer(misaligned=True)
    provider = provider_on(server)
    assert provider.mode == "first_token" and provider.server_mode.reason == "echo_unsupported_or_misaligned"
    scores = provider.score_labels("p ", ["t"], [Continuation("A: ", "Sports"), Continuation("A: ", "World"),
                                                 Continuation("A: ", "Unknown")])
    np.testing.assert_allclose(scores[0], [-0.4, -2.5, -3.0])  # 'U' is not in the top k: the smallest shown
    scoring = [b for path, b in server.requests if path == "/v1/completions" and b["logprobs"] == 20]
    assert len(scoring) == 1 and not scoring[0]["echo"]  # one request per distinct lead per task
    with pytest.raises(ModelServerUnsupported):
        provider_on(FakeServer(misaligned=True), mode="echo")


def test_a_server_without_logprobs_is_a_clear_error_not_constant_scores():
    with pytest.raises(ModelServerUnsupported, match="no log-probabilities"):
        provider_on(FakeServer(logprobs=False))


def test_server_without_tokenizer_uses_text_approximations():
    provider = provider_on(FakeServer(tokenize=False))
    assert provider.server_mode.tokenizer == "none"
    assert provider.truncate("word " * 100, 5) == ("word " * 100)[:20]
    bags = provider.domain_context_inputs(["alpha beta", "gamma delta"], n_inputs=3)
    assert len(bags) == 3 and all(set(b.split()) <= {"alpha", "beta", "gamma", "delta"} for b in bags)
    with_tokenizer = provider_on(FakeServer())
    assert with_tokenizer.truncate("abcdefghij", 4) == "abcd"
    assert with_tokenizer.some_continuation_is_a_prefix(["Sci", "Sci/Tech"])


def test_5xx_and_429_are_retried_with_exponential_backoff_then_fail_clearly():
    server = FakeServer()
    sleeps: list[float] = []
    provider = provider_on(server, policy=ClientPolicy(retries=3, backoff_s=0.1, breaker_failures=100), sleeps=sleeps)
    sent = provider.client.requests_sent
    server.failures = [500, 429, 503]
    provider.score_labels("p ", ["t"], [Continuation("A: ", "yes")])
    assert provider.client.requests_sent - sent == 4
    assert [round(s / 0.1, 1) >= 2 ** i for i, s in enumerate(sleeps)] == [True] * 3
    assert all(s <= 0.1 * 2 ** i * 1.25 for i, s in enumerate(sleeps))
    server.failures = [500] * 10
    with pytest.raises(ModelServerUnavailable, match="after 4 attempt"):
        provider.score_labels("p ", ["t"], [Continuation("A: ", "yes")])
    server.failures = [400]  # the request's fault: not retried
    with pytest.raises(Exception, match="HTTP 400"):
        provider.completion("x", echo=False, logprobs=1)


def test_timeouts_are_retried_boundedly_and_the_message_names_the_setting():
    server = FakeServer()
    provider = provider_on(server, policy=ClientPolicy(retries=1, backoff_s=0, timeout_s=0.5))
    server.failures = [httpx.ReadTimeout("slow")] * 2
    sent = provider.client.requests_sent
    with pytest.raises(ModelServerUnavailable, match="LLM_TIMEOUT_S=0.5"):
        provider.generate("p", "t", "s", max_tokens=4)
    assert provider.client.requests_sent - sent == 2


def test_the_circuit_breaker_fails_fast_after_consecutive_failures_then_tries_again():
    now = [0.0]
    breaker = CircuitBreaker(2, 10.0, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert not breaker.allow() and breaker.is_open
    now[0] = 11.0
    assert breaker.allow() and not breaker.allow()  # half-open: one trial at a time
    breaker.record_failure()  # the trial failed: open again
    assert not breaker.allow()
    now[0] = 22.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow() and not breaker.is_open

    server = FakeServer()
    provider = provider_on(server, policy=ClientPolicy(retries=0, breaker_failures=2, breaker_cooldown_s=60))
    server.failures = [httpx.ConnectError("refused")] * 2
    for _ in range(2):
        with pytest.raises(ModelServerUnavailable, match="connection failed"):
            provider.generate("p", "t", "s", max_tokens=4)
    sent = provider.client.requests_sent
    with pytest.raises(ModelServerUnavailable, match="fail fast"):
        provider.generate("p", "t", "s", max_tokens=4)
    assert provider.client.requests_sent == sent  # nothing went out


def test_predict_keeps_every_tasks_slot_when_the_server_fails_on_some(settings, keyword_runtime):
    """The /predict scorer answers len(tasks) predictions; failed tasks get the pending placeholder."""
    from ml_backend.app import create_app
    from ml_backend.llm.provider import provider_for

    provider = provider_for(keyword_runtime)
    original = provider._score_labels

    def flaky(prefix, task_texts, continuations):
        if any("broken" in t for t in task_texts):
            raise ModelServerUnavailable("The model server at http://x did not answer", hint="start it")
        return original(prefix, task_texts, continuations)

    provider._score_labels = flaky
    client = create_app(settings, runtime_loader=lambda: keyword_runtime).test_client()
    config = '<View><Text name="text" value="$text"/><Choices name="s" toName="text"><Choice value="sports"/><Choice value="world"/></Choices></View>'
    assert client.post("/setup", json={"project": "3.1", "schema": config}).status_code == 200
    tasks = [{"id": 1, "data": {"text": "sports news"}}, {"id": 2, "data": {"text": "broken text"}},
             {"id": 3, "data": {"text": "world news"}}]
    answer = client.post("/predict", json={"tasks": tasks, "project": "3.1", "label_config": config}).get_json()
    results = answer["results"]
    assert len(results) == 3
    assert results[1]["result"] == [] and results[1]["model_version"].endswith("-pending")
    assert [r["result"][0]["value"]["choices"] for r in (results[0], results[2])] == [["sports"], ["world"]]


def test_setup_reports_a_server_without_logprobs(settings):
    from ml_backend.inference import Inference

    def connect():
        raise ModelServerUnsupported("The model server returns no log-probabilities: label scores would be constant.")

    inference = Inference(connect, remote=True)
    with pytest.raises(ModelServerUnsupported):
        inference.check_model()
    Inference(connect, remote=False).check_model()  # in-process runtimes load in the background, never in /setup
    assert ModelServerUnsupported("x").status_code == 422 and ModelServerUnavailable("x").status_code == 503


@pytest.mark.parametrize("mode, name", [
    ("auto", "qwen-openai"), ("echo", "qwen-openai-echo"), ("first_token", "qwen-openai-ft"),
])
def test_a_served_models_version_name_carries_an_explicit_readout(mode, name):
    """Switching LLM_LOGPROBS_MODE changes every score, so it must change the model version."""
    from ml_backend.config import Settings
    from ml_backend.llm import model_name

    served = Settings(llm_base_url="http://127.0.0.1:1", llm_model="/models/qwen.gguf", llm_logprobs_mode=mode)
    assert model_name(served) == name
    assert model_name(Settings(llm_model="/models/qwen.gguf", llm_logprobs_mode=mode)) == "qwen"


def test_the_model_server_wrapper_loads_the_plain_cpu_layout_and_ignores_the_backends_port(monkeypatch):
    """`ml_backend.llm.serve_gguf`: llama.cpp's repacked layouts crashed llama_cpp.server on an AMX
    CPU; the wrapper turns them off for every model it loads, and PORT/HOST (the backend's, next to
    it) no longer override its --port/--host."""
    import llama_cpp.llama as high_level
    import llama_cpp.server.__main__ as server_main

    from ml_backend.llm import serve_gguf

    monkeypatch.setattr(high_level.llama_cpp, "llama_model_default_params",
                        high_level.llama_cpp.llama_model_default_params)
    assert high_level.llama_cpp.llama_model_default_params().use_extra_bufts is True  # llama.cpp's default
    seen = {}
    monkeypatch.setattr(server_main, "main", lambda: seen.update(
        argv=list(sys.argv), port=os.environ.get("PORT"),
        plain=high_level.llama_cpp.llama_model_default_params().use_extra_bufts is False))
    monkeypatch.setenv("PORT", "9090")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    serve_gguf.main(["--model", "m.gguf", "--port", "8000"])
    assert seen == {"argv": ["python -m ml_backend.llm.serve_gguf", "--model", "m.gguf", "--port", "8000"],
                    "port": None, "plain": True}
    assert high_level.llama_cpp.llama_model_default_params().use_extra_bufts is True  # only while it serves
