"""The text-level LLM seam (`ml_backend.llm.provider`): exact token-level scores in-process, the
priority lock for every provider, and a provider without any tokenizer driving classification and NER."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ml_backend import bias_correction
from ml_backend.label_config import parse_label_config
from ml_backend.llm.base import cut_at_stop
from ml_backend.llm.priority import background_work
from ml_backend.llm.prompts import ChatFormat, yes_no_question
from ml_backend.llm.provider import (
    CHARS_PER_TOKEN_CAP,
    Continuation,
    LLMProvider,
    RuntimeProvider,
    TokenizedText,
    as_provider,
    provider_for,
)
from ml_backend.ner.extractor import NerExtractor
from ml_backend.predictor import LabelScorer, PredictionOptions, predict_tasks
from ml_backend.scoring import some_sequence_is_a_prefix
from tests.conftest import LABELING_CONFIGS, QWEN_LIKE_TEMPLATE, REPO_ROOT, KeywordRuntime


def _single(values):
    choices = "".join(f'<Choice value="{v}"/>' for v in values)
    return parse_label_config(
        f'<View><Text name="t" value="$t"/><Choices name="c" toName="t">{choices}</Choices></View>'
    ).targets[0]


TOPIC = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text()).targets[0]
NESTED = _single(["Sci", "Sci/Tech", "Sports"])
MULTI = parse_label_config(
    '<View><Text name="t" value="$t"/><Choices name="c" toName="t" choice="multiple">'
    '<Choice value="positive"/><Choice value="negative"/></Choices></View>'
).targets[0]
NER = parse_label_config(
    '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>'
    '<Text name="text" value="$text"/></View>'
).span_targets[0]


class RecordingRuntime(KeywordRuntime):
    """The keyword fake, recording the token lists it is asked to evaluate."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[tuple[list[int], list[list[int]], list[list[int]]]] = []
        self.generated: list[tuple[list[int], list[int], list[int]]] = []

    def score_continuations(self, prefix, tasks, continuations, *, progress=None):
        self.scored.append((list(prefix), [list(t) for t in tasks], [list(c) for c in continuations]))
        return super().score_continuations(prefix, tasks, continuations, progress=progress)

    def generate(self, prefix, task, suffix, *, max_tokens, stop=()):
        self.generated.append((list(prefix), list(task), list(suffix)))
        return super().generate(prefix, task, suffix, max_tokens=max_tokens, stop=stop)


def _old_continuations(runtime, target, prompt, scoring_mode):
    """The token lists predictor.LabelScorer built itself before the text seam (the reference)."""
    tokenize = runtime.tokenize
    if target.multiple:
        result = []
        for option in target.options:
            text = yes_no_question(option.prompt_name) + prompt.answer_lead
            result += [tokenize(text + "yes", special=True), tokenize(text + "no", special=True)]
        return result
    n_lead = len(tokenize(prompt.answer_lead, special=True))
    labels = [tokenize(prompt.answer_lead + o.prompt_name, special=True) for o in target.options]
    if scoring_mode == "first_token":
        return [tokens[: n_lead + 1] for tokens in labels]
    if not some_sequence_is_a_prefix(labels):
        return labels
    return [tokens + tokenize(prompt.answer_end, special=True)[:1] for tokens in labels]


def _old_task_tokens(runtime, text, limit):
    return runtime.tokenize(text[: limit * CHARS_PER_TOKEN_CAP], special=False)[:limit]


TEXTS = ["Obama won the match in Paris", "stocks fell", "science and tech news " * 40, "sports sports"]


@pytest.mark.parametrize("target", [TOPIC, NESTED, MULTI], ids=["topic", "nested", "multi"])
@pytest.mark.parametrize("mode", ["full_sequence", "first_token"])
def test_runtime_provider_evaluates_the_same_tokens_and_gives_the_same_scores(target, mode):
    runtime = RecordingRuntime()
    options = PredictionOptions(bias_calibration="none", scoring_mode=mode, max_text_tokens=64)
    scorer = LabelScorer(runtime, options)
    prompt = scorer.prompt(target)
    task_texts = [scorer.task_text(t) for t in TEXTS]
    scores = scorer.provider.score_labels(prompt.prefix, task_texts, scorer.label_continuations(target, prompt))

    prefix = runtime.prefix_tokens(prompt.prefix)
    tasks = [_old_task_tokens(runtime, t, 64) for t in TEXTS]
    continuations = _old_continuations(runtime, target, prompt, mode)
    assert [c for _, _, c in runtime.scored] == [continuations] * len(TEXTS)  # one call per task (priority unit)
    assert [t for _, (t,), _ in runtime.scored] == tasks
    assert all(p == prefix for p, _, _ in runtime.scored)
    np.testing.assert_array_equal(scores, KeywordRuntime().score_continuations(prefix, tasks, continuations))
    assert len(tasks[2]) == 64 and isinstance(task_texts[2], TokenizedText)


class LossyRuntime(RecordingRuntime):
    """Its detokenizer loses information: a text re-tokenized after a cut would not give the ids back."""

    def detokenize(self, tokens) -> str:
        return "?" * len(tokens)


def test_a_cut_text_and_a_domain_context_bag_are_evaluated_as_the_exact_token_ids():
    runtime = LossyRuntime()
    provider = RuntimeProvider(runtime)
    long_text = "Paris " * 100
    cut = provider.truncate(long_text, 10)
    assert str(cut) == "?" * 10 and cut.token_ids == tuple(_old_task_tokens(runtime, long_text, 10))
    assert provider.truncate("short", 10) == "short" and type(provider.truncate("short", 10)) is str

    bags = provider.domain_context_inputs([cut, "Obama in Paris"], n_inputs=4, seed=3)
    expected = bias_correction.domain_context_inputs(
        [_old_task_tokens(runtime, long_text, 10), runtime.tokenize("Obama in Paris", special=False)], n_inputs=4, seed=3
    )
    assert [list(bag.token_ids) for bag in bags] == expected

    provider.score_labels("prefix", [cut, *bags], [Continuation("q", "yes")])
    assert [t for _, (t,), _ in runtime.scored] == [list(cut.token_ids)] + expected
    provider.generate("prefix", cut, "<|im_end|>", max_tokens=4)
    assert runtime.generated[-1][1] == list(cut.token_ids)
    # another runtime's ids are never used: it reads the text
    other = RecordingRuntime()
    RuntimeProvider(other).score_labels("prefix", [cut], ["q"])
    assert other.scored[-1][1] == [other.tokenize("?" * 10, special=False)]
    assert type(pickle.loads(pickle.dumps(cut))) is str


def test_ner_extractor_through_the_runtime_provider_uses_the_old_tokens():
    runtime = RecordingRuntime()
    extractor = NerExtractor(LabelScorer(runtime, PredictionOptions()))
    (entities,) = extractor.predict(NER, ["Obama visited Paris."])
    assert [e.surface for e in entities.entities] == ["Obama", "Paris"]
    from ml_backend.ner.prompts import NONE_CHOICE, any_entity_question, build_span_scoring_prompt, span_question

    prompt = build_span_scoring_prompt(runtime.chat_format, NER)
    tokenize = runtime.tokenize
    end = tokenize(prompt.answer_end, special=True)[:1]
    expected = [tokenize(any_entity_question() + prompt.answer_lead + a, special=True) for a in ("yes", "no")]
    for surface in ("Obama", "Paris"):
        lead = span_question(surface) + prompt.answer_lead
        expected += [tokenize(lead + c, special=True) + end for c in ["PER", "LOC", NONE_CHOICE]]
    (prefix, tasks, continuations), = runtime.scored
    assert prefix == runtime.prefix_tokens(prompt.prefix) and continuations == expected
    assert tasks == [tokenize("Obama visited Paris.", special=False)]


def test_scorers_of_one_runtime_share_one_provider_and_its_lock():
    runtime = KeywordRuntime()
    a = LabelScorer(runtime, PredictionOptions())
    b = LabelScorer(runtime, PredictionOptions(scoring_mode="first_token"))
    assert a.provider is b.provider is provider_for(runtime) is as_provider(runtime)
    assert a.provider.priority_lock is b.provider.priority_lock
    assert a.runtime is runtime
    assert provider_for(KeywordRuntime()) is not a.provider


# --- a provider with no tokenizer at all --------------------------------------------------------------------
class TextOnlyProvider(LLMProvider):
    """A remote-server-like fake: strings only. A continuation scores higher the more often its
    answer occurs in the task text; 'tokens' are whitespace-separated words."""

    name = "text-only-fake"
    ENTITIES = {"Paris": "LOC", "Obama": "PER"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[Continuation]]] = []

    @property
    def chat_format(self) -> ChatFormat:
        return ChatFormat(template=QWEN_LIKE_TEMPLATE)

    def _score_labels(self, prefix, task_texts, continuations):
        self.calls.append((prefix, list(task_texts), list(continuations)))
        scores = np.zeros((len(task_texts), len(continuations)))
        for i, text in enumerate(task_texts):
            for j, c in enumerate(continuations):
                words = re.findall(r"\w+", c.answer or c.lead)
                word = words[-1].lower() if words else ""
                scores[i, j] = -2.0 + 1.5 * text.lower().count(word) if word else -5.0
        return scores

    def _generate(self, prefix, task_text, suffix, *, max_tokens, stop):
        found = sorted((task_text.find(s), s) for s in self.ENTITIES if s in task_text)
        pairs = [json.dumps([s, self.ENTITIES[s]]) for _, s in found]
        return cut_at_stop((", ".join(pairs) + "]]") if pairs else "]", stop)[0]

    def truncate(self, text, max_tokens):
        return " ".join(text.split(" ")[:max_tokens])

    def domain_context_inputs(self, task_texts, *, n_inputs=bias_correction.DOMAIN_CONTEXT_INPUTS, seed=0):
        words = [w for t in task_texts for w in t.split()]
        rng = np.random.default_rng(seed)
        return [" ".join(rng.choice(words, size=3)) for _ in range(n_inputs)] if words else []


def test_a_provider_without_a_tokenizer_drives_the_label_scorer():
    provider = TextOnlyProvider()
    scorer = LabelScorer(provider, PredictionOptions(bias_calibration="content_free", max_text_tokens=5), memo_size=10)
    texts = ["the Sports match was great", "new Science paper on Tech one two three four"]
    probabilities = scorer.probabilities(TOPIC, texts)
    assert probabilities.shape == (2, 4)
    assert np.argmax(probabilities[0]) == [o.result_value for o in TOPIC.options].index("Sports")
    assert scorer.runtime is None
    assert all(len(t.split()) <= 5 for _, tasks, _ in provider.calls for t in tasks)  # MAX_TEXT_TOKENS
    n_calls = len(provider.calls)
    scorer.raw_probabilities(TOPIC, [scorer.task_text(t) for t in texts])
    assert len(provider.calls) == n_calls and scorer.memo_hits == 2  # the memo is keyed on text
    multi = scorer.probabilities(MULTI, ["yes, negative"])
    assert multi.shape == (1, 2) and np.all((multi > 0) & (multi < 1))
    # the first-token and the end-of-answer questions are asked in text terms
    nested = LabelScorer(provider, PredictionOptions()).label_continuations(NESTED, scorer.prompt(NESTED))
    assert all(c.end for c in nested)
    with pytest.raises(TypeError):
        scorer.task_tokens("no token ids here")
    anchors = provider.domain_context_inputs(texts, n_inputs=3)
    assert len(anchors) == 3 and all(isinstance(a, str) for a in anchors)


def test_a_provider_without_a_tokenizer_drives_ner_and_predict_tasks():
    provider = TextOnlyProvider()
    (entities,) = NerExtractor(provider, PredictionOptions()).predict(NER, ["Obama visited Paris."])
    assert [(e.surface, e.label) for e in entities.entities] == [("Obama", "PER"), ("Paris", "LOC")]
    assert 0.0 < entities.score < 1.0
    spec = parse_label_config(
        '<View><Text name="text" value="$text"/><Labels name="label" toName="text"><Label value="PER"/>'
        '<Label value="LOC"/></Labels><Choices name="c" toName="text"><Choice value="Sports"/>'
        '<Choice value="World"/></Choices></View>'
    )
    scorer = LabelScorer(provider, PredictionOptions(bias_calibration="none"))
    (prediction,) = predict_tasks(scorer, spec, [{"id": 1, "data": {"text": "Obama visited Paris."}}], model_version="v")
    assert {r["type"] for r in prediction["result"]} == {"labels", "choices"}


# --- the priority lock, for every provider -------------------------------------------------------------------
class BlockingTextProvider(TextOnlyProvider):
    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()
        self.order: list[str] = []

    def _score_labels(self, prefix, task_texts, continuations):
        self.order.extend(task_texts)
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(5)
        return super()._score_labels(prefix, task_texts, continuations)


class BlockingRuntime(KeywordRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()
        self.order: list[str] = []

    def score_continuations(self, prefix, tasks, continuations, *, progress=None):
        self.order.extend("".join(map(chr, t)) for t in tasks)
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(5)
        return super().score_continuations(prefix, tasks, continuations, progress=progress)


@pytest.mark.parametrize("kind", ["text_only", "runtime"])
def test_an_interactive_call_goes_before_the_background_jobs_next_task(kind):
    fake = BlockingTextProvider() if kind == "text_only" else BlockingRuntime()
    provider = as_provider(fake)

    def job():
        with background_work():
            provider.score_labels("p", ["job-1", "job-2", "job-3"], ["yes"])

    def request():
        provider.score_labels("p", ["interactive"], ["yes"])

    background = threading.Thread(target=job)
    background.start()
    assert fake.started.wait(5)  # the job is scoring its first task
    interactive = threading.Thread(target=request)
    interactive.start()
    deadline = time.monotonic() + 5
    while provider.priority_lock.interactive_waiting != 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    fake.release.set()
    background.join(5)
    interactive.join(5)
    assert fake.order == ["job-1", "interactive", "job-2", "job-3"]


def test_generate_takes_the_priority_lock():
    provider = TextOnlyProvider()
    provider.priority_lock.acquire(background=True)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (provider.generate("p", "Obama", "s", max_tokens=8), done.set()))
    thread.start()
    assert not done.wait(0.1)
    provider.priority_lock.release()
    assert done.wait(5)
    thread.join(5)


def test_the_ner_extractor_does_not_import_the_predictor():
    code = "import sys, ml_backend.ner.extractor; print('ml_backend.predictor' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "False"
