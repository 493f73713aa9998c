"""The composition root: the one place that builds the backend's services.

The web app (`create_app`), the rq worker (`run_job`, what rq calls) and the command line
all get their services from `build_services`, so each process has exactly one model, one
store, one job runner — and every module below this one receives what it needs instead of
building it. Layers (enforced by the import contract in `.importlinter`):

    app / api / cli / wsgi         HTTP and the command line
    wiring                         builds everything below
    model (service), webhooks      /setup, /predict, /versions; the webhook table
    publishing                     a new version reaches every task (starts the job)
    preannotate, retraining        the background job (a run object with phases); when to train
    round_one, prompt_tuning       a project's cold start; prompt choice on a dev set
    inference                      the process's model; tasks → predictions
    refinement                     the learning loop at predict time: cached LLM distributions, SLM blend
    profile, versioning            a project resolved once per request; the version fingerprint
    predictor, ner, cold_start ... pure-ish scoring cores on the LLM provider
    llm                            runtimes and providers
    jobs, kv, progress, ...        generic infrastructure (no domain import)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ml_backend.config import Settings, load_settings
from ml_backend.inference import Inference
from ml_backend.jobs import JobContext, make_runner
from ml_backend.jobs import run_job as run_job_with_context
from ml_backend.kv import kv_from_settings
from ml_backend.llm.base import LLMRuntime
from ml_backend.llm.provider import LLMProvider
from ml_backend.ls_client import ProjectClient
from ml_backend.model import LLMBackend
from ml_backend.model_store import ModelStore, ProjectState
from ml_backend.preannotate import BulkPreannotation
from ml_backend.profile import Profiles
from ml_backend.project_report import ProjectReports
from ml_backend.prompt_tuning import PromptTuning
from ml_backend.publishing import Publisher
from ml_backend.refinement import EncoderLoader, Encoders, Refinement
from ml_backend.reconcile import Reconciler
from ml_backend.retraining import Retraining
from ml_backend.round_one import RoundOne
from ml_backend.webhooks import WebhookHandlers

log = logging.getLogger(__name__)

WORKER_ENTRY = "ml_backend.wiring.run_job"  # what rq workers execute for every job

ClientFactory = Callable[[ProjectState], Any]


@dataclass(eq=False)
class Services(JobContext):
    """Everything a process runs with; also the typed context every job receives."""

    store: ModelStore | None = None
    profiles: Profiles | None = None
    inference: Inference | None = None
    round_one: RoundOne | None = None
    encoders: Encoders | None = None
    retraining: Retraining | None = None
    prompt_tuning: PromptTuning | None = None
    bulk: BulkPreannotation | None = None
    publisher: Publisher | None = None
    webhooks: WebhookHandlers | None = None
    service: LLMBackend | None = None
    client_factory: ClientFactory | None = None  # tests inject an in-memory Label Studio
    reconciler: Reconciler | None = None  # the web process's sweep (`wsgi` starts its thread)

    def label_studio(self, state: ProjectState) -> Any:
        """The Label Studio API client of a project (`ls_client.ProjectClient` unless injected)."""
        if self.client_factory is not None:
            return self.client_factory(state)
        return ProjectClient.for_project(self.settings, state)


def build_services(
    settings: Settings,
    *,
    runtime_loader: Callable[[], LLMProvider | LLMRuntime] | None = None,
    client_factory: ClientFactory | None = None,
    encoder_loader: EncoderLoader | None = None,
    preannotation: bool = True,
) -> Services:
    """Build the process's services. Nothing heavy happens: the model loads on first use.

    `preannotation=False` leaves out background pre-annotation (no job is ever triggered,
    /predict scores every task itself): scripts and tests that drive one step by hand.
    The model (`llm.load_model`): the in-process runtime, or with LLM_BASE_URL a model server's provider."""
    remote = runtime_loader is None and bool(settings.llm_base_url)
    if runtime_loader is None:
        from ml_backend.llm import load_model

        def runtime_loader() -> LLMProvider | LLMRuntime:
            return load_model(settings)

    kv = kv_from_settings(settings)
    store = ModelStore(settings.model_dir)
    profiles = Profiles(settings, store)
    encoders = Encoders(settings, encoder_loader)
    inference = Inference(
        runtime_loader, memo_rows=2 * settings.cold_start_tasks, refinement=Refinement(settings, kv, store, encoders),
        remote=remote,
    )
    round_one = RoundOne(settings, store, profiles, inference)
    services = Services(
        settings=settings, kv=kv, store=store, profiles=profiles, inference=inference, round_one=round_one,
        prompt_tuning=PromptTuning(store, profiles, inference, round_one), client_factory=client_factory,
        encoders=encoders,
    )
    services.runner = make_runner(settings, kv, services, entry_point=WORKER_ENTRY)
    services.bulk = BulkPreannotation(services) if preannotation else None
    services.publisher = Publisher(settings, store, profiles, services.bulk)
    services.retraining = Retraining(settings, kv, services.runner, store)
    services.webhooks = WebhookHandlers(
        settings, store, profiles, services.publisher, services.bulk, services.retraining
    )
    services.reconciler = Reconciler(
        settings, kv, services.runner, store, services.bulk, services.retraining, services.webhooks,
        services.label_studio,
    )
    services.service = LLMBackend(
        settings, store, profiles, inference, services.publisher, services.webhooks, services.bulk,
        ProjectReports(store, profiles, services.label_studio),
    )
    return services


# --- the rq worker's side -------------------------------------------------------------------------
_worker_services: dict[str, Services] = {}
_worker_lock = threading.Lock()


def worker_services(settings: Settings | None = None) -> Services:
    """This worker process's services for these settings: built on the first job, then reused
    (an rq `SimpleWorker` loads the model once for all its jobs)."""
    with _worker_lock:
        if settings is None and _worker_services:  # `cli worker` built them with its settings
            return next(iter(_worker_services.values()))
        settings = settings or load_settings()
        key = settings.model_dump_json()
        services = _worker_services.get(key)
        if services is None:
            services = _worker_services[key] = build_services(settings)
            log.info("event=worker_services_built runner=%s", services.runner.kind if services.runner else "-")
        return services


def run_job(func_path: str, args: tuple | list, coalesce_key: str | None, job_id: str) -> Any:
    """What rq executes (`WORKER_ENTRY`): the job with this worker process's services."""
    return run_job_with_context(func_path, args, coalesce_key, job_id, context=worker_services())
