"""The process's one model, and predictions for a project's tasks.

The LLM loads lazily, once per process, never inside `/setup` (Label Studio gives /setup
3 s); `warm_up()` starts loading in a background thread at start-up. One `LabelScorer` per
distinct set of options keeps its prefix caches and its memo of raw label probabilities
(sized for the cold start's sample, which the pre-annotation pass then writes without
scoring it again).

The model is an in-process `LLMRuntime` or an `LLMProvider` (an OpenAI-compatible server,
`ml_backend.llm.openai_provider`); everything here goes through `LabelScorer`, which takes either.
When the model server fails (`errors.ModelServerUnavailable`), `/predict` keeps every task's slot:
`task_scorer(..., keep_failed=True)` scores the failed batch again task by task and answers the
tasks that still fail with a `<version>-pending` placeholder (the background job scores them later);
the background job itself lets the error propagate, so the job runner retries it with backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ml_backend.errors import ModelServerUnavailable
from ml_backend.llm.base import LLMRuntime
from ml_backend.llm.provider import LLMProvider
from ml_backend.predictor import LabelScorer, PredictionOptions, predict_tasks
from ml_backend.profile import ProjectProfile
from ml_backend.refinement import Refinement
from ml_backend.versioning import pending_version

log = logging.getLogger(__name__)

# Raw label probabilities kept per scorer (a few KB each): enough for the cold start's sample.
SCORER_MEMO_MIN_ROWS = 1024

TaskScorer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class Inference:
    def __init__(
        self,
        runtime_loader: Callable[[], LLMProvider | LLMRuntime],
        *,
        memo_rows: int = SCORER_MEMO_MIN_ROWS,
        refinement: Refinement | None = None,
        remote: bool = False,
    ) -> None:
        """`refinement`: the learning loop's hook (cached LLM distributions, the trained SLM's blend).
        `remote`: the loader connects to a model server (seconds, no weights), so /setup may call it
        to report a server that cannot score (`check_model`)."""
        self._runtime_loader = runtime_loader
        self.refinement = refinement
        self.remote = remote
        self._runtime: LLMProvider | LLMRuntime | None = None
        self._runtime_lock = threading.Lock()
        self._scorers: dict[PredictionOptions, LabelScorer] = {}
        self._memo_rows = max(SCORER_MEMO_MIN_ROWS, memo_rows)

    @property
    def runtime(self) -> LLMProvider | LLMRuntime:
        """The process's model (loaded on first use): an in-process runtime or a server's provider."""
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
        thread = threading.Thread(target=self._warm_up, name="model-warm-up", daemon=True)
        thread.start()
        return thread

    def _warm_up(self) -> None:
        try:
            self.runtime
        except Exception as exc:  # the first request tries again and reports it
            log.warning("event=model_warm_up_failed error=%r", f"{type(exc).__name__}: {exc}"[:300])

    def check_model(self) -> None:
        """Raise the model's load error now if it is a model server (no-op for in-process runtimes,
        which load in the background: /setup must answer in 3 s). A server that returns no
        log-probabilities fails here with `ModelServerUnsupported`, which /setup shows."""
        if self.remote:
            self.runtime

    def scorer(self, options: PredictionOptions) -> LabelScorer:
        scorer = self._scorers.get(options)
        if scorer is None:
            scorer = self._scorers[options] = LabelScorer(self.runtime, options, memo_size=self._memo_rows)
        return scorer

    def scorers(self) -> list[LabelScorer]:
        """The scorers made so far (one per distinct options), e.g. to read their memo hits."""
        return list(self._scorers.values())

    def task_scorer(self, profile: ProjectProfile, *, keep_failed: bool = False) -> TaskScorer:
        """`tasks -> predictions` with the profile's options, cold-start results and version.

        keep_failed: when the model server fails, answer every task anyway (same length and order):
        a failed batch is scored again task by task, tasks that still fail get a
        `<version>-pending` placeholder (`is_failed_prediction`). Off: the error propagates."""
        hook = self.refinement.hook(profile) if self.refinement is not None else None

        def score_batch(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return predict_tasks(
                self.scorer(profile.options), profile.spec, tasks, model_version=profile.version,
                project_id=profile.key, cold_start=profile.cold_start, hook=hook,
            )

        if not keep_failed:
            return score_batch

        def score(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            try:
                return score_batch(tasks)
            except ModelServerUnavailable as exc:
                if len(tasks) == 1:
                    return [self._failed(profile, tasks[0], exc)]
                log.warning("event=predict_batch_failed project=%s tasks=%d error=%r then=one_by_one",
                            profile.key, len(tasks), exc.message[:300])
            predictions = []
            for task in tasks:
                try:
                    predictions.extend(score_batch([task]))
                except ModelServerUnavailable as exc:
                    predictions.append(self._failed(profile, task, exc))
            return predictions

        return score

    @staticmethod
    def _failed(profile: ProjectProfile, task: dict[str, Any], error: ModelServerUnavailable) -> dict[str, Any]:
        log.warning(
            "event=task_prediction_failed project=%s task=%s model_version=%s reason=model_server_unavailable error=%r",
            profile.key, task.get("id") if isinstance(task, dict) else None, profile.version, error.message[:300],
        )
        return {"result": [], "score": 0.0, "model_version": pending_version(profile.version)}

    def score_tasks(self, profile: ProjectProfile, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.task_scorer(profile)(tasks)
