"""The process's one model, and predictions for a project's tasks.

The LLM loads lazily, once per process, never inside `/setup` (Label Studio gives /setup
3 s); `warm_up()` starts loading in a background thread at start-up. One `LabelScorer` per
distinct set of options keeps its prefix caches and its memo of raw label probabilities
(sized for the cold start's sample, which the pre-annotation pass then writes without
scoring it again).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ml_backend.llm.base import LLMRuntime
from ml_backend.predictor import LabelScorer, PredictionOptions, predict_tasks
from ml_backend.profile import ProjectProfile
from ml_backend.refinement import Refinement

# Raw label probabilities kept per scorer (a few KB each): enough for the cold start's sample.
SCORER_MEMO_MIN_ROWS = 1024

TaskScorer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class Inference:
    def __init__(
        self,
        runtime_loader: Callable[[], LLMRuntime],
        *,
        memo_rows: int = SCORER_MEMO_MIN_ROWS,
        refinement: Refinement | None = None,
    ) -> None:
        """`refinement`: the learning loop's hook (cached LLM distributions, the trained SLM's blend)."""
        self._runtime_loader = runtime_loader
        self.refinement = refinement
        self._runtime: LLMRuntime | None = None
        self._runtime_lock = threading.Lock()
        self._scorers: dict[PredictionOptions, LabelScorer] = {}
        self._memo_rows = max(SCORER_MEMO_MIN_ROWS, memo_rows)

    @property
    def runtime(self) -> LLMRuntime:
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    self._runtime = self._runtime_loader()
        return self._runtime

    @property
    def model_loaded(self) -> bool:
        return self._runtime is not None

    def warm_up(self) -> threading.Thread:
        """Load the LLM in the background so the first /predict does not pay for it."""
        thread = threading.Thread(target=lambda: self.runtime, name="model-warm-up", daemon=True)
        thread.start()
        return thread

    def scorer(self, options: PredictionOptions) -> LabelScorer:
        scorer = self._scorers.get(options)
        if scorer is None:
            scorer = self._scorers[options] = LabelScorer(self.runtime, options, memo_size=self._memo_rows)
        return scorer

    def scorers(self) -> list[LabelScorer]:
        """The scorers made so far (one per distinct options), e.g. to read their memo hits."""
        return list(self._scorers.values())

    def task_scorer(self, profile: ProjectProfile) -> TaskScorer:
        """`tasks -> predictions` with the profile's options, cold-start results and version."""
        scorer = self.scorer(profile.options)
        hook = self.refinement.hook(profile) if self.refinement is not None else None

        def score(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return predict_tasks(
                scorer, profile.spec, tasks, model_version=profile.version, project_id=profile.key,
                cold_start=profile.cold_start, hook=hook,
            )

        return score

    def score_tasks(self, profile: ProjectProfile, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.task_scorer(profile)(tasks)
