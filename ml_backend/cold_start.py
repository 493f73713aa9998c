"""Round one, before any human label: self-labeled demonstrations and the project's label bias.

Why: a small model's zero-shot read-out leans toward some labels and knows nothing of the
project's texts. Before anyone labels, the project's own (unlabeled) tasks are all we have:
score a sample zero-shot, keep diverse confident ones as in-context demonstrations (CORAL's
round one, `ml_backend.demos`), then, under the final prompt, estimate the model's own label bias
(anchor inputs that carry no label evidence) and the project's label prior (EM on the tasks),
so BIAS_CALIBRATION=prior_matching divides the one out and puts the other back
(`bias_correction.estimated_prior_bias`): a 90/10 project is predicted about 90/10, not 50/50.

What is learned is stored in the project's state (`ProjectState.cold_start`) together with the
*basis* it was learned for (config, instruction, demonstration count): a changed config makes
it stale, so it is ignored by predictions and learned again by the next pre-annotation job.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Sequence

from ml_backend import bias_correction
from ml_backend.label_config import LabelSpec, Target
from ml_backend.llm.prompts import Demonstration
from ml_backend.model_store import ProjectState
from ml_backend.predictor import ColdStart, LabelScorer, html_to_text, task_text

log = logging.getLogger(__name__)

DEMO_POOL_MIN = 64  # the zero-shot pass reads at least this many texts to choose demonstrations from
DEMO_POOL_PER_DEMONSTRATION = 8  # ... and 8 candidates per demonstration asked for

StageProgress = Callable[[str, int, int], None]  # (stage, tasks done, tasks in the stage)


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


def demonstration_pool_size(n_texts: int, n_demonstrations: int) -> int:
    """How many of the sample's texts the zero-shot pass reads to choose demonstrations from.

    Why not the whole sample: that pass is scored only to pick k diverse, confident examples,
    and 8 candidates per demonstration (at least 64) already cover the label mix; the whole
    sample is then read once, under the final prompt, for the label bias, and those scores are
    the predictions the job writes (nothing read twice is thrown away).
    """
    return min(n_texts, max(DEMO_POOL_MIN, DEMO_POOL_PER_DEMONSTRATION * n_demonstrations))


def learn_target(
    scorer: LabelScorer,
    target: Target,
    texts: list[str],
    n_demonstrations: int,
    *,
    progress: StageProgress | None = None,
    pool_size: int | None = None,
) -> dict[str, Any]:
    """Self-labeled demonstrations and the label bias under the prompt that uses them (JSON-ready).

    `progress(stage, done, total)` is called as tasks are scored in each of the two passes;
    `pool_size` overrides `demonstration_pool_size` (benchmarks compare the two).
    """
    from ml_backend.demos import select_self_labeled_demos

    inputs = [scorer.task_text(text) for text in texts]
    demos: tuple[Demonstration, ...] = ()
    if n_demonstrations > 0:
        pool = min(len(texts), pool_size) if pool_size else demonstration_pool_size(len(texts), n_demonstrations)
        raw_pool = scorer.raw_probabilities(
            target, inputs[:pool], progress=_counter(progress, f"{target.from_name}: choosing demonstrations", pool)
        )
        chosen = select_self_labeled_demos(texts[:pool], scorer.correct(target, raw_pool), k=n_demonstrations)
        demos = tuple(
            Demonstration(text=texts[c.index], labels=(target.options[c.label].prompt_name,)) for c in chosen
        )
    raw = scorer.raw_probabilities(
        target, inputs, demonstrations=demos,
        progress=_counter(progress, f"{target.from_name}: label bias with the final prompt", len(inputs)),
    )
    anchor = scorer.raw_probabilities(target, anchor_inputs(scorer, inputs), demonstrations=demos)
    model_bias = bias_correction.anchor_bias(anchor)
    prior = bias_correction.estimate_label_prior(raw, model_bias)
    label_bias = bias_correction.estimated_prior_bias(raw, anchor)
    log.info(
        "event=label_prior target=%s tasks=%d prior=%s model_bias=%s",
        target.from_name,
        len(texts),
        [round(float(p), 3) for p in prior],
        [round(float(b), 3) for b in model_bias],
    )
    return {
        "demonstrations": [{"text": d.text, "labels": list(d.labels)} for d in demos],
        "label_bias": [round(float(b), 6) for b in label_bias],
        "label_prior": [round(float(p), 6) for p in prior],
        "n_tasks": len(texts),
    }


def _counter(progress: StageProgress | None, stage: str, total: int) -> Callable[[int], None] | None:
    """Adapt the runtime's per-task increments to `progress(stage, done, total)`."""
    if progress is None:
        return None
    done = 0
    progress(stage, 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, min(done, total), total)

    return advance


def anchor_inputs(scorer: LabelScorer, task_texts: list[str]) -> list[str]:
    """Inputs without label evidence whose mean prediction is the model's own label bias:
    the fixed content-free strings ("N/A", ...) and random bags of the project's tokens."""
    return list(bias_correction.CONTENT_FREE_INPUTS) + scorer.provider.domain_context_inputs(task_texts)


def stored_basis(state: ProjectState) -> str | None:
    return (state.cold_start or {}).get("basis")


def cold_start_of(state: ProjectState, basis: str | None = None) -> dict[str, ColdStart]:
    """The stored cold-start results per target (from_name); {} when they were learned for
    another basis (config or instruction changed since) or never."""
    stored = state.cold_start or {}
    if basis is not None and stored.get("basis") != basis:
        return {}
    learned = {}
    for from_name, entry in stored.get("targets", {}).items():
        learned[from_name] = _cold_start_entry(entry)
    return learned


def _cold_start_entry(entry: dict[str, Any]) -> ColdStart:
    return ColdStart(
        demonstrations=tuple(
            Demonstration(text=d["text"], labels=tuple(d["labels"])) for d in entry.get("demonstrations", [])
        ),
        label_bias=tuple(entry["label_bias"]) if entry.get("label_bias") else None,
    )


def active_learned_demos(state: ProjectState, basis: str) -> dict[str, Any] | None:
    """Round two's prompt, when it serves: demonstrations chosen from the human labels
    (`training.learned_demos`), adopted, and learned for this basis (config, instruction,
    demonstration count). Only what changes the prompt (target, demonstrations, label bias),
    never the evaluation's figures: a rejected evaluation must leave the model version as it is,
    because a new LLM prompt means every task scored again."""
    record = state.learned_demos
    if not isinstance(record, dict) or record.get("basis") != basis or not record.get("adopted"):
        return None
    demonstrations = record.get("demonstrations")
    if not isinstance(record.get("target"), str) or not isinstance(demonstrations, list) or not demonstrations:
        return None
    return {"target": record["target"], "demonstrations": demonstrations, "label_bias": record.get("label_bias")}


def with_learned_demos(learned: dict[str, ColdStart], active: dict[str, Any] | None) -> dict[str, ColdStart]:
    """The cold start's results with round two's prompt in place of its target's self-labeled one."""
    if active is None:
        return learned
    return {**learned, active["target"]: _cold_start_entry(active)}


def learned_demos_with_prompt(current: dict[str, Any] | None, prompt: dict[str, Any] | None) -> dict[str, Any] | None:
    """A round-two record (`ProjectState.learned_demos`) serving `prompt` (as
    `Profiles.learned_demos_record` gives it; None: the cold start's prompt), its evaluation
    figures kept: what a rollback restores from a version's manifest, and what a rejected
    evaluation keeps serving."""
    record = dict(current or {})
    if prompt is None:
        if not record:
            return None
        record.update(adopted=False, demonstrations=[], label_bias=None)
        return record
    record.update(adopted=True, basis=prompt["basis"], target=prompt["target"],
                  demonstrations=prompt["demonstrations"], label_bias=prompt.get("label_bias"))
    return record
