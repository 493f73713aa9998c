"""What a model version is: one fingerprint of everything that changes predictions.

`<model>-<prompt hash>-v<counter>`: the hash covers the scoring revision, the labeling config
(`label_config.config_hash`, the one config hash), the instruction, the scoring settings, the
cold start's results and the chosen prompt variant; the counter moves on retraining. Label
Studio re-requests predictions when the version changes, so anything that changes a
prediction must change the version, and nothing else may.

Stand-in versions mark predictions the backend stores only until the real one is written
(then deletes them): `-pending` (/predict's placeholders past its time budget) and
`-provisional` (a new project's first page, before its cold start).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ml_backend.config import Settings
from ml_backend.label_config import LabelSpec
from ml_backend.predictor import SCORING_REVISION, PredictionOptions

PENDING_SUFFIX = "-pending"  # model_version suffix of /predict's placeholders (see README)
PROVISIONAL_SUFFIX = "-provisional"  # the first page's zero-shot predictions before a cold start


def model_name(settings: Settings) -> str:
    """Readable model id, known without loading the model (needed by the fast /setup)."""
    from ml_backend.llm import model_name as configured_model_name

    return configured_model_name(settings)


def llm_version(version: str) -> str:
    """The LLM prompt part of a version ("<model>-<hash>"): what the LLM's output depends on, without
    the retraining counter (LLM distributions are cached under it, `llm_cache`)."""
    return version.rsplit("-v", 1)[0]


def model_version(
    name: str,
    spec: LabelSpec,
    options: PredictionOptions,
    *,
    cold_start: dict[str, Any],
    variant: dict[str, Any] | None,
    counter: int,
) -> str:
    """The version string of predictions made with these inputs (pure)."""
    fingerprint = "|".join(
        [
            f"scoring:{SCORING_REVISION}",
            spec.config_hash,
            options.instruction or "",
            options.scoring_mode,
            options.bias_calibration,
            json.dumps(cold_start, sort_keys=True, ensure_ascii=False),
            json.dumps(variant, sort_keys=True),
        ]
    )
    if spec.span_targets:  # NER settings change NER predictions only
        fingerprint += f"|ner:{options.ner_max_new_tokens}:{options.offset_unit}"
    prompt_hash = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:8]
    return f"{name}-{prompt_hash}-v{counter}"


def pending_version(version: str) -> str:
    return f"{version}{PENDING_SUFFIX}"


def is_pending_version(version: str | None) -> bool:
    return bool(version) and version.endswith(PENDING_SUFFIX)


def provisional_version(version: str) -> str:
    return f"{version}{PROVISIONAL_SUFFIX}"


def is_stand_in_version(version: str | None) -> bool:
    """A prediction this backend stores only until the real one is written (then deletes)."""
    return bool(version) and version.endswith((PENDING_SUFFIX, PROVISIONAL_SUFFIX))
