"""A spreadsheet as a project: the service's own engine, without Label Studio.

Why a project: everything the service does for a Label Studio project — the cold start on the
project's own tasks (prior matching, self-labeled demonstrations), the calibrated score, the LLM
distribution cache, the trained SLM's blend — lives in a project's state. A file's rows become
the tasks of a *file project* stored under `LSLLM_HOME` (default `./.lsllm`), keyed by the
labeling config and instruction: the same task definition on another file reuses its cold start
and its trained model, exactly as a Label Studio project does for new tasks.

Row i (0-based) is task id i + 1; the text column is copied into every data field the config
reads (`$text`, `$review`, ...), and the row's other columns travel along as task data.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ml_backend.batch.files import InputFileError, Table
from ml_backend.config import Settings
from ml_backend.errors import UnsupportedConfig
from ml_backend.label_config import LabelSpec, Target, parse_label_config
from ml_backend.ls_client import TaskRecord
from ml_backend.model_store import ProjectState
from ml_backend.profile import ProjectProfile
from ml_backend.slm_model import ServedSLM

log = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"
UNSURE_LABEL_CONFIDENCE = 0.9  # a --label-column without a confidence column: each label counts as 90% sure


class BatchError(Exception):
    """What the user must change; the command line prints it on one line and exits non-zero."""


# --- the task definition -----------------------------------------------------------------------
@dataclass(frozen=True)
class TaskDefinition:
    label_config: str
    instruction: str | None
    spec: LabelSpec

    @property
    def data_keys(self) -> list[str]:
        return sorted({target.data_key for target in self.spec.targets})

    @property
    def choices_targets(self) -> tuple[Target, ...]:
        return self.spec.classification_targets

    @property
    def span_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.spec.span_targets if t.object_tag == "Text")

    def label_column(self, target: Target) -> str:
        """`label` for the first `<Choices>`, `label_<name>` for any further one."""
        return "label" if target == self.choices_targets[0] else f"label_{target.from_name}"

    def entities_column(self, target: Target) -> str:
        return "entities" if target == self.span_targets[0] else f"entities_{target.from_name}"


def config_from_labels(labels: list[str], hints: dict[str, str], *, ner: bool) -> str:
    """A minimal labeling config: one Text (`$text`) and one single-choice Choices (or NER Labels)."""
    def option(tag: str, name: str) -> str:
        hint = f' hint="{html.escape(hints[name], quote=True)}"' if hints.get(name) else ""
        return f'    <{tag} value="{html.escape(name, quote=True)}"{hint}/>'

    if ner:
        body = "\n".join(option("Label", name) for name in labels)
        return f'<View>\n  <Labels name="label" toName="text">\n{body}\n  </Labels>\n  <Text name="text" value="$text"/>\n</View>\n'
    body = "\n".join(option("Choice", name) for name in labels)
    return (f'<View>\n  <Text name="text" value="$text"/>\n  <Choices name="label" toName="text" choice="single">\n'
            f"{body}\n  </Choices>\n</View>\n")


def parse_labels(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",") if part.strip()]
    if len(set(labels)) != len(labels):
        raise BatchError(f"--labels has a label twice: {text!r}")
    if not labels:
        raise BatchError("--labels needs comma-separated label names, e.g. --labels positive,negative")
    return labels


def parse_hints(items: list[str] | None, labels: list[str]) -> dict[str, str]:
    hints = {}
    for item in items or []:
        name, sep, hint = item.partition("=")
        if not sep or not hint.strip():
            raise BatchError(f"--hint must be LABEL=DESCRIPTION, got {item!r}")
        if name.strip() not in labels:
            raise BatchError(f"--hint names {name.strip()!r}, which is not one of --labels ({', '.join(labels)})")
        hints[name.strip()] = hint.strip()
    return hints


def read_config(config: str) -> str:
    """A config file's text, or a ready config of this repository by name (`sentiment_en`)."""
    path = Path(config)
    if not path.is_file():
        bundled = REPO_CONFIGS / (config if config.endswith(".xml") else f"{config}.xml")
        if not bundled.is_file():
            names = ", ".join(sorted(p.stem for p in REPO_CONFIGS.glob("*.xml")))
            raise BatchError(f"no config file {config!r} (ready ones: {names})")
        path = bundled
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read the config {path}: {exc}") from None


def task_definition(*, config: str | None, labels: str | None, hints: list[str] | None, ner: bool,
                    instruction: str | None) -> TaskDefinition:
    if bool(config) == bool(labels):
        raise BatchError("say what to label: --labels a,b,c or --config FILE (one of them)")
    if config:
        label_config = read_config(config)
    else:
        names = parse_labels(labels or "")
        label_config = config_from_labels(names, parse_hints(hints, names), ner=ner)
    try:
        spec = parse_label_config(label_config)
    except UnsupportedConfig as exc:
        raise BatchError(f"the labeling config cannot be used: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - XML errors of every kind: one line for the user
        raise BatchError(f"the labeling config is not valid XML: {exc}") from None
    definition = TaskDefinition(label_config=label_config, instruction=(instruction or "").strip() or None, spec=spec)
    if not definition.choices_targets and not definition.span_targets:
        raise BatchError("the labeling config has no <Choices> or <Labels> on a <Text> to label")
    return definition


# --- rows as tasks ---------------------------------------------------------------------------------
def tasks_of(table: Table, text_column: str, definition: TaskDefinition) -> list[dict[str, Any]]:
    table.require_column(text_column, "--text-column")
    tasks = []
    for index, row in enumerate(table.rows):
        data = dict(row)
        for key in definition.data_keys:
            data[key] = row[text_column]
        tasks.append({"id": index + 1, "data": data})
    return tasks


@dataclass
class FileLabelStudio:
    """What the training job reads from "Label Studio" (`ls_client.ProjectClient.tasks`): the rows."""

    records: list[TaskRecord]

    def tasks(self, *, page_size: int = 500, annotations: bool = False, **_: Any) -> Iterator[TaskRecord]:
        yield from self.records


def human_annotation(target: Target, label: str, row: int) -> dict[str, Any]:
    """A gold cell as a Label Studio annotation (ground truth), for `training.annotations`."""
    return {"id": row, "ground_truth": True, "was_cancelled": False, "updated_at": "1970-01-01T00:00:00Z",
            "result": [{"from_name": target.from_name, "to_name": target.to_name, "type": "choices",
                        "value": {"choices": [label]}}]}


def label_distribution(labels: list[str], label: str, confidence: float | None) -> np.ndarray:
    """A given label with its confidence as a distribution: the rest spread evenly."""
    p = UNSURE_LABEL_CONFIDENCE if confidence is None else float(np.clip(confidence, 1e-4, 1 - 1e-4))
    out = np.full(len(labels), (1.0 - p) / max(1, len(labels) - 1))
    out[labels.index(label)] = p
    return out / out.sum()


# --- the project ------------------------------------------------------------------------------------
def batch_settings(settings: Settings, home: Path | None = None) -> Settings:
    """The process's settings (the LLM, the encoder, ...) made a file project's: state under
    `home` (default LSLLM_HOME), in-process, no Redis, no Label Studio, offsets in code points
    (what a Python user slices with)."""
    home = Path(home or settings.lsllm_home)
    return settings.model_copy(update={"model_dir": home / "projects", "redis_url": None, "preannotate_auto": False,
                                       "train_debounce_s": 0.0, "label_studio_offsets": "codepoint"})


@dataclass
class FileProject:
    definition: TaskDefinition
    settings: Settings
    services: Any = None
    key: str = ""
    label_studio: FileLabelStudio = field(default_factory=lambda: FileLabelStudio([]))
    read_only: bool = False  # a Label Studio project's model, borrowed: its state is never written

    @classmethod
    def attach(cls, project: str, settings: Settings, *, runtime_loader=None, encoder_loader=None) -> "FileProject":
        """A connected Label Studio project's model (config, cold start, trained SLM) from the
        server's MODEL_DIR, to label a file with; nothing of the project is changed."""
        from ml_backend.model_store import ModelStore
        from ml_backend.wiring import build_services

        settings = settings.model_copy(update={"redis_url": None, "preannotate_auto": False})
        store = ModelStore(settings.model_dir)
        key = store.resolve(str(project))
        state = store.load(key) if store.exists(key) else None
        if state is None or not state.label_config:
            raise BatchError(f"project {project} is unknown in MODEL_DIR={settings.model_dir}: run with the "
                             "server's MODEL_DIR, after connecting the project in Label Studio")
        try:
            spec = parse_label_config(state.label_config)
        except UnsupportedConfig as exc:
            raise BatchError(f"project {project}'s labeling config cannot be used: {exc.message}") from None
        definition = TaskDefinition(label_config=state.label_config, instruction=state.instruction, spec=spec)
        borrowed = cls(definition=definition, settings=settings, key=key, read_only=True)
        borrowed.services = build_services(settings, preannotation=False, runtime_loader=runtime_loader,
                                           encoder_loader=encoder_loader,
                                           client_factory=lambda state: borrowed.label_studio)
        return borrowed

    @classmethod
    def open(cls, definition: TaskDefinition, settings: Settings, *, runtime_loader=None,
             encoder_loader=None) -> "FileProject":
        from ml_backend.wiring import build_services

        project = cls(definition=definition, settings=settings)
        basis = definition.label_config + "\x00" + (definition.instruction or "")
        project.key = "file-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:12]
        project.services = build_services(settings, preannotation=False, runtime_loader=runtime_loader,
                                          encoder_loader=encoder_loader,
                                          client_factory=lambda state: project.label_studio)

        def remember(state: ProjectState) -> None:
            state.label_config = definition.label_config
            state.instruction = definition.instruction

        state = project.services.store.load(project.key)
        if state.label_config != definition.label_config or state.instruction != definition.instruction:
            project.services.store.update(project.key, remember)
        return project

    @property
    def profile(self) -> ProjectProfile:
        return self.services.profiles.resolve(self.key)

    def prepare(self, tasks: list[dict[str, Any]], on_progress: Callable[[str, int, int], None] | None = None) -> str:
        """The cold start on these rows when the project has none yet; returns the model version."""
        if self.profile.cold_start_due:
            if self.read_only:
                raise BatchError(f"project {self.key} has not had its cold start yet (the backend runs it when "
                                 "the project is connected): label the file once that is done")
            log.info("event=batch_cold_start project=%s rows=%d", self.key, len(tasks))
            self.services.round_one.run(self.key, tasks, on_progress=on_progress)
        return self.profile.version

    def predict(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.services.inference.task_scorer(self.profile)(tasks)

    # --- what a trained model adds -------------------------------------------------------------
    def served_slm(self) -> ServedSLM | None:
        profile = self.profile
        refinement = self.services.inference.refinement
        served = refinement.served(self.key, profile.state.slm_version) if refinement else None
        target = self.definition.choices_targets[0] if self.definition.choices_targets else None
        if isinstance(served, ServedSLM) and target is not None and served.serves(target.from_name, target.result_values):
            return served
        return None

    def model_details(self, tasks: list[dict[str, Any]], texts: list[str]) -> list[dict[str, str]] | None:
        """LLM label, SLM label and their agreement per row, when a trained SLM serves the first
        `<Choices>` (the LLM's distributions are the ones /predict just recorded)."""
        served = self.served_slm()
        if served is None or not tasks:
            return None
        target = self.definition.choices_targets[0]
        hook = self.services.inference.refinement.hook(self.profile)
        known = hook.known(target, [(task["id"], text) for task, text in zip(tasks, texts)])
        embeddings = self.services.encoders.embed(texts, served.encoder)
        slm = served.slm_probabilities(embeddings).argmax(axis=1)
        labels = target.result_values
        rows = []
        for task, slm_label in zip(tasks, slm):
            llm = known.get(task["id"])
            llm_label = labels[int(np.argmax(llm))] if llm is not None else ""
            rows.append({"llm_label": llm_label, "slm_label": labels[int(slm_label)],
                         "agreement": "" if not llm_label else str(llm_label == labels[int(slm_label)]).lower()})
        return rows

    # --- training from a file -------------------------------------------------------------------
    def train(self, tasks: list[dict[str, Any]], *, llm_labels: list[str | None], confidences: list[float | None],
              gold: list[str | None], on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """The webhook job's own training run on these rows: the file's labels stand for the LLM's
        distributions (recorded in the same cache the job reads), gold cells for annotations."""
        from ml_backend import keys
        from ml_backend.jobs import new_job_id, run_job
        from ml_backend.llm_cache import LLMDistributionCache
        from ml_backend.retraining import FORCE_EVENT, TRAIN_JOB, coalesce_key  # the job by its dotted path
        from ml_backend.versioning import llm_version

        if self.read_only:
            raise BatchError("`train --project` is not possible: a Label Studio project trains from its own "
                             "annotations (Start Training in Label Studio, or `python -m ml_backend.cli train`)")
        if not self.definition.choices_targets:
            raise BatchError("`train` learns a <Choices> target; this config has none (NER learns from "
                             "annotated examples in Label Studio)")
        target = next(t for t in self.definition.choices_targets if not t.multiple)
        labels = target.result_values
        for name, values in (("--label-column", llm_labels), ("--gold-column", gold)):
            unknown = sorted({v for v in values if v and v not in labels})
            if unknown:
                raise BatchError(f"{name} has labels that are not in the config: {', '.join(unknown[:5])} "
                                 f"(labels: {', '.join(labels)})")
        profile = self.profile
        cache = LLMDistributionCache(self.services.kv, ttl_s=self.settings.llm_distribution_ttl_s)
        rows = [(task["id"], task["data"][target.data_key], label_distribution(labels, label, confidence))
                for task, label, confidence in zip(tasks, llm_labels, confidences) if label]
        cache.put(self.key, llm_version(profile.version), target.from_name, rows)
        self.label_studio = FileLabelStudio([
            TaskRecord(id=task["id"], data=task["data"], labeled=bool(g),
                       annotations=[human_annotation(target, g, task["id"])] if g else [])
            for task, g in zip(tasks, gold)
        ])
        self.services.kv.sadd(keys.training_events(self.key), [f"{FORCE_EVENT}:{time.time_ns()}"])
        return run_job(TRAIN_JOB, [self.key], coalesce_key(self.key), new_job_id("lsllm-train"),
                       context=self.services, job_kwargs={"on_progress": on_progress})


def confidence_value(text: str, row: int, column: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputFileError(f"row {row + 1}: {column}={text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise InputFileError(f"row {row + 1}: {column}={text!r} is not a number between 0 and 1")
    return value
