"""Label Studio's span offsets ↔ Python `str` indices, in one place.

Label Studio 1.23.2 stores `<Labels>` regions on `<Text>` as `start`/`end` counted in **Unicode
code points**, end exclusive — exactly Python `str` indices (verified in the real UI: selecting
李明 in `😀𠮷 李明在北京工作` stores start 3, end 5). Older Label Studio versions counted
JavaScript **UTF-16 code units** instead, so every character outside the Basic Multilingual Plane
(emoji such as 😀, CJK Extension B such as 𠮷) shifted all later offsets by one.

Everything that writes a region or reads an annotation back goes through `to_label_studio` /
`from_label_studio`; supporting another version means changing `LABEL_STUDIO_OFFSET_UNIT` (or
passing `unit=`), nothing else. `\\r\\n` is two code points and two UTF-16 units, combining marks
are their own code points: no normalization happens anywhere, offsets index the task text as
Label Studio received it.
"""

from __future__ import annotations

from typing import Any, Literal

OffsetUnit = Literal["codepoint", "utf16"]

LABEL_STUDIO_OFFSET_UNIT: OffsetUnit = "codepoint"  # Label Studio 1.23.2 (see module docstring)

_FIRST_ASTRAL = 0x10000  # code points from here on take two UTF-16 units (a surrogate pair)


def codepoint_to_utf16(text: str, index: int) -> int:
    """UTF-16 code units before code point `index` of `text` (0 ≤ index ≤ len(text))."""
    if not 0 <= index <= len(text):
        raise ValueError(f"index {index} is outside the text (length {len(text)})")
    return index + sum(1 for ch in text[:index] if ord(ch) >= _FIRST_ASTRAL)


def utf16_to_codepoint(text: str, index: int) -> int:
    """Code point index at UTF-16 unit `index`; raises if it falls inside a surrogate pair."""
    if index < 0:
        raise ValueError(f"negative UTF-16 offset {index}")
    units = 0
    for position, ch in enumerate(text):
        if units == index:
            return position
        units += 2 if ord(ch) >= _FIRST_ASTRAL else 1
        if units > index:
            raise ValueError(f"UTF-16 offset {index} splits the surrogate pair of {ch!r} at {position}")
    if units == index:
        return len(text)
    raise ValueError(f"UTF-16 offset {index} is beyond the text ({units} units)")


def to_label_studio(text: str, start: int, end: int, *, unit: OffsetUnit = LABEL_STUDIO_OFFSET_UNIT) -> tuple[int, int]:
    """Python str span [start, end) → the offsets Label Studio stores for it."""
    _check_span(text, start, end)
    if unit == "codepoint":
        return start, end
    if unit == "utf16":
        return codepoint_to_utf16(text, start), codepoint_to_utf16(text, end)
    raise ValueError(f"unknown offset unit {unit!r}")


def from_label_studio(text: str, start: int, end: int, *, unit: OffsetUnit = LABEL_STUDIO_OFFSET_UNIT) -> tuple[int, int]:
    """Offsets from a Label Studio region → the Python str span [start, end)."""
    if unit == "codepoint":
        span = (start, end)
    elif unit == "utf16":
        span = (utf16_to_codepoint(text, start), utf16_to_codepoint(text, end))
    else:
        raise ValueError(f"unknown offset unit {unit!r}")
    _check_span(text, *span)
    return span


def span_value(
    text: str, start: int, end: int, labels: list[str], *, unit: OffsetUnit = LABEL_STUDIO_OFFSET_UNIT
) -> dict[str, Any]:
    """The `value` of a Label Studio `labels` region for the Python span [start, end) of `text`."""
    ls_start, ls_end = to_label_studio(text, start, end, unit=unit)
    return {"start": ls_start, "end": ls_end, "text": text[start:end], "labels": list(labels)}


def span_of_value(text: str, value: dict[str, Any], *, unit: OffsetUnit = LABEL_STUDIO_OFFSET_UNIT) -> tuple[int, int]:
    """Read a stored `labels` region back: its Python span, checked against the region's own `text`."""
    start, end = from_label_studio(text, int(value["start"]), int(value["end"]), unit=unit)
    stored = value.get("text")
    if stored is not None and text[start:end] != stored:
        raise ValueError(
            f"region text {stored!r} does not match the task text at [{start}, {end}) ({text[start:end]!r}): "
            f"offsets are not in {unit} units"
        )
    return start, end


def spans_of_result(
    text: str, result: list[dict[str, Any]], *, unit: OffsetUnit = LABEL_STUDIO_OFFSET_UNIT
) -> list[tuple[int, int, list[str]]]:
    """The `labels` regions of an annotation's (or prediction's) `result` as Python spans + labels."""
    spans = []
    for region in result:
        if region.get("type") == "labels" and isinstance(region.get("value"), dict):
            start, end = span_of_value(text, region["value"], unit=unit)
            spans.append((start, end, list(region["value"].get("labels", []))))
    return spans


def _check_span(text: str, start: int, end: int) -> None:
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span [{start}, {end}) is outside the text (length {len(text)})")
