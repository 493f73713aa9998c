"""Round one, before any human label: self-labeled demonstrations and the project's label bias.

Why: a small model's zero-shot read-out leans toward some labels and knows nothing of the
project's texts. Before anyone labels, the project's own (unlabeled) tasks are all we have:
score a sample zero-shot, keep diverse confident ones as in-context demonstrations (CORAL's
round one, `training.demos`), then estimate the label prior under the final prompt so
BIAS_CALIBRATION=prior_matching can divide it out (`calibration.matching_bias`).

What is learned is stored in the project's state under COLD_START_KEY together with the
*basis* it was learned for (config, instruction, demonstration count): a changed config makes
it stale, so it is ignored by predictions and learned again by the next pre-annotation job.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence

from ml_backend.calibration import matching_bias
from ml_backend.label_config import LabelSpec, Target
from ml_backend.llm.prompts import Demonstration
from ml_backend.model_store import ProjectState
from ml_backend.predictor import ColdStart, LabelScorer, html_to_text, task_text

log = logging.getLogger(__name__)

COLD_START_KEY = "cold_start"


def cold_start_targets(spec: LabelSpec) -> list[Target]:
    """Demonstrations and priors are defined for single-choice classification blocks only."""
    return [target for target in spec.classification_targets if not target.multiple]


def cold_start_basis(spec: LabelSpec, instruction: str | None, n_demonstrations: int) -> str:
    """What the stored results depend on; a different basis means they are stale."""
    fingerprint = f"{spec.config_hash}|{instruction or ''}|{n_demonstrations}"
    return hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]


def target_texts(tasks: Sequence[dict[str, Any]], target: Target, limit: int) -> list[str]:
    """Up to `limit` non-empty texts the target reads (HyperText reduced to visible text)."""
    texts = []
    for task in tasks:
        text = task_text(task, target)
        if text is not None and target.object_tag == "HyperText":
            text = html_to_text(text)
        if text and text.strip():
            texts.append(text)
        if len(texts) >= limit:
            break
    return texts


def learn_target(scorer: LabelScorer, target: Target, texts: list[str], n_demonstrations: int) -> dict[str, Any]:
    """Self-labeled demonstrations and the label bias under the prompt that uses them (JSON-ready)."""
    from training.demos import select_self_labeled_demos

    tokens = [scorer.task_tokens(text) for text in texts]
    demos: tuple[Demonstration, ...] = ()
    if n_demonstrations > 0:
        zero_shot = scorer.correct(target, scorer.raw_probabilities(target, tokens))
        chosen = select_self_labeled_demos(texts, zero_shot, k=n_demonstrations)
        demos = tuple(
            Demonstration(text=texts[c.index], labels=(target.options[c.label].prompt_name,)) for c in chosen
        )
    raw = scorer.raw_probabilities(target, tokens, demonstrations=demos)
    return {
        "demonstrations": [{"text": d.text, "labels": list(d.labels)} for d in demos],
        "label_bias": [round(float(b), 6) for b in matching_bias(raw)],
        "n_tasks": len(texts),
    }


def stored_basis(state: ProjectState) -> str | None:
    return state.extra.get(COLD_START_KEY, {}).get("basis")


def cold_start_of(state: ProjectState, basis: str | None = None) -> dict[str, ColdStart]:
    """The stored cold-start results per target (from_name); {} when they were learned for
    another basis (config or instruction changed since) or never."""
    stored = state.extra.get(COLD_START_KEY, {})
    if basis is not None and stored.get("basis") != basis:
        return {}
    learned = {}
    for from_name, entry in stored.get("targets", {}).items():
        learned[from_name] = ColdStart(
            demonstrations=tuple(
                Demonstration(text=d["text"], labels=tuple(d["labels"])) for d in entry.get("demonstrations", [])
            ),
            label_bias=tuple(entry["label_bias"]) if entry.get("label_bias") else None,
        )
    return learned
