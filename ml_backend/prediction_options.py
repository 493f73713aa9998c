"""What classification (`ml_backend.predictor`) and NER (`ml_backend.ner.extractor`) both read.

A module of its own so that the extractor never imports the predictor (which imports the extractor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ml_backend import offsets
from ml_backend.llm.provider import LLMProvider


@dataclass(frozen=True)
class PredictionOptions:
    scoring_mode: str = "full_sequence"  # or "first_token"
    bias_calibration: str = "prior_matching"  # "none" | "content_free" | "prior_matching"
    max_text_tokens: int = 256
    instruction: str | None = None
    batch_size: int = 8  # tasks per provider call
    use_hints: bool = True  # label definitions (Choice hints) in the prompt; a dev-set prompt choice may drop them
    ner_max_new_tokens: int = 64
    offset_unit: offsets.OffsetUnit = offsets.LABEL_STUDIO_OFFSET_UNIT


class ProviderWithOptions(Protocol):
    """A model and the options to read it with (what `predictor.LabelScorer` is to the extractor)."""

    provider: LLMProvider
    options: PredictionOptions
