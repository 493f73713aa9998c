"""Team projects: several annotations of one task become one human label (pure).

Rules, in order:
1. Cancelled (skipped) annotations, those without a choice of the target, and automatic ones
   (`is_automatic`: written by auto-accept, never a human label) are ignored.
2. A ground-truth annotation wins (the newest one, if several are marked).
3. Otherwise the majority label; a tie goes to the label annotated most recently.

`agreement` is the share of the counted annotations that chose the combined label (1.0 for a
single annotator): the queue and the report can tell contested tasks apart.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Sequence

AUTOMATIC_ACTION = "prediction"  # Label Studio's "Created from prediction": set only by auto-accept
EDITED_AFTER_S = 1.0  # updated this long after creation: an annotator submitted it again, it is theirs


@dataclass(frozen=True)
class HumanLabel:
    label: int  # index into the target's labels
    agreement: float  # share of the counted annotations that chose `label`
    annotations: int  # how many annotations were counted


@dataclass(frozen=True)
class _Vote:
    label: int
    updated_at: str
    ground_truth: bool


def _choice_of(annotation: dict[str, Any], from_name: str, label_names: Sequence[str]) -> int | None:
    for region in annotation.get("result") or []:
        if not isinstance(region, dict) or region.get("from_name") != from_name:
            continue
        choices = (region.get("value") or {}).get("choices") if isinstance(region.get("value"), dict) else None
        for choice in choices or []:
            if choice in label_names:
                return list(label_names).index(choice)
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def is_automatic(annotation: dict[str, Any]) -> bool:
    """Written by auto-accept (`ml_backend.auto_accept`) and not edited by an annotator since.

    Label Studio never sets `last_action` itself, so "prediction" marks the backend's own
    annotations; an annotator who opens one and submits it again moves `updated_at` on, and then
    it counts as theirs."""
    if not isinstance(annotation, dict) or annotation.get("last_action") != AUTOMATIC_ACTION:
        return False
    created, updated = _timestamp(annotation.get("created_at")), _timestamp(annotation.get("updated_at"))
    return created is None or updated is None or updated - created < EDITED_AFTER_S


def human_annotations(annotations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The annotations people made (automatic ones left out)."""
    return [a for a in annotations if isinstance(a, dict) and not is_automatic(a)]


def votes_of(annotations: Iterable[dict[str, Any]], from_name: str, label_names: Sequence[str]) -> list[_Vote]:
    votes = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled") or is_automatic(annotation):
            continue
        label = _choice_of(annotation, from_name, label_names)
        if label is not None:
            votes.append(_Vote(label, str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                               bool(annotation.get("ground_truth"))))
    return votes


def combine_annotations(annotations: Iterable[dict[str, Any]], from_name: str,
                        label_names: Sequence[str]) -> HumanLabel | None:
    """One task's human label for a single-choice target, or None when nobody chose one."""
    votes = votes_of(annotations, from_name, label_names)
    if not votes:
        return None
    counts = Counter(vote.label for vote in votes)
    truth = [vote for vote in votes if vote.ground_truth]
    if truth:
        label = max(truth, key=lambda vote: vote.updated_at).label
    else:
        top = max(counts.values())
        tied = {label for label, count in counts.items() if count == top}
        label = max((vote for vote in votes if vote.label in tied), key=lambda vote: vote.updated_at).label
    return HumanLabel(label=label, agreement=counts[label] / len(votes), annotations=len(votes))


def annotations_fingerprint(per_task: Iterable[tuple[int, Iterable[dict[str, Any]]]]) -> str:
    """A hash of what the annotators did (ids, versions, skips): equal fingerprints, nothing new to learn."""
    rows = sorted(
        (int(task_id), int(a.get("id") or 0), str(a.get("updated_at") or ""), bool(a.get("was_cancelled")))
        for task_id, annotations in per_task for a in human_annotations(annotations)
    )
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()[:16]
