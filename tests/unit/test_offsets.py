"""Offsets land where Label Studio 1.23.2 draws them: code points, with UTF-16 for older versions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.offsets import (
    codepoint_to_utf16,
    from_label_studio,
    span_of_value,
    span_value,
    spans_of_result,
    to_label_studio,
    utf16_to_codepoint,
)
from tests.conftest import ls_payload

EMOJI_CJK = "😀𠮷 李明在北京工作"  # the text Label Studio 1.23.2 was recorded with


def test_emoji_and_extension_b_before_an_entity_are_one_offset_each():
    value = span_value(EMOJI_CJK, 3, 5, ["PER"])
    assert value == {"start": 3, "end": 5, "text": "李明", "labels": ["PER"]}
    # What older (UTF-16) versions would have needed: both astral characters count twice.
    assert to_label_studio(EMOJI_CJK, 3, 5, unit="utf16") == (5, 7)


def test_recorded_annotation_reads_back_to_the_selected_characters():
    body = ls_payload("webhook_annotation_created_2.json")
    text = body["task"]["data"]["text"]
    spans = spans_of_result(text, body["annotation"]["result"])
    assert [(text[s:e], labels) for s, e, labels in spans] == [("李明", ["PER"]), ("北京", ["LOC"])]
    assert [(s, e) for s, e, _ in spans] == [(3, 5), (6, 8)]


def test_utf16_offsets_read_as_code_points_are_detected():
    with pytest.raises(ValueError, match="does not match"):
        span_of_value(EMOJI_CJK, {"start": 5, "end": 7, "text": "李明"})
    assert span_of_value(EMOJI_CJK, {"start": 5, "end": 7, "text": "李明"}, unit="utf16") == (3, 5)


@pytest.mark.parametrize(
    "text, entity",
    [
        ("Café de Flore opened", "Flore"),  # precomposed é
        ("Cafe\u0301 de Flore opened", "Flore"),  # e + combining acute: two code points, kept as is
        ("line one\r\nBerlin is big", "Berlin"),  # \r\n is two characters, never normalized
        ("😀😀 Tokyo 😀", "Tokyo"),
        ("华为在Shenzhen发布了Mate 60手机", "Mate 60"),  # mixed Chinese / English
        ("𠮷野家在東京", "東京"),
    ],
)
def test_spans_after_tricky_characters_round_trip(text, entity):
    start = text.index(entity)
    end = start + len(entity)
    for unit in ("codepoint", "utf16"):
        ls_start, ls_end = to_label_studio(text, start, end, unit=unit)
        assert from_label_studio(text, ls_start, ls_end, unit=unit) == (start, end)
    value = span_value(text, start, end, ["X"])
    assert text[value["start"] : value["end"]] == entity == value["text"]


def test_utf16_offset_inside_a_surrogate_pair_is_rejected():
    with pytest.raises(ValueError, match="surrogate"):
        utf16_to_codepoint("😀a", 1)


def test_spans_outside_the_text_are_rejected():
    with pytest.raises(ValueError):
        to_label_studio("abc", 2, 4)
    with pytest.raises(ValueError):
        from_label_studio("abc", 3, 2)


# Text drawn from ASCII, CJK, astral (emoji, Extension B), combining marks and line breaks.
tricky_text = st.lists(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(min_codepoint=0x1F600, max_codepoint=0x1F64F),
        st.characters(min_codepoint=0x20000, max_codepoint=0x2A6DF),
        st.characters(min_codepoint=0x0300, max_codepoint=0x036F),
        st.sampled_from(["\r\n", "\n", "\t"]),
    ),
    max_size=40,
).map("".join)


@given(tricky_text, st.data())
def test_any_span_round_trips_through_both_units(text, data):
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    for unit in ("codepoint", "utf16"):
        value = span_value(text, start, end, ["L"], unit=unit)
        assert span_of_value(text, value, unit=unit) == (start, end)


@given(st.text(max_size=60))
def test_utf16_offsets_match_javascript_string_length(text):
    for index in range(len(text) + 1):
        units = codepoint_to_utf16(text, index)
        assert units == len(text[:index].encode("utf-16-le")) // 2
        assert utf16_to_codepoint(text, units) == index
