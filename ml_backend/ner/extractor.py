"""Texts → scored entity spans: generate candidates, align them, score every span from logits.

For each task text of one `<Labels>` target:

1. **Propose** (`propose`): greedy generation with the extraction prompt → `["text", "TYPE"]`
   pairs → `Proposal`s (`ml_backend.ner.prompts.parse_proposals`).
2. **Align** (`ml_backend.ner.alignment.align_proposals`): surface texts → code-point spans of
   the original text; proposals that do not occur are dropped.
3. **Score** (`score_spans`): one `LLMProvider.score_labels` call per task whose continuations
   are, for every distinct aligned surface s and every choice c in labels + ["none"],
   `question(s) + answer_lead + c` + the first token of `answer_end`, plus `any-entity question
   + yes/no`. In-process, the prefix tree shares each question among its choices; everything is
   one batched decode.
   `label_probabilities` normalizes over the L+1 choices per span.
4. **Decide** (`decide`): policy "proposed" (default) keeps the label the model generated and
   scores it: region score = P(that label | span) among labels + none. Policy "scored" always takes the argmax and drops spans where "none" wins. On the shared
   CoNLL/CLUENER samples the small default model's generated labels were right more often than
   its argmax answers (see benchmarks/bench_ner.py, which reports both), hence the default.

Task part score = min(P(the any-entity answer that agrees with the result), min region
scores): the weakest claim of the pre-annotation. With no entities it is P("no") — a real
probability from the logits, never a constant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from ml_backend.label_config import Target
from ml_backend.llm.base import LLMRuntime
from ml_backend.llm.provider import Continuation, LLMProvider, as_provider
from ml_backend.ner.alignment import Proposal, Span, align_proposals
from ml_backend.ner.prompts import (
    ANSWER_STOP,
    NONE_CHOICE,
    NerDemonstration,
    any_entity_question,
    build_extraction_prompt,
    build_span_scoring_prompt,
    parse_proposals,
    span_question,
)
from ml_backend.prediction_options import PredictionOptions, ProviderWithOptions
from ml_backend.scoring import label_probabilities, yes_probabilities

log = logging.getLogger(__name__)

LabelPolicy = Literal["scored", "proposed"]


@dataclass(frozen=True)
class ScoredSpan:
    """An entity to pre-annotate: Python str span, chosen label (result_value) and its probability."""

    start: int
    end: int
    label: str
    score: float
    surface: str
    proposed_label: str = ""


@dataclass
class TaskEntities:
    """The NER part of one task's prediction."""

    entities: list[ScoredSpan] = field(default_factory=list)
    p_any_entity: float = 0.0
    candidates: int = 0  # aligned spans before the decision (for logs and benchmarks)

    @property
    def score(self) -> float:
        return task_part_score(self.p_any_entity, [entity.score for entity in self.entities])


def task_part_score(p_any_entity: float, region_scores: Sequence[float]) -> float:
    """min(P(any-entity answer agreeing with the result), min region scores).

    With regions the result claims "there are entities" (P(yes)) and each region's label;
    without, it claims "there are none" (P(no) = 1 - P(yes)).
    """
    agreeing = p_any_entity if region_scores else 1.0 - p_any_entity
    return float(min([agreeing, *region_scores]))


def decide(
    spans: Sequence[Span],
    probabilities: dict[str, np.ndarray],
    target: Target,
    *,
    policy: LabelPolicy = "proposed",
) -> list[ScoredSpan]:
    """Labels and scores for aligned spans; `probabilities[surface]` has L+1 entries (last = none)."""
    values = target.result_values
    decided = []
    for span in spans:
        probs = probabilities[span.surface]
        if policy == "proposed" and span.label in values:
            index = values.index(span.label)
        else:
            index = int(np.argmax(probs))
            if index == len(values):
                continue  # "not an entity" is the most likely answer
        decided.append(
            ScoredSpan(
                start=span.start,
                end=span.end,
                label=values[index],
                score=float(probs[index]),
                surface=span.surface,
                proposed_label=span.label,
            )
        )
    return decided


class NerExtractor:
    """Pre-annotates one `<Labels>` target through an `LLMProvider` (text in, log-probabilities out).

    `model`: a `predictor.LabelScorer` (its provider and options), an `LLMProvider` or an
    in-process `LLMRuntime`; `options` applies to the latter two (default `PredictionOptions()`).
    """

    def __init__(
        self,
        model: ProviderWithOptions | LLMProvider | LLMRuntime,
        options: PredictionOptions | None = None,
        *,
        policy: LabelPolicy = "proposed",
    ) -> None:
        if isinstance(model, (LLMProvider, LLMRuntime)):
            self.provider = as_provider(model)
            self.options = options or PredictionOptions()
        else:
            self.provider = model.provider
            self.options = options or model.options
        self.policy = policy

    def task_text(self, text: str) -> str:
        """Same truncation (MAX_TEXT_TOKENS) as classification."""
        return self.provider.truncate(text, self.options.max_text_tokens)

    # --- 1. propose -------------------------------------------------------------------------
    def propose(
        self,
        target: Target,
        texts: Sequence[str],
        *,
        demonstrations: Sequence[NerDemonstration] = (),
        per_text_demonstrations: Sequence[Sequence[NerDemonstration]] | None = None,
    ) -> list[list[Proposal]]:
        """`per_text_demonstrations` (a project's nearest annotated examples, one list per text)
        replaces the shared `demonstrations`; texts with the same examples share one prompt."""
        prompts: dict[tuple[NerDemonstration, ...], object] = {}
        proposals = []
        for index, text in enumerate(texts):
            demos = tuple(per_text_demonstrations[index] if per_text_demonstrations is not None else demonstrations)
            prompt = prompts.get(demos)
            if prompt is None:
                prompt = prompts[demos] = build_extraction_prompt(
                    self.provider.chat_format, target, instruction=self.options.instruction, demonstrations=demos
                )
            generated = self.provider.generate(
                prompt.prefix,
                self.task_text(text),
                prompt.suffix,
                max_tokens=self.options.ner_max_new_tokens,
                stop=[ANSWER_STOP],
            )
            proposals.append(parse_proposals(generated, target))
        return proposals

    # --- 3. score ---------------------------------------------------------------------------
    def score_spans(
        self, target: Target, texts: Sequence[str], surfaces: Sequence[Sequence[str]]
    ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Per text: {surface: probabilities over labels + none} and P(the text mentions an entity)."""
        prompt = build_span_scoring_prompt(self.provider.chat_format, target, instruction=self.options.instruction)
        choices = [option.prompt_name for option in target.options] + [NONE_CHOICE]
        yes_no = [Continuation(any_entity_question() + prompt.answer_lead, answer) for answer in ("yes", "no")]
        per_text, p_any = [], np.zeros(len(texts))
        for index, (text, text_surfaces) in enumerate(zip(texts, surfaces)):
            distinct = list(dict.fromkeys(text_surfaces))
            continuations = list(yes_no)
            for surface in distinct:
                lead = span_question(surface) + prompt.answer_lead
                continuations += [Continuation(lead, choice, end=prompt.answer_end) for choice in choices]
            logprobs = self.provider.score_labels(prompt.prefix, [self.task_text(text)], continuations)[0]
            p_any[index] = float(yes_probabilities(logprobs[None, :1], logprobs[None, 1:2])[0, 0])
            span_logprobs = logprobs[2:].reshape(len(distinct), len(choices)) if distinct else np.zeros((0, len(choices)))
            probabilities = label_probabilities(span_logprobs) if distinct else span_logprobs
            per_text.append(dict(zip(distinct, probabilities)))
        return per_text, p_any

    # --- all steps --------------------------------------------------------------------------
    def predict(
        self,
        target: Target,
        texts: Sequence[str],
        *,
        demonstrations: Sequence[NerDemonstration] = (),
        per_text_demonstrations: Sequence[Sequence[NerDemonstration]] | None = None,
    ) -> list[TaskEntities]:
        proposals = self.propose(
            target, texts, demonstrations=demonstrations, per_text_demonstrations=per_text_demonstrations
        )
        aligned = [align_proposals(text, task_proposals) for text, task_proposals in zip(texts, proposals)]
        probabilities, p_any = self.score_spans(target, texts, [[span.surface for span in spans] for spans in aligned])
        return [
            TaskEntities(
                entities=decide(spans, probs, target, policy=self.policy),
                p_any_entity=float(p),
                candidates=len(spans),
            )
            for spans, probs, p in zip(aligned, probabilities, p_any)
        ]
