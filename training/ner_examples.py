"""NER projects learn from their annotations: annotated tasks become the NER prompt's demonstrations.

Why demonstrations and not a trained tagger: a small LLM cannot guess what a project's label codes
mean (`CONT`, `EDU`, `PER.NOM`) or where its span boundaries go (`东凌集团有限公司` and `董事` are two
entities, not one); a few annotated examples of the project's own texts show both. Each task gets
the annotated examples nearest to it by encoder embedding (`ml_backend.slm_model.NerExamples`), so
the examples it sees are the ones most like it. A token-classification SLM is a later step.

Which annotation of a task counts: a ground-truth one if any (the newest), else the most recent
non-skipped annotation that has a result for the target (entity spans do not vote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ml_backend import offsets
from ml_backend.label_config import Target
from ml_backend.slm_model import (
    KIND_NER,
    NER_EMBEDDINGS_FILE,
    NER_EXAMPLES_FILE,
    npy_bytes,
    write_version,
)


def chosen_annotation(annotations: Sequence[dict[str, Any]], target: Target) -> dict[str, Any] | None:
    """The annotation that counts (module docstring). One submitted with no region at all counts
    too: the annotator said the text has no entity."""
    usable = [
        a for a in annotations
        if isinstance(a, dict) and not a.get("was_cancelled")
        and (not a.get("result") or any(isinstance(r, dict) and r.get("from_name") == target.from_name
                                         for r in a.get("result") or []))
    ]
    if not usable:
        return None
    newest = lambda a: str(a.get("updated_at") or a.get("created_at") or "")  # noqa: E731
    truth = [a for a in usable if a.get("ground_truth")]
    return max(truth or usable, key=newest)


def task_entities(text: str, annotation: dict[str, Any], target: Target,
                  unit: offsets.OffsetUnit) -> list[tuple[str, str]]:
    """(surface text, label) of the annotation's spans for the target, in text order."""
    regions = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("from_name") == target.from_name]
    known = set(target.result_values)
    spans = []
    for start, end, labels in offsets.spans_of_result(text, regions, unit=unit):
        label = next((value for value in labels if value in known), None)
        if label is not None and end > start:
            spans.append((start, end, label))
    return [(text[start:end], label) for start, end, label in sorted(spans)]


def examples_of(tasks: Sequence[tuple[str, Sequence[dict[str, Any]]]], target: Target,
                unit: offsets.OffsetUnit) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """(texts, entities) of the tasks (text, annotations) that have an annotation for the target.
    A task annotated with no entity is an example too: it shows what is *not* an entity."""
    texts, entities = [], []
    for text, annotations in tasks:
        annotation = chosen_annotation(annotations, target)
        if annotation is None:
            continue
        try:
            found = task_entities(text, annotation, target, unit)
        except (ValueError, KeyError, TypeError):
            continue  # a region whose offsets do not fit the text (edited task): not an example
        texts.append(text)
        entities.append(found)
    return texts, entities


def save_ner_examples(directory: Path, texts: list[str], entities: list[list[tuple[str, str]]],
                      embeddings: np.ndarray, manifest: dict[str, Any]) -> Path:
    payload = [{"text": text, "entities": [list(pair) for pair in found]} for text, found in zip(texts, entities)]
    return write_version(directory, {
        NER_EXAMPLES_FILE: json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        NER_EMBEDDINGS_FILE: npy_bytes(np.asarray(embeddings, dtype=np.float32)),
    }, {"kind": KIND_NER, **manifest})
