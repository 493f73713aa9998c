"""Entity proposals (surface text + label, as an LLM writes them) → character spans of the text.

Pure functions; spans are Python `str` indices (code points), end exclusive — convert with
`ml_backend.offsets` only when writing Label Studio regions.

The rules, chosen so that a span is never invented and always reads back as the proposal:

* **All occurrences.** The model names an entity, not a position, so every occurrence of the
  surface form is labelled (an entity mentioned twice is annotated twice, as in CoNLL/CLUENER).
* **Case:** an exact-case match is preferred; only if the surface form occurs nowhere with its
  own case are case-insensitive matches used ("paris" → "Paris"). Case mapping is per code point
  (Python's `re.IGNORECASE`), so offsets never shift.
* **Whitespace:** leading/trailing whitespace and wrapping ASCII quotes of a proposal are
  dropped; a run of whitespace inside it matches any run of whitespace in the text
  ("New York" matches "New\\r\\nYork"). The span covers the text's own characters.
* **Word boundaries** for alphabetic scripts: a match may not start or end inside a word
  ("US" is not found in "USA", "Ian" not in "Ianto"). Chinese, Japanese and other wide
  characters have no spaces, so alignment there is purely character-based. A match never
  ends before a combining mark that belongs to its last character.
* **Not found → dropped.** A proposal with no occurrence yields no span.
* **Overlaps:** candidates are kept greedily, longest first, then in the model's order, then
  left to right; a candidate overlapping a kept span is dropped ("New York Times" ORG wins over
  "New York" LOC inside it). The same span proposed twice keeps the first proposal's label.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

_WRAPPING_QUOTES = "\"'`"


@dataclass(frozen=True)
class Proposal:
    """One entity as the model wrote it: surface text and the label's `result_value`."""

    text: str
    label: str


@dataclass(frozen=True)
class Span:
    """An aligned entity: `text[start:end] == surface` (Python str indices, end exclusive)."""

    start: int
    end: int
    label: str
    surface: str


def clean_surface(surface: str) -> str:
    """The proposal's text as it is searched for (whitespace and wrapping quotes removed)."""
    cleaned = surface.strip()
    while len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in _WRAPPING_QUOTES:
        cleaned = cleaned[1:-1].strip()
    return cleaned


def _is_word_character(ch: str) -> bool:
    """Letters/digits of scripts written with spaces; wide (CJK) characters are not."""
    if not (ch.isalnum() or unicodedata.combining(ch)):
        return False
    return unicodedata.east_asian_width(ch) not in ("W", "F")


def _on_boundaries(text: str, start: int, end: int) -> bool:
    if end < len(text) and unicodedata.combining(text[end]):
        return False
    if start > 0 and _is_word_character(text[start - 1]) and _is_word_character(text[start]):
        return False
    if end < len(text) and _is_word_character(text[end - 1]) and _is_word_character(text[end]):
        return False
    return True


def find_occurrences(text: str, surface: str) -> list[tuple[int, int]]:
    """Every non-overlapping [start, end) where `surface` occurs in `text` under the rules above."""
    cleaned = clean_surface(surface)
    if not cleaned:
        return []
    pattern = r"\s+".join(re.escape(part) for part in cleaned.split())
    for flags in (0, re.IGNORECASE):
        spans = [
            (match.start(), match.end())
            for match in re.finditer(pattern, text, flags)
            if _on_boundaries(text, match.start(), match.end())
        ]
        if spans:
            return spans
    return []


def align_proposals(text: str, proposals: Iterable[Proposal]) -> list[Span]:
    """Non-overlapping spans of `text` for the proposals, sorted by start (see module rules)."""
    candidates: list[tuple[int, int, int, str]] = []  # (start, end, proposal order, label)
    for order, proposal in enumerate(proposals):
        for start, end in find_occurrences(text, proposal.text):
            candidates.append((start, end, order, proposal.label))
    candidates.sort(key=lambda c: (-(c[1] - c[0]), c[2], c[0]))
    kept: list[Span] = []
    for start, end, _order, label in candidates:
        if any(start < span.end and span.start < end for span in kept):
            continue
        kept.append(Span(start=start, end=end, label=label, surface=text[start:end]))
    return sorted(kept, key=lambda span: span.start)


def first_occurrence_spans(text: str, proposals: Sequence[Proposal]) -> list[Span]:
    """The naive alignment most backends use (`str.find`, exact, first hit): the benchmark's baseline."""
    spans = []
    for proposal in proposals:
        start = text.find(proposal.text)
        if proposal.text and start >= 0:
            spans.append(Span(start, start + len(proposal.text), proposal.label, proposal.text))
    return spans
