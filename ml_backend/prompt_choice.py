"""Prompt choice on a small labeled dev set: evaluate a few prompt variants, keep the best.

Why: which read-out works best (demonstrations or not, definitions or not, first token or the
full label, which bias correction) depends on the model and the project; with ~50 labeled
tasks the choice can be measured instead of guessed. The losses come from
`ml_backend.prompt_variants` (log-loss: it rewards probabilities that mean something).

The chosen variant is stored per project with the config it was chosen for; it overrides the
scoring settings of that project only, and is part of the model_version.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from ml_backend import bias_correction
from ml_backend.label_config import Target, config_hash
from ml_backend.llm.prompts import Demonstration
from ml_backend.model_store import ProjectState
from ml_backend.predictor import ColdStart, LabelScorer, PredictionOptions
from ml_backend.prompt_variants import PromptVariant, choose_variant


def config_fingerprint(label_config: str | None) -> str:
    """The config's identity for a stored variant: the same hash as the model version's
    (`label_config.config_hash`), so a whitespace-only edit keeps both or neither."""
    return config_hash(label_config or "")


def _legacy_fingerprint(label_config: str | None) -> str:
    """What variants chosen before the hashes were unified recorded (sha256 of the raw text)."""
    return hashlib.sha256((label_config or "").encode("utf-8")).hexdigest()[:12]


def stored_variant(state: ProjectState) -> dict[str, Any] | None:
    """The project's chosen variant, or None if never chosen or chosen for another config."""
    variant = state.prompt_variant
    if not variant or variant.get("config") not in (
        config_fingerprint(state.label_config), _legacy_fingerprint(state.label_config)
    ):
        return None
    return variant


def apply_variant(options: PredictionOptions, variant: dict[str, Any] | None) -> PredictionOptions:
    if variant is None:
        return options
    return dataclasses.replace(
        options,
        scoring_mode=variant["scoring_mode"],
        bias_calibration=variant["bias_calibration"],
        use_hints=variant["use_hints"],
    )


def variant_cold_start(learned: dict[str, ColdStart], variant: dict[str, Any] | None) -> dict[str, ColdStart]:
    """The cold-start results as the variant uses them: its number of demonstrations, and the
    label bias estimated under its own prompt."""
    if variant is None:
        return learned
    adjusted = {}
    for from_name, cold in learned.items():
        bias = variant.get("label_bias", {}).get(from_name)
        adjusted[from_name] = ColdStart(
            demonstrations=cold.demonstrations[: variant["n_demonstrations"]],
            label_bias=tuple(bias) if bias else None,
        )
    return adjusted


def evaluate_variants(
    scorer_for: Callable[[PredictionOptions], LabelScorer],
    base: PredictionOptions,
    target: Target,
    texts: Sequence[str],
    gold_indices: np.ndarray,
    demonstrations: Sequence[Demonstration],
    variants: Sequence[PromptVariant],
) -> tuple[PromptVariant, dict[str, float], dict[str, list[float]]]:
    """(best variant, log-loss per variant, label bias per variant). Each distinct prompt
    (definitions × demonstrations × read-out) is evaluated once over the dev texts; the label
    bias for prior matching is estimated on the dev texts without their labels."""
    raw_cache: dict[tuple, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    biases: dict[str, list[float]] = {}
    for variant in variants:
        options = dataclasses.replace(
            base, scoring_mode=variant.scoring_mode, bias_calibration=variant.bias_calibration, use_hints=variant.use_hints
        )
        scorer = scorer_for(options)
        demos = tuple(demonstrations[: variant.n_demonstrations])
        key = (variant.scoring_mode, variant.use_hints, demos)
        if key not in raw_cache:
            raw_cache[key] = scorer.raw_probabilities(target, [scorer.task_text(t) for t in texts], demonstrations=demos)
        raw = raw_cache[key]
        if variant.bias_calibration == "prior_matching":
            bias = bias_correction.matching_bias(raw)
            biases[variant.name] = [round(float(b), 6) for b in bias]
            probabilities[variant.name] = bias_correction.divide_out_prior(raw, bias)
        else:
            probabilities[variant.name] = scorer.correct(target, raw, demonstrations=demos)
    best_name, losses = choose_variant(probabilities, gold_indices)
    best = next(v for v in variants if v.name == best_name)
    return best, losses, biases
