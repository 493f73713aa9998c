"""The training job: a project's annotations → a new SLM version → published to every task.

Enqueued by `ml_backend.retraining` (annotation webhooks, Start Training, `POST /train`, `cli
train`) under its dotted path `training.job.train_project`; an rq worker or the in-process
thread runs it with the composition root's services. One run, stage by stage:

    read       tasks + annotations from Label Studio (paged); team annotations combined
               (`training.annotations`); nothing new since the serving version → stop
    llm        the LLM's distribution of every task: cached ones (`ml_backend.llm_cache`, filled
               by pre-annotation and /predict) are reused; only missing tasks are scored, in batches
    embed      frozen-encoder embeddings (cached on disk per text: the expensive part, once per task)
    demos      round two (`training.learned_demos`): with enough new human labels, demonstrations
               picked from them are compared, cross-fitted on the human-labeled tasks, with the
               serving prompt; adopted only when clearly better, and then
    llm_rescore  every task is scored again under the new prompt (its cost logged first)
    fit        which LLM distribution to learn from (`training.llm_teacher`: bias-corrected, or the
               read-out itself where that is clearly more consistent with the embeddings);
               noisy-label SLM (`SLMClassifier`, method "noisy") on LLM labels + human labels; the
               LLM × SLM blend and the P(correct) calibration on the human labels, cross-fitted;
               the text clusters and the queue's P(correct) model (`fit_queue_priority`); labels
               neither the LLM nor an annotator gave the SLM are logged with advice (`training.label_coverage`)
    save       `MODEL_DIR/<project>/slm/<version>/` written to a temporary directory and renamed:
               a crash leaves the previous version serving
    publish    `ProjectState.slm_version` (and round two's record) and the version counter in one atomic update; the
               pre-annotation job then rewrites every unlabeled task under the new model_version

A failure at any stage records `last_error` and re-raises (the runner retries); the previous
version keeps serving because nothing switches before `publish`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ml_backend import keys
from ml_backend.cold_start import learned_demos_with_prompt
from ml_backend.config import Settings
from ml_backend.inference import Inference
from ml_backend.jobs import JobRunner, check_deadline, current_job_id
from ml_backend.kv import KV
from ml_backend.label_config import Target
from ml_backend.llm.priority import background_work
from ml_backend.llm_cache import LLMDistributionCache
from ml_backend.ls_client import ProjectClient, TaskRecord, describe_failure
from ml_backend.model_store import ModelStore, ProjectState
from ml_backend.predictor import ColdStart, target_text
from ml_backend.profile import Profiles, ProjectProfile
from ml_backend.prompt_choice import stored_variant
from ml_backend.publishing import Publisher
from ml_backend.refinement import Encoders
from ml_backend.retraining import FORCE_EVENT, TrainingStatus
from ml_backend.slm_model import next_version, prune_versions, serving_manifest, versions_dir
from ml_backend.clustering import fit_clusters
from ml_backend.review_priority import PriorityModel, cluster_offsets, fit_priority, prior_model
from ml_backend.review_priority import features as priority_features
from ml_backend.versioning import llm_version
from training.annotations import annotations_fingerprint, combine_annotations, human_annotations
from training.blend import LLMSLMBlend
from training.label_coverage import OutOfReach, labels_out_of_reach
from training.learned_demos import evaluate_learned_demos, evaluation_due, learned_prompt
from training.llm_teacher import LLMTeacher, choose_llm_teacher
from training.ner_examples import examples_of, save_ner_examples
from training.slm import SLMClassifier

log = logging.getLogger(__name__)

LLM_BATCH = 16  # tasks per LLM scoring step (progress, deadline checks, cache writes)
MIN_TASKS = 8  # fewer tasks with text: nothing worth learning
MAX_DEBOUNCE_S = 30.0  # a run waits at most this long for a burst of events to end


class TrainingContext(Protocol):
    """What the job needs; the composition root (`ml_backend.wiring.Services`) provides it."""

    settings: Settings
    kv: KV
    runner: JobRunner | None
    store: ModelStore
    profiles: Profiles
    inference: Inference
    publisher: Publisher
    encoders: Encoders

    def label_studio(self, state: ProjectState) -> ProjectClient: ...


class NothingToTrain(Exception):
    """The project cannot be trained now; the message says why (recorded as the run's outcome)."""


def train_project(project_key: str, *, context: TrainingContext,
                  on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """The job (see the module docstring). Returns a summary; raises on failure."""
    project_key = str(project_key)
    wait_for_quiet(context.kv, keys.training_events(project_key), context.settings.train_debounce_s)
    events = context.kv.move_set(keys.training_events(project_key), keys.training_active(project_key))
    forced = any(event.startswith(f"{FORCE_EVENT}:") for event in events)
    return TrainingRun(context, project_key, forced=forced, on_progress=on_progress).execute()


def wait_for_quiet(kv: KV, events_key: str, quiet_s: float, *, most_s: float = MAX_DEBOUNCE_S) -> None:
    """Wait until no event joined `events_key` for `quiet_s` (at most `most_s`): a burst of
    webhooks (50 annotators submitting, a bulk edit) is taken by this run as a whole, instead of
    starting a follow-up run every TRAIN_MIN_NEW_ANNOTATIONS events."""
    if quiet_s <= 0:
        return
    deadline = time.monotonic() + most_s
    seen = len(kv.smembers(events_key))
    while time.monotonic() < deadline:
        time.sleep(min(quiet_s, max(0.0, deadline - time.monotonic())))
        now = len(kv.smembers(events_key))
        if now == seen:
            return
        seen = now


class TrainingRun:
    def __init__(self, context: TrainingContext, project_key: str, *, forced: bool,
                 on_progress: Callable[[str, int, int], None] | None = None) -> None:
        self.context = context
        self.project_key = project_key
        self.forced = forced
        self.on_progress = on_progress
        self.status = TrainingStatus(context.kv)
        self.timings: dict[str, float] = {}
        self.label_studio_url: str | None = None  # named in the recorded error when Label Studio fails

    def execute(self) -> dict[str, Any]:
        previous = self.status.get(self.project_key)
        started = time.time()
        self._report(state="running", stage="read", done=0, total=0, job_id=current_job_id(), started_at=started,
                     finished_at=None, last_error=None, runs=int(previous.get("runs", 0)) + 1)
        try:
            summary = self._run()
        except NothingToTrain as reason:
            self.context.kv.delete(keys.training_active(self.project_key))
            self._report(state="skipped", stage=None, reason=str(reason), finished_at=time.time())
            log.info("event=training_skipped project=%s reason=%s", self.project_key, reason)
            return {"project": self.project_key, "status": "skipped", "reason": str(reason)}
        except Exception as exc:
            self._report(state="failed", last_error=describe_failure(exc, self.label_studio_url), finished_at=time.time())
            raise
        self.context.kv.delete(keys.training_active(self.project_key))
        self._report(state="done", stage=None, finished_at=time.time(), **summary)
        log.info("event=training_done project=%s slm_version=%s model_version=%s seconds=%.1f",
                 self.project_key, summary["slm_version"], summary["model_version"], time.time() - started)
        return {"project": self.project_key, "status": "done", **summary}

    def _report(self, **changes: Any) -> None:
        self.status.update(self.project_key, **changes)

    def _stage(self, stage: str, done: int, total: int) -> None:
        self._report(stage=stage, done=done, total=total)
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    # --- the stages ----------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        context = self.context
        state = context.store.load(self.project_key)
        if not state.label_config:
            raise NothingToTrain("the project has no labeling config yet (connect it so /setup runs)")
        profile = context.profiles.of_state(state)
        target = trainable_target(profile)
        tasks = self._read(state, target)
        annotations_total = sum(1 for task in tasks for a in task.annotations if not a.get("was_cancelled"))
        # What this run saw, whatever it decides: the reconciliation sweep compares Label Studio's
        # count with it, so a run that skips or fails on these annotations is not started again.
        self._report(annotations_seen=annotations_total)
        for task in tasks:  # auto-accepted annotations are the models' own labels, never a human one
            task.annotations = human_annotations(task.annotations)
        # Over the human annotations only: an auto-accept pass (which Label Studio's count sees)
        # is no reason to train again.
        fingerprint = annotations_fingerprint((task.id, task.annotations) for task in tasks)
        if not self.forced and self._serving_is_current(state, profile, target, fingerprint):
            raise NothingToTrain("no annotation changed since the serving version was trained")
        if target.kind == "labels":
            return self._run_ner(profile, target, tasks, fingerprint, annotations_total)
        texts = [target_text(task.as_task(), target) for task in tasks]
        rows = [i for i, text in enumerate(texts) if text is not None]
        if len(rows) < MIN_TASKS:
            raise NothingToTrain(f"{len(rows)} tasks with text; at least {MIN_TASKS} are needed")
        tasks, texts = [tasks[i] for i in rows], [texts[i] for i in rows]
        labels = target.result_values
        human = [combine_annotations(task.annotations, target.from_name, labels) for task in tasks]
        human_labels = np.array([h.label if h is not None else -1 for h in human], dtype=int)
        llm_probabilities = self._llm_distributions(profile, target, tasks, texts)
        embeddings = self._embed(texts)
        round_two = self._round_two(state, profile, target, tasks, texts, embeddings, human_labels, llm_probabilities)
        if round_two.profile is not None:  # adopted: the new prompt's distributions are what the SLM learns from
            profile, llm_probabilities = round_two.profile, round_two.llm_probabilities
        teacher = choose_llm_teacher(embeddings, llm_probabilities, applied_label_bias(profile, target))
        slm, blend, metrics = self._fit(embeddings, teacher.probabilities, human_labels, labels)
        queue = fit_queue_priority(embeddings, teacher.probabilities, slm.oof_probabilities_, human_labels, blend)
        metrics.update(queue.metrics)
        metrics.update(round_two.metrics)
        metrics.update({"llm_teacher_uncorrected": float(teacher.prior is not None),
                        **{f"llm_consistency_{name}": value for name, value in teacher.consistency.items()}})
        log.info("event=training_llm_teacher project=%s teacher=%s consistency=%s", self.project_key, teacher.name,
                 ",".join(f"{name}:{value:.3f}" for name, value in teacher.consistency.items()) or "-")
        out_of_reach = self._labels_out_of_reach(profile, target, teacher, human_labels)
        metrics["labels_out_of_reach"] = float(len(out_of_reach))
        version = self._save(slm, blend, metrics, profile, target, human, fingerprint, len(tasks), annotations_total,
                             queue, teacher, out_of_reach)
        model_version = self._publish(version, learned_demos=round_two.record)
        return {"slm_version": version, "model_version": model_version, "metrics": metrics,
                "tasks": len(tasks), "human_labels": int((human_labels >= 0).sum()), "timings_s": self.timings}

    def _run_ner(self, profile: ProjectProfile, target: Target, tasks: list[TaskRecord], fingerprint: str,
                 annotations_total: int) -> dict[str, Any]:
        """NER: the annotated tasks and their embeddings become the version (`training.ner_examples`)."""
        pairs = [(text, task.annotations) for task in tasks
                 if (text := target_text(task.as_task(), target)) is not None and task.annotations]
        texts, entities = examples_of(pairs, target, profile.options.offset_unit)
        if not texts:
            raise NothingToTrain(f"no task has an annotation of <Labels name=\"{target.from_name}\"> yet")
        embeddings = self._embed(texts)
        self._stage("save", 0, 1)
        project_dir = self.context.store.project_dir(self.project_key)
        version = next_version(project_dir)
        counts = {"tasks": len(tasks), "human_labels": len(texts), "examples": len(texts),
                  "entities": sum(len(found) for found in entities), "annotations": len(texts),
                  "annotations_total": annotations_total}
        save_ner_examples(versions_dir(project_dir) / version, texts, entities, embeddings, {
            "target": target.from_name, "label_names": target.result_values,
            "encoder": self.context.settings.slm_encoder, "encoder_id": self.context.encoders.get().encoder_id,
            "llm_version": llm_version(profile.version), "annotations_fingerprint": fingerprint, "counts": counts, "metrics": {},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        self._stage("save", 1, 1)
        model_version = self._publish(version)
        return {"slm_version": version, "model_version": model_version, "metrics": {}, "tasks": len(tasks),
                "human_labels": len(texts), "timings_s": self.timings}

    def _read(self, state: ProjectState, target: Target) -> list[TaskRecord]:
        started = time.perf_counter()
        client = self.context.label_studio(state)
        self.label_studio_url = getattr(client, "url", None)
        tasks = list(client.tasks(page_size=self.context.settings.preannotate_page_size, annotations=True))
        self.timings["read"] = round(time.perf_counter() - started, 2)
        self._stage("read", len(tasks), len(tasks))
        log.info("event=training_read project=%s tasks=%d annotated=%d", self.project_key, len(tasks),
                 sum(1 for t in tasks if t.annotations))
        return tasks

    def _serving_is_current(self, state: ProjectState, profile: ProjectProfile, target: Target,
                            fingerprint: str) -> bool:
        """The serving version learned from these very annotations, for this target, labels and
        LLM prompt (a changed config or instruction makes it stale even with no new annotation)."""
        manifest = serving_manifest(self.context.store.project_dir(self.project_key), state.slm_version)
        return manifest is not None and (manifest.get("annotations_fingerprint") == fingerprint
                and manifest.get("target") == target.from_name
                and manifest.get("label_names") == target.result_values
                and manifest.get("llm_version") == llm_version(profile.version))

    def _llm_distributions(self, profile: ProjectProfile, target: Target, tasks: list[TaskRecord],
                           texts: list[str], *, stage: str = "llm") -> np.ndarray:
        """Every task's LLM distribution: from the cache, scoring only the missing ones (the
        scoring path records what it computes in the same cache)."""
        started = time.perf_counter()
        cache = LLMDistributionCache(self.context.kv, ttl_s=self.context.settings.llm_distribution_ttl_s)
        prompt_version = llm_version(profile.version)
        pairs = [(task.id, text) for task, text in zip(tasks, texts)]
        known = cache.get_many(self.project_key, prompt_version, target.from_name, pairs)
        missing = [task for task in tasks if task.id not in known]
        log.info("event=training_llm project=%s stage=%s cached=%d to_score=%d", self.project_key, stage, len(known),
                 len(missing))
        for start in range(0, len(missing), LLM_BATCH):
            check_deadline()
            self._stage(stage, start, len(missing))
            with background_work():
                self.context.inference.score_tasks(profile, [task.as_task() for task in missing[start:start + LLM_BATCH]])
        known = cache.get_many(self.project_key, prompt_version, target.from_name, pairs)
        absent = [task.id for task in tasks if task.id not in known]
        if absent:
            raise RuntimeError(f"the LLM gave no distribution for {len(absent)} tasks (first: {absent[:5]})")
        self._stage(stage, len(missing), len(missing))
        self.timings[stage] = round(time.perf_counter() - started, 2)
        return np.stack([known[task.id] for task in tasks])

    def _round_two(self, state: ProjectState, profile: ProjectProfile, target: Target, tasks: list[TaskRecord],
                   texts: list[str], embeddings: np.ndarray, human_labels: np.ndarray,
                   llm_probabilities: np.ndarray) -> "RoundTwo":
        """CORAL round two (`training.learned_demos`): evaluate demonstrations picked from the human
        labels against the serving prompt; if adopted, score every task again under the new prompt."""
        settings = self.context.settings
        k = settings.learned_demos
        if k == 0 or stored_variant(state) is not None:
            return RoundTwo()  # off, or a prompt variant chosen by hand (`cli choose-prompt`) serves
        basis = self.context.profiles.cold_start_basis(state, profile.spec)
        why_not = evaluation_due(state.learned_demos, basis=basis, target=target.from_name, human_labels=human_labels,
                                 n_labels=len(target.result_values), min_labels=settings.learned_demos_min_labels)
        if why_not is not None:
            log.info("event=training_learned_demos project=%s decision=not_evaluated reason=%r", self.project_key, why_not)
            return RoundTwo()
        started = time.perf_counter()
        serving = profile.cold_start.get(target.from_name, ColdStart())
        scorer = self.context.inference.scorer(profile.options)
        self._stage("demos", 0, 0)
        with background_work():
            evaluation = evaluate_learned_demos(
                scorer, target, texts, embeddings, human_labels, llm_probabilities, k=k,
                serving_demo_texts={d.text for d in serving.demonstrations},
                progress=lambda done, total: self._stage("demos", done, total))
        n_human = int((human_labels >= 0).sum())
        record = {"basis": basis, "target": target.from_name, "evaluated_labels": n_human,
                  "evaluation": {**evaluation.as_dict(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
        metrics = {"learned_demos_evaluated": float(evaluation.n_eval), "learned_demos_adopted": float(evaluation.adopt),
                   "learned_demos_bal_acc_serving": evaluation.balanced_accuracy_serving,
                   "learned_demos_bal_acc_learned": evaluation.balanced_accuracy_learned,
                   "learned_demos_p_value": evaluation.p_value}
        rescore_s = len(tasks) * evaluation.seconds_per_task
        log.info("event=training_learned_demos project=%s model_version=%s decision=%s reason=%r n_eval=%d "
                 "bal_acc_serving=%.3f bal_acc_learned=%.3f wins=%d losses=%d p=%.3f seconds=%.1f rescore_tasks=%d "
                 "rescore_estimate_s=%.0f", self.project_key, profile.version,
                 "adopted" if evaluation.adopt else "rejected", evaluation.reason, evaluation.n_eval,
                 evaluation.balanced_accuracy_serving, evaluation.balanced_accuracy_learned, evaluation.wins,
                 evaluation.losses, evaluation.p_value, evaluation.seconds, len(tasks) if evaluation.adopt else 0,
                 rescore_s if evaluation.adopt else 0.0)
        if not evaluation.adopt:  # the serving prompt stays (and so do earlier learned demonstrations)
            serving_prompt = self.context.profiles.learned_demos_record(state, profile.spec)
            self.timings["demos"] = round(time.perf_counter() - started, 2)
            return RoundTwo(record=learned_demos_with_prompt(record, serving_prompt), metrics=metrics)
        with background_work():
            demo_rows, prompt = learned_prompt(scorer, target, texts, embeddings, human_labels,
                                               np.array(sorted(evaluation.cross_fitted), dtype=int), k=k)
        self.timings["demos"] = round(time.perf_counter() - started, 2)
        return self._adopt(state, profile, target, tasks, texts, {**record, "adopted": True, **prompt}, metrics,
                           {row: evaluation.cross_fitted[row] for row in demo_rows})

    def _adopt(self, state: ProjectState, profile: ProjectProfile, target: Target, tasks: list[TaskRecord],
               texts: list[str], record: dict[str, Any], metrics: dict[str, float],
               demo_rows: dict[int, np.ndarray]) -> "RoundTwo":
        """The new prompt's profile and every task's distribution under it (`llm_rescore`). A
        demonstration's own task is no test of the prompt that shows it: the blend sees its
        cross-fitted distribution (`demo_rows`) instead."""
        adopted = self.context.profiles.of_state(dataclasses.replace(state, learned_demos=record), profile.spec)
        rescored = self._llm_distributions(adopted, target, tasks, texts, stage="llm_rescore")
        for row, distribution in demo_rows.items():
            rescored[row] = distribution
        metrics = {**metrics, "learned_demos_rescore_s": self.timings["llm_rescore"]}
        return RoundTwo(record=record, metrics=metrics, profile=adopted, llm_probabilities=rescored)

    def _labels_out_of_reach(self, profile: ProjectProfile, target: Target, teacher: LLMTeacher,
                             human_labels: np.ndarray) -> list[OutOfReach]:
        """Labels neither the LLM nor an annotator gave the SLM (`training.label_coverage`), each
        logged with what the user can do about it."""
        found = labels_out_of_reach(teacher.probabilities, human_labels, target)
        for item in found:
            log.warning("event=training_label_out_of_reach project=%s model_version=%s label=%r llm_tasks=%d "
                        "tasks=%d human_labels=0 advice=%r", self.project_key, profile.version, item.label,
                        item.llm_tasks, item.tasks, item.advice())
        return found

    def _embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        self._stage("embed", 0, len(texts))
        embeddings = self.context.encoders.embed(texts, progress=lambda done, total: self._stage("embed", done, total))
        self.timings["embed"] = round(time.perf_counter() - started, 2)
        return embeddings

    def _fit(self, embeddings: np.ndarray, llm_probabilities: np.ndarray, human_labels: np.ndarray,
             labels: list[str]) -> tuple[SLMClassifier, LLMSLMBlend, dict[str, float]]:
        started = time.perf_counter()
        self._stage("fit", 0, 1)
        fitted = fit_slm_and_blend(embeddings, llm_probabilities, human_labels, labels,
                                   encoder_id=self.context.encoders.get().encoder_id)
        self.timings["fit"] = round(time.perf_counter() - started, 2)
        self._stage("fit", 1, 1)
        return fitted

    def _save(self, slm: SLMClassifier, blend: LLMSLMBlend, metrics: dict[str, float], profile: ProjectProfile,
              target: Target, human: list, fingerprint: str, n_tasks: int, annotations_total: int,
              queue: "QueuePriority", teacher: LLMTeacher, out_of_reach: list[OutOfReach]) -> str:
        started = time.perf_counter()
        self._stage("save", 0, 1)
        project_dir = self.context.store.project_dir(self.project_key)
        version = next_version(project_dir)
        blend_state = blend.state()
        slm.save(versions_dir(project_dir) / version, extra_manifest={
            "target": target.from_name,
            "encoder": self.context.settings.slm_encoder,
            "llm_version": llm_version(profile.version),
            # the prompt this version learned under, so a rollback serves that prompt again
            "learned_demos": self.context.profiles.learned_demos_record(profile.state, profile.spec),
            "annotations_fingerprint": fingerprint,
            "blend": {"weights": blend_state["weights"], "calibration": blend_state["calibration"],
                      "human_labels": int(sum(h is not None for h in human)),
                      "llm_prior": list(teacher.prior) if teacher.prior is not None else None},
            # annotations_total counts as Label Studio's total_annotations_number does (not skipped),
            # so an event's count can be compared with it (`retraining`, reconciliation).
            "counts": {**slm.counts_, "annotations": int(sum(h.annotations for h in human if h is not None)),
                       "annotations_total": annotations_total,
                       "contested_tasks": int(sum(1 for h in human if h is not None and h.agreement < 1.0))},
            "metrics": metrics,
            "labels_out_of_reach": [dataclasses.asdict(item) | {"advice": item.advice()} for item in out_of_reach],
            "trained_on_tasks": n_tasks,
            "priority": queue.model.as_dict(),
            "clusters": int(len(queue.centroids)),
        }, extra_arrays={"centroids": queue.centroids})
        self.timings["save"] = round(time.perf_counter() - started, 2)
        self._stage("save", 1, 1)
        return version

    def _publish(self, version: str, *, learned_demos: dict[str, Any] | None = None) -> str:
        """Switch the project to the new version (and round two's prompt, when this run evaluated
        it) and re-annotate every task under a new model_version."""
        context = self.context

        def switch(state: ProjectState) -> None:
            state.slm_version = version
            if learned_demos is not None:
                state.learned_demos = learned_demos

        model_version = context.publisher.publish_new_version(self.project_key, switch, reason="slm_trained")
        removed = prune_versions(context.store.project_dir(self.project_key), context.settings.slm_keep_versions,
                                 current=version)
        log.info("event=slm_published project=%s slm_version=%s model_version=%s pruned=%s",
                 self.project_key, version, model_version, ",".join(removed) or "-")
        return model_version


@dataclass(frozen=True)
class RoundTwo:
    """What round two decided this run: the record to store (None: not evaluated), its metrics, and
    when adopted the profile with the new prompt and every task's distribution under it."""

    record: dict[str, Any] | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    profile: ProjectProfile | None = None
    llm_probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class QueuePriority:
    model: PriorityModel
    centroids: np.ndarray
    metrics: dict[str, float]


def fit_slm_and_blend(embeddings: np.ndarray, llm_probabilities: np.ndarray, human_labels: np.ndarray,
                      labels: list[str], *, encoder_id: str) -> tuple[SLMClassifier, LLMSLMBlend, dict[str, float]]:
    """The noisy-label SLM, then the blend on the human-labeled tasks (SLM out-of-fold there).
    The fitting core of a run, without Label Studio or the store: the review-order benchmark runs it too."""
    slm = SLMClassifier(method="noisy", label_names=labels, encoder_id=encoder_id, seed=0)
    slm.fit(embeddings, llm_probabilities, human_labels, n_classes=len(labels))
    rows = human_labels >= 0
    blend = LLMSLMBlend()
    if rows.any():
        blend.fit(llm_probabilities[rows], slm.oof_probabilities_[rows], human_labels[rows])
    served = blend.predict(llm_probabilities, slm.predict_proba(embeddings))
    metrics = {
        **slm.metrics_,
        **blend.state()["metrics"],
        "disagreement_rate": float(served.disagreement.mean()),
        "clean_llm_labels": slm.counts_["clean_llm_labels"],
        "pseudo_labels": slm.counts_["pseudo_labels"],
    }
    return slm, blend, metrics


def fit_queue_priority(embeddings: np.ndarray, llm: np.ndarray, slm_oof: np.ndarray, human_labels: np.ndarray,
                       blend: LLMSLMBlend) -> QueuePriority:
    """The text clusters (k-means on the embeddings) and the P(correct) model of the queue
    (`ml_backend.review_priority`), fit on the human-labeled tasks with the SLM out of fold."""
    clusters, centroids = fit_clusters(embeddings)
    rows = human_labels >= 0
    if not rows.any():
        return QueuePriority(prior_model(), centroids, {"priority_reviewed": 0.0})
    served = blend.predict(llm[rows], slm_oof[rows])  # no priority: `score` = calibrated blended top
    correct = served.predicted == human_labels[rows]
    per_cluster, leave_one_out = cluster_offsets(clusters[rows], correct, len(centroids))
    x = priority_features(llm[rows], slm_oof[rows], served.probabilities, served.score, leave_one_out)
    model = fit_priority(x, correct, cluster_offsets_=per_cluster)
    return QueuePriority(model, centroids, {"priority_reviewed": float(rows.sum()),
                                            "priority_fitted": float(model.kind == "fitted")})


def applied_label_bias(profile: ProjectProfile, target: Target) -> np.ndarray | None:
    """The prior the predictor divides out of this target's LLM read-out (prior matching), if any."""
    learned = profile.cold_start.get(target.from_name)
    if profile.options.bias_calibration != "prior_matching" or learned is None or not learned.label_bias:
        return None
    bias = np.asarray(learned.label_bias, dtype=np.float64)
    return bias if len(bias) == len(target.result_values) else None


def trainable_target(profile: ProjectProfile) -> Target:
    """What a run learns: the first single-choice `<Choices>` (the SLM), else the first `<Labels>`
    on a Text (annotated examples for the NER prompt)."""
    for target in profile.spec.classification_targets:
        if not target.multiple:
            return target
    for target in profile.spec.span_targets:
        if target.object_tag == "Text":
            return target
    raise NothingToTrain("the labeling config has no single-choice <Choices> and no <Labels> on a Text to learn")
