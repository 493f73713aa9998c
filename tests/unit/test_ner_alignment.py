"""Proposals align to exactly the characters they name, or to nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ml_backend.ner.alignment import Proposal, Span, align_proposals, find_occurrences


def spans(text, *pairs):
    return [(s.start, s.end, s.label) for s in align_proposals(text, [Proposal(t, label) for t, label in pairs])]


def test_a_repeated_surface_form_is_labelled_at_every_occurrence():
    text = "Paris is big. I love Paris."
    assert spans(text, ("Paris", "LOC")) == [(0, 5, "LOC"), (21, 26, "LOC")]


def test_a_proposal_not_in_the_text_is_dropped_never_placed():
    assert spans("Angela Merkel met Macron.", ("Obama", "PER"), ("Macron", "PER")) == [(18, 24, "PER")]
    assert spans("李明在北京工作", ("上海", "address")) == []


def test_overlapping_proposals_keep_the_longest_span():
    text = "He reads the New York Times in New York."
    assert spans(text, ("New York", "LOC"), ("New York Times", "ORG")) == [(13, 27, "ORG"), (31, 39, "LOC")]


def test_the_same_span_proposed_twice_keeps_the_first_label():
    assert spans("Jordan won.", ("Jordan", "PER"), ("Jordan", "LOC")) == [(0, 6, "PER")]


def test_case_insensitive_only_when_the_exact_case_is_absent():
    assert spans("The EU and the eu.", ("EU", "ORG")) == [(4, 6, "ORG")]
    assert spans("visit PARIS now", ("Paris", "LOC")) == [(6, 11, "LOC")]


def test_whitespace_inside_a_proposal_matches_any_whitespace_run():
    text = "Moved to New\r\nYork  City."
    (span,) = align_proposals(text, [Proposal("  New York City ", "LOC")])
    assert (span.start, span.end) == (9, 24) and span.surface == "New\r\nYork  City"


def test_alphabetic_matches_respect_word_boundaries():
    assert spans("The USA and Ianto.", ("US", "LOC"), ("Ian", "PER")) == []
    assert spans("(US) forces", ("US", "LOC")) == [(1, 3, "LOC")]


def test_chinese_alignment_is_character_based():
    text = "😀𠮷 李明在北京工作，北京很大"
    assert spans(text, ("李明", "name"), ("北京", "address")) == [(3, 5, "name"), (6, 8, "address"), (11, 13, "address")]


def test_mixed_chinese_english_text():
    text = "华为在Shenzhen发布了Mate 60手机"
    assert spans(text, ("Shenzhen", "address"), ("华为", "company")) == [(0, 2, "company"), (3, 11, "address")]


def test_a_match_never_splits_a_combining_mark_from_its_letter():
    text = "Jose\u0301 and Jose"
    assert find_occurrences(text, "Jose") == [(10, 14)]


def test_wrapping_quotes_are_not_part_of_the_surface():
    assert spans('He said Reuters.', ('"Reuters"', "ORG")) == [(8, 15, "ORG")]


@given(
    st.text(alphabet="ab 北京😀𠮷\r\n", max_size=30),
    st.lists(st.text(alphabet="ab北京😀𠮷 ", min_size=1, max_size=4), max_size=5),
)
def test_every_span_reads_back_and_none_overlap(text, surfaces):
    aligned = align_proposals(text, [Proposal(s, "X") for s in surfaces])
    for span in aligned:
        assert isinstance(span, Span)
        assert text[span.start : span.end] == span.surface
        assert span.surface.strip() == span.surface and span.surface
    for left, right in zip(aligned, aligned[1:]):
        assert left.end <= right.start
