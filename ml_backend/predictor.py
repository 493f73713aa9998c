"""Tasks → Label Studio predictions, always one per task, in order.

Path of a request: LabelSpec (parsed config) → per target: prompt parts → continuations
(answer strings) → batched `LLMProvider.score_labels` calls → label probabilities → bias
correction → regions and a score per task. Everything here is text: token ids stay inside
`ml_backend.llm` (see `ml_backend.llm.provider` for why).

`<Labels>` targets (NER) go through `ml_backend.ner.extractor`: generate candidates → align
to spans → score every span in one batched pass → `labels` regions with code-point offsets
(`ml_backend.offsets`). A task's score is the minimum over its parts (each Choices block,
each Labels block): the weakest part decides whether the pre-annotation is right.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ml_backend import bias_correction, offsets
from ml_backend.label_config import LabelSpec, Target
from ml_backend.llm.base import LLMRuntime, ProgressCallback
from ml_backend.llm.prompts import (
    Demonstration,
    ScoringPrompt,
    build_scoring_prompt,
    yes_no_question,
)
from ml_backend.llm.provider import (
    Continuation,
    LLMProvider,
    RuntimeProvider,
    as_provider,
)
from ml_backend.ner.extractor import NerExtractor, TaskEntities
from ml_backend.ner.prompts import NerDemonstration
from ml_backend.prediction_options import PredictionOptions
from ml_backend.scoring import (
    label_probabilities,
    multi_choice_prediction,
    single_choice_prediction,
    yes_probabilities,
)

log = logging.getLogger(__name__)

# Part of every model_version: bump it when the same prompt would give different scores
# (2: the end-of-answer token only where a label starts another), so Label Studio re-requests.
SCORING_REVISION = 2


@dataclass(frozen=True)
class ColdStart:
    """What round one learned about a target without human labels (see `LLMBackend.prepare_cold_start`).

    demonstrations: self-labeled in-context examples; label_bias: the model's label prior on this
    project's tasks under that prompt (for BIAS_CALIBRATION=prior_matching).
    """

    demonstrations: tuple[Demonstration, ...] = ()
    label_bias: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Refined:
    """A classification target's served scores after the learning loop (LLM × SLM blend)."""

    probabilities: np.ndarray  # (n, n_labels): the label shown is the argmax
    scores: np.ndarray  # (n,) calibrated P(pre-annotation is right): the prediction's score
    mislabeling: np.ndarray  # (n,) P(the LLM's own label is wrong): Label Studio's `mislabeling`
    clusters: np.ndarray | None = None  # (n,) the text's cluster: Label Studio's `cluster` (uncertainty sampling)
    agreement: np.ndarray | None = None  # (n,) bool: the LLM's and the SLM's labels are the same (auto-accept needs it)


class TargetHook(Protocol):
    """What the learning loop adds around the LLM (`ml_backend.refinement`): for `<Choices>`,
    distributions remembered per task and the trained SLM's blend; for `<Labels>`, each task's
    nearest annotated examples as demonstrations."""

    def known(self, target: Target, tasks: list[tuple[int, str]]) -> dict[int, np.ndarray]:
        """LLM distributions already computed for these (task id, text) pairs."""

    def record(self, target: Target, rows: list[tuple[int, str, np.ndarray]]) -> None:
        """Remember freshly computed LLM distributions (task id, text, distribution)."""

    def refine(self, target: Target, texts: list[str], llm_probabilities: np.ndarray) -> Refined | None:
        """The served scores, or None where no trained model serves this target."""

    def ner_demonstrations(self, target: Target, texts: list[str]) -> list[list[NerDemonstration]] | None:
        """For a `<Labels>` target: each text's nearest annotated examples, or None (zero-shot)."""


@dataclass(frozen=True)
class TargetScores:
    """Per-label probabilities of one target for a list of texts (None = text missing)."""

    target: Target
    probabilities: list[np.ndarray | None]
    refined: list[RefinedRow | None] | None = None


@dataclass(frozen=True)
class RefinedRow:
    """One task's served scores of one target (a row of `Refined`)."""

    probabilities: np.ndarray
    score: float
    mislabeling: float
    cluster: int | None
    agreement: bool | None


def task_text(task: dict[str, Any], target: Target) -> str | None:
    """The text a target reads from a task, or None if absent / not a non-empty string."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return None
    value = data.get(target.data_key)
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def target_text(task: dict[str, Any], target: Target) -> str | None:
    """The text the LLM (and the SLM) read for a target: HyperText markup as plain text."""
    text = task_text(task, target)
    return html_to_text(text) if text is not None and target.object_tag == "HyperText" else text


def html_to_text(markup: str) -> str:
    """HyperText objects hold HTML; the model reads the visible text."""
    without_tags = re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", markup, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(without_tags)).strip()


class LabelScorer:
    """Turns texts into label probabilities for one target; caches content-free calibration."""

    def __init__(self, model: LLMProvider | LLMRuntime, options: PredictionOptions, *, memo_size: int = 0) -> None:
        """`model`: any `LLMProvider`, or an in-process `LLMRuntime` (wrapped into its `RuntimeProvider`).

        memo_size > 0 keeps the raw probabilities of that many recent (target, demonstrations,
        text) triples: the service's cold start scores a sample of tasks with the final prompt,
        and the pre-annotation pass that follows then writes those tasks without scoring them
        again. Off by default (benchmarks time repeated passes over the same texts)."""
        self.provider = as_provider(model)
        self.options = options
        self._content_free: dict[tuple, np.ndarray] = {}
        self._memo: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._memo_size = memo_size
        self._memo_lock = threading.Lock()  # /predict and the in-process job share a scorer
        self.memo_hits = 0  # rows served from the memo (logged by the job, asserted by tests)

    @property
    def runtime(self) -> LLMRuntime | None:
        """The in-process runtime behind the provider (None for a provider without one)."""
        return self.provider.runtime if isinstance(self.provider, RuntimeProvider) else None

    # --- building blocks --------------------------------------------------------------
    def prompt(self, target: Target, demonstrations: Sequence[Demonstration] = ()) -> ScoringPrompt:
        if not self.options.use_hints:
            target = dataclasses.replace(
                target, options=tuple(dataclasses.replace(o, hint=None) for o in target.options)
            )
        return build_scoring_prompt(
            self.provider.chat_format, target, instruction=self.options.instruction, demonstrations=demonstrations
        )

    def label_continuations(self, target: Target, prompt: ScoringPrompt) -> list[Continuation]:
        """What to score after the task text, one per label (multiple choice: two per label).

        Single choice, full_sequence mode: lead + label, plus the first token of the answer's
        end only when some label's tokens are a prefix of another's (`Sci` vs `Sci/Tech`: only
        the end tells "Sci, done" from "Sci, continuing"); otherwise the end token would add
        one more scored position per label and tell nothing apart. first_token mode: lead +
        the label's first token. Multiple choice: for each label, question + lead + "yes" and
        question + lead + "no" (interleaved: yes_0, no_0, yes_1, ...).
        """
        if target.multiple:
            result = []
            for option in target.options:
                lead = yes_no_question(option.prompt_name) + prompt.answer_lead
                result.append(Continuation(lead, "yes"))
                result.append(Continuation(lead, "no"))
            return result
        if self.options.scoring_mode == "first_token":
            return [Continuation(prompt.answer_lead, o.prompt_name, first_token_only=True) for o in target.options]
        labels = [Continuation(prompt.answer_lead, option.prompt_name) for option in target.options]
        if not self.provider.some_continuation_is_a_prefix(labels):
            return labels
        return [Continuation(c.lead, c.answer, end=prompt.answer_end) for c in labels]

    def task_text(self, text: str) -> str:
        """The text as the model reads it: cut to MAX_TEXT_TOKENS tokens."""
        return self.provider.truncate(text, self.options.max_text_tokens)

    # --- token-level views, for benchmarks and tests that drive an in-process runtime directly ----
    def continuations(self, target: Target, prompt: ScoringPrompt) -> list[list[int]]:
        """`label_continuations` as the runtime's token lists (in-process providers only)."""
        return self._runtime_provider().continuation_token_ids(self.label_continuations(target, prompt))

    def task_tokens(self, text: str) -> list[int]:
        """`task_text` as the runtime's token ids (in-process providers only)."""
        return self._runtime_provider().task_token_ids(self.task_text(text))

    def _runtime_provider(self) -> RuntimeProvider:
        if not isinstance(self.provider, RuntimeProvider):
            raise TypeError(f"{type(self.provider).__name__} has no token ids: use the text-level methods")
        return self.provider

    # --- scoring ---------------------------------------------------------------------
    def raw_probabilities(
        self,
        target: Target,
        task_texts: Sequence[str],
        *,
        demonstrations: Sequence[Demonstration] = (),
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Uncorrected probabilities, shape (n, n_labels): a distribution (single) or P(yes) (multiple).

        `task_texts` as the model reads them (`task_text`: already cut to MAX_TEXT_TOKENS)."""
        if self._memo_size <= 0:
            return self._score_raw(target, task_texts, demonstrations=demonstrations, progress=progress)
        keys = [(target, tuple(demonstrations), str(text)) for text in task_texts]
        with self._memo_lock:
            known = {i: self._memo[key] for i, key in enumerate(keys) if key in self._memo}
        missing = [i for i in range(len(keys)) if i not in known]
        if progress is not None and known:
            progress(len(known))
        if missing:
            scored = self._score_raw(
                target, [task_texts[i] for i in missing], demonstrations=demonstrations, progress=progress
            )
            known.update({index: scored[row] for row, index in enumerate(missing)})
        rows = [known[i] for i in range(len(keys))]
        with self._memo_lock:
            for key, row in zip(keys, rows):
                self._memo[key] = row
                self._memo.move_to_end(key)
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
            self.memo_hits += len(keys) - len(missing)
        if not rows:
            return self._score_raw(target, [], demonstrations=demonstrations)
        return np.stack(rows, axis=0)

    def _score_raw(
        self,
        target: Target,
        task_texts: Sequence[str],
        *,
        demonstrations: Sequence[Demonstration] = (),
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        prompt = self.prompt(target, demonstrations)
        continuations = self.label_continuations(target, prompt)
        step = max(1, self.options.batch_size)
        chunks = [
            self.provider.score_labels(prompt.prefix, task_texts[start : start + step], continuations, progress=progress)
            for start in range(0, len(task_texts), step)
        ]
        logprobs = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, len(continuations)))
        if target.multiple:
            return yes_probabilities(logprobs[:, 0::2], logprobs[:, 1::2])
        return label_probabilities(logprobs)

    def probabilities(
        self,
        target: Target,
        texts: Sequence[str],
        *,
        demonstrations: Sequence[Demonstration] = (),
        label_bias: Sequence[float] | None = None,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Bias-corrected probabilities for non-empty texts, shape (len(texts), n_labels).

        BIAS_CALIBRATION=prior_matching divides out `label_bias` (estimated on the project's
        tasks by the cold-start step); until that exists it falls back to content_free.
        """
        task_texts = [self.task_text(text) for text in texts]
        raw = self.raw_probabilities(target, task_texts, demonstrations=demonstrations, progress=progress)
        return self.correct(target, raw, demonstrations=demonstrations, label_bias=label_bias)

    def correct(
        self,
        target: Target,
        raw: np.ndarray,
        *,
        demonstrations: Sequence[Demonstration] = (),
        label_bias: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Apply the configured bias correction to raw probabilities."""
        mode = self.options.bias_calibration
        if mode == "none":
            return raw
        if mode == "prior_matching" and label_bias is not None and not target.multiple:
            return bias_correction.divide_out_prior(raw, np.asarray(label_bias))
        content_free = self.content_free_probabilities(target, demonstrations)
        return self._correct(target, raw, content_free)

    def content_free_probabilities(self, target: Target, demonstrations: Sequence[Demonstration] = ()) -> np.ndarray:
        key = (target, tuple(demonstrations), self.options)
        if key not in self._content_free:
            self._content_free[key] = self.raw_probabilities(
                target, list(bias_correction.CONTENT_FREE_INPUTS), demonstrations=demonstrations
            )
        return self._content_free[key]

    @staticmethod
    def _correct(target: Target, raw: np.ndarray, content_free: np.ndarray) -> np.ndarray:
        if not target.multiple:
            return bias_correction.contextual_calibration(raw, content_free)
        corrected = np.empty_like(raw)
        for label in range(raw.shape[1]):
            as_pairs = np.stack([raw[:, label], 1.0 - raw[:, label]], axis=1)
            cf_pairs = np.stack([content_free[:, label], 1.0 - content_free[:, label]], axis=1)
            corrected[:, label] = bias_correction.contextual_calibration(as_pairs, cf_pairs)[:, 0]
        return corrected


def predict_tasks(
    scorer: LabelScorer,
    spec: LabelSpec,
    tasks: Sequence[dict[str, Any]],
    *,
    model_version: str,
    project_id: str | None = None,
    cold_start: dict[str, ColdStart] | None = None,
    progress: ProgressCallback | None = None,
    hook: TargetHook | None = None,
) -> list[dict[str, Any]]:
    """One Label Studio prediction per task, same order; tasks without text get an empty result.

    With a `hook` (a Label Studio project), LLM distributions already known for a task are not
    computed again, new ones are remembered, and a trained SLM refines the served label and score."""
    per_target = [
        _classify_target(scorer, target, tasks, cold_start=cold_start, progress=progress, hook=hook)
        for target in spec.classification_targets
    ]

    per_span_target = [
        (target, _entities_per_task(scorer, target, tasks, project_id=project_id, hook=hook))
        for target in spec.span_targets
    ]

    predictions = []
    for index, task in enumerate(tasks):
        regions, scores, mislabeling, clusters, agreement = [], [], [], [], []
        for target_scores in per_target:
            probs = target_scores.probabilities[index]
            if probs is None:
                continue
            refined = target_scores.refined[index] if target_scores.refined else None
            if refined is None:
                region, score = _choices_region(target_scores.target, probs)
            else:
                region, score = _choices_region(target_scores.target, refined.probabilities, score=refined.score)
                mislabeling.append(refined.mislabeling)
                if refined.cluster is not None:
                    clusters.append(refined.cluster)
                if refined.agreement is not None:
                    agreement.append(refined.agreement)
            regions.append(region)
            scores.append(score)
        for target, entities_per_task in per_span_target:
            task_entities = entities_per_task[index]
            if task_entities is None:
                continue
            text = task_text(task, target)
            regions.extend(_labels_regions(target, text, task_entities, unit=scorer.options.offset_unit))
            scores.append(task_entities.score)
        if not scores:
            log.warning(
                "event=task_without_text project=%s task=%s model_version=%s",
                project_id,
                task.get("id") if isinstance(task, dict) else None,
                model_version,
            )
        prediction = {
            "result": regions,
            # The weakest part decides whether the whole pre-annotation is right.
            "score": float(min(scores)) if scores else 0.0,
            "model_version": model_version,
        }
        if mislabeling:
            prediction["mislabeling"] = float(max(mislabeling))
        if clusters:
            prediction["cluster"] = int(clusters[0])
        if agreement:  # not stored by Label Studio (its serializer ignores the key); read by auto-accept
            prediction["agreement"] = bool(all(agreement))
        predictions.append(prediction)
    return predictions


def _classify_target(
    scorer: LabelScorer,
    target: Target,
    tasks: Sequence[dict[str, Any]],
    *,
    cold_start: dict[str, ColdStart] | None,
    progress: ProgressCallback | None,
    hook: TargetHook | None,
) -> TargetScores:
    """The LLM's distribution of every task that has text (known ones from the hook), and the
    hook's refinement of them."""
    texts = [target_text(task, target) for task in tasks]
    present = [i for i, t in enumerate(texts) if t is not None]
    probabilities: list[np.ndarray | None] = [None] * len(tasks)
    if not present:
        return TargetScores(target=target, probabilities=probabilities)
    ids = [_task_id(tasks[i]) for i in present]
    known = hook.known(target, [(i, texts[p]) for i, p in zip(ids, present) if i is not None]) if hook else {}
    missing = [p for i, p in zip(ids, present) if i is None or i not in known]
    if missing:
        learned = (cold_start or {}).get(target.from_name, ColdStart())
        scored = scorer.probabilities(
            target,
            [texts[i] for i in missing],
            demonstrations=learned.demonstrations,
            label_bias=learned.label_bias,
            progress=progress,
        )
        for row, task_index in enumerate(missing):
            probabilities[task_index] = scored[row]
        if hook is not None:
            hook.record(target, [(_task_id(tasks[i]), texts[i], probabilities[i]) for i in missing
                                 if _task_id(tasks[i]) is not None])
    for task_id, task_index in zip(ids, present):
        if task_id is not None and task_id in known:
            probabilities[task_index] = known[task_id]
    refined_rows: list[RefinedRow | None] | None = None
    refined = hook.refine(target, [texts[i] for i in present], np.stack([probabilities[i] for i in present])) if hook else None
    if refined is not None:
        refined_rows = [None] * len(tasks)
        for row, task_index in enumerate(present):
            refined_rows[task_index] = RefinedRow(
                probabilities=refined.probabilities[row], score=float(refined.scores[row]),
                mislabeling=float(refined.mislabeling[row]),
                cluster=None if refined.clusters is None else int(refined.clusters[row]),
                agreement=None if refined.agreement is None else bool(refined.agreement[row]))
    return TargetScores(target=target, probabilities=probabilities, refined=refined_rows)


def _task_id(task: dict[str, Any]) -> int | None:
    task_id = task.get("id") if isinstance(task, dict) else None
    return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None


def _choices_region(
    target: Target, probabilities: np.ndarray, *, score: float | None = None
) -> tuple[dict[str, Any], float]:
    """The region of a Choices target; `score` (a calibrated one) replaces the read-out's."""
    if target.multiple:
        chosen, read_out = multi_choice_prediction(probabilities)
        choices = [target.options[i].result_value for i in chosen]
    else:
        best, read_out = single_choice_prediction(probabilities)
        choices = [target.options[best].result_value]
    score = read_out if score is None else score
    region = {
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "choices",
        "value": {"choices": choices},
        "score": score,
    }
    return region, score


def _entities_per_task(
    scorer: LabelScorer,
    target: Target,
    tasks: Sequence[dict[str, Any]],
    *,
    project_id: str | None,
    hook: TargetHook | None = None,
) -> list[TaskEntities | None]:
    """The NER part of every task for one `<Labels>` target (None where the task has no text)."""
    entities: list[TaskEntities | None] = [None] * len(tasks)
    if target.object_tag != "Text":
        # HyperText regions are addressed by XPath + offsets: not supported, say so once per request.
        log.warning("event=span_target_skipped project=%s from_name=%s object=%s", project_id, target.from_name, target.object_tag)
        return entities
    texts = [task_text(task, target) for task in tasks]
    present = [i for i, text in enumerate(texts) if text is not None]
    if not present:
        return entities
    extractor = NerExtractor(scorer)
    present_texts = [texts[i] for i in present]
    per_text = hook.ner_demonstrations(target, present_texts) if hook is not None else None
    predicted = extractor.predict(target, present_texts, per_text_demonstrations=per_text)
    for task_index, task_entities in zip(present, predicted):
        entities[task_index] = task_entities
        log.info(
            "event=ner_task project=%s task=%s candidates=%d entities=%d score=%.3f",
            project_id,
            tasks[task_index].get("id"),
            task_entities.candidates,
            len(task_entities.entities),
            task_entities.score,
        )
    return entities


def _labels_regions(
    target: Target, text: str, task_entities: TaskEntities, *, unit: offsets.OffsetUnit
) -> list[dict[str, Any]]:
    return [
        {
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "labels",
            "value": offsets.span_value(text, entity.start, entity.end, [entity.label], unit=unit),
            "score": entity.score,
        }
        for entity in task_entities.entities
    ]
