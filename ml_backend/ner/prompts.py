"""The two NER prompts, cut around the task text like `ml_backend.llm.prompts`.

1. **Extraction** (generated): the model lists candidate entities as a JSON array of
   `["entity text", "TYPE"]` pairs. The assistant turn is pre-filled with `[` so a small model
   answers in the format instead of chatting. Pairs whose type is not in the config are
   dropped; the generated type is the region's label (see `extractor.decide`), never its score.
2. **Span scoring** (never generated): after the task text, for each aligned surface form the
   question `What type is "<surface>" in this text?` followed by each type name and `none`;
   plus one yes/no question "does the text mention any entity of these types?". All of them
   are continuations of one task, scored in one call (`LLMProvider.score_labels`).

Both system messages list the types with their `hint` definitions, in the config's order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from ml_backend.label_config import Target
from ml_backend.llm.prompts import (
    TEXT_SENTINEL,
    ChatFormat,
    ScoringPrompt,
    _split_once,
    build_scoring_prompt,
    label_block,
)
from ml_backend.ner.alignment import Proposal

NONE_CHOICE = "none"  # the "not an entity" answer of the span question
ANSWER_PREFILL = "["
ANSWER_STOP = "]]"

DEFAULT_EXTRACTION_INSTRUCTION = "You extract named entities from text."
EXTRACTION_REQUEST = (
    "\n\nList every named entity in the text as a JSON array of [\"entity text\", \"TYPE\"] pairs, "
    "copying the entity text exactly. Answer [] if there is none."
)
SCORING_INSTRUCTION = "You check named entities in a text. Answer each question with one word."


@dataclass(frozen=True)
class NerDemonstration:
    """An in-context example: a text and its entities as (surface text, type prompt name)."""

    text: str
    entities: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ExtractionPrompt:
    """prefix (cached) + task text + suffix (end of user turn, assistant lead, `[`) → generate."""

    prefix: str
    suffix: str


def demonstrations_from_rows(rows: Sequence[dict], target: Target, k: int) -> list[NerDemonstration]:
    """k demonstrations from labeled rows `{"text", "entities": [{"start","end","label"}]}`.

    Deterministic: short texts (20-120 characters) covering the most distinct labels first.
    Labels are shown to the model by prompt name. For benchmarks and tests; serving is zero-shot.
    """
    prompt_name = {option.result_value: option.prompt_name for option in target.options}
    candidates = [
        row for row in rows if row["entities"] and 20 <= len(row["text"]) <= 120
        and all(entity["label"] in prompt_name for entity in row["entities"])
    ]
    candidates.sort(key=lambda row: (-len({e["label"] for e in row["entities"]}), len(row["text"])))
    return [
        NerDemonstration(
            text=row["text"],
            entities=tuple(
                (row["text"][e["start"] : e["end"]], prompt_name[e["label"]])
                for e in sorted(row["entities"], key=lambda e: e["start"])
            ),
        )
        for row in candidates[:k]
    ]


def type_block(target: Target) -> str:
    return f"Entity types:\n{label_block(target)}"


def format_entities(entities: Sequence[tuple[str, str]]) -> str:
    """The answer format of the extraction prompt (also used for demonstrations)."""
    return json.dumps([list(pair) for pair in entities], ensure_ascii=False)


def build_extraction_prompt(
    chat: ChatFormat,
    target: Target,
    *,
    instruction: str | None = None,
    demonstrations: Sequence[NerDemonstration] = (),
) -> ExtractionPrompt:
    head = instruction.strip() if instruction else DEFAULT_EXTRACTION_INSTRUCTION
    messages: list[dict[str, str]] = [{"role": "system", "content": f"{head}\n\n{type_block(target)}"}]
    for demo in demonstrations:
        messages.append({"role": "user", "content": f"Text:\n{demo.text}{EXTRACTION_REQUEST}"})
        messages.append({"role": "assistant", "content": format_entities(demo.entities)})
    messages.append({"role": "user", "content": f"Text:\n{TEXT_SENTINEL}{EXTRACTION_REQUEST}"})
    prefix, suffix = _split_once(chat.render(messages, add_generation_prompt=True), TEXT_SENTINEL)
    return ExtractionPrompt(prefix=prefix, suffix=suffix + ANSWER_PREFILL)


def build_span_scoring_prompt(chat: ChatFormat, target: Target, *, instruction: str | None = None) -> ScoringPrompt:
    head = f"{instruction.strip()}\n\n{SCORING_INSTRUCTION}" if instruction else SCORING_INSTRUCTION
    system = f"{head}\n\n{type_block(target)}\n- {NONE_CHOICE}: not a named entity of these types"
    return build_scoring_prompt(chat, target, system=system)


def span_question(surface: str) -> str:
    return f'\n\nWhat type is "{surface}" in this text? Answer with the type name.'


def any_entity_question() -> str:
    return "\n\nDoes this text mention a named entity of the types above? Answer yes or no."


# ["text", "TYPE"] pairs, or {"entity text": "...", "TYPE": "..."} objects that small models also write.
_PAIR = re.compile(r'\[\s*"((?:[^"\\]|\\.)*)"\s*,\s*"((?:[^"\\]|\\.)*)"')
_OBJECT = re.compile(r'\{\s*"[^"]*"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"[^"]*"\s*:\s*"((?:[^"\\]|\\.)*)"')


def parse_proposals(generated: str, target: Target) -> list[Proposal]:
    """Entity proposals in the generated answer (the text after the pre-filled `[`), in order.

    Tolerant of truncation and of the object form. Types are matched case-insensitively against
    prompt names and stored values; a proposal whose type is not in the config ("NUM", "city")
    is dropped: on the shared samples those were mostly numbers and common nouns.
    """
    answer = ANSWER_PREFILL + generated
    by_name = {}
    for option in target.options:
        by_name[option.prompt_name.casefold()] = option.result_value
        by_name[option.result_value.casefold()] = option.result_value
    proposals = []
    for pattern in (_PAIR, _OBJECT):
        for match in pattern.finditer(answer):
            surface, label = (_unescape(group) for group in match.groups())
            value = by_name.get(label.strip().casefold())
            if surface.strip() and value is not None:
                proposals.append((match.start(), Proposal(text=surface, label=value)))
    return [proposal for _, proposal in sorted(proposals, key=lambda item: item[0])]


def _unescape(json_string_body: str) -> str:
    try:
        return json.loads(f'"{json_string_body}"')
    except json.JSONDecodeError:
        return json_string_body
