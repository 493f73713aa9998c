"""Serving the learning loop: a project's trained SLM refines the LLM's scores at predict time.

For every classification target of a Label Studio project, `ProjectHook` (the predictor's
`TargetHook`) does three things around the LLM:

1. `known`: LLM distributions already computed for a task (by the job, `/predict` or a training
   run) are taken from `llm_cache` instead of running the LLM again;
2. `record`: new ones are remembered there, for the next training run;
3. `refine`: when the project has a trained SLM version for this target and these labels
   (`ProjectState.slm_version`), the task texts are embedded with the version's frozen encoder
   and the served label and score become the blend's (`slm_model.ServedSLM.score`).

A version that cannot be loaded, or an encoder that is not installed, is logged once and the
LLM alone serves: a broken model file must never stop pre-annotation.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ml_backend.config import Settings
from ml_backend.encoders import EmbeddingCache, EncoderUnavailable, TextEncoder, embed_texts, load_encoder
from ml_backend.kv import KV
from ml_backend.label_config import Target
from ml_backend.llm_cache import LLMDistributionCache
from ml_backend.model_store import ModelStore, is_label_studio_project
from ml_backend.predictor import Refined
from ml_backend.profile import ProjectProfile
from ml_backend.slm_model import ModelFormatError, ServedSLM, load_served, versions_dir
from ml_backend.versioning import llm_version

log = logging.getLogger(__name__)

EncoderLoader = Callable[[str], TextEncoder]


class Encoders:
    """The process's frozen encoders, each loaded once on first use, and the embedding cache.

    Shared by serving (`refine`) and the training job, so a worker holds one copy."""

    def __init__(self, settings: Settings, loader: EncoderLoader | None = None) -> None:
        self.settings = settings
        self._loader = loader or (lambda name: load_encoder(name, settings.encoder_dir()))
        self._loaded: dict[str, TextEncoder] = {}
        self._lock = threading.Lock()
        self.cache = EmbeddingCache(settings.embedding_cache_dir())

    def get(self, name: str | None = None) -> TextEncoder:
        name = name or self.settings.slm_encoder
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._loader(name)
                log.info("event=encoder_loaded encoder=%s id=%s", name, self._loaded[name].encoder_id)
            return self._loaded[name]

    def embed(self, texts: list[str], name: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        return embed_texts(self.get(name), texts, self.cache, progress=progress)


class Refinement:
    """Builds the per-request hook of a project (see the module docstring)."""

    def __init__(self, settings: Settings, kv: KV, store: ModelStore, encoders: Encoders) -> None:
        self.store = store
        self.encoders = encoders
        self.distributions = LLMDistributionCache(kv, ttl_s=settings.llm_distribution_ttl_s)
        self._served: dict[Path, ServedSLM | None] = {}
        self._lock = threading.Lock()

    def hook(self, profile: ProjectProfile) -> "ProjectHook | None":
        if not is_label_studio_project(profile.key):
            return None
        return ProjectHook(self, profile, self.served(profile.key, profile.state.slm_version))

    def served(self, project_key: str, version: str | None) -> ServedSLM | None:
        """The loaded version (cached: a version directory never changes once written)."""
        if not version:
            return None
        directory = versions_dir(self.store.project_dir(project_key)) / version
        with self._lock:
            if directory not in self._served:
                try:
                    self._served[directory] = load_served(directory)
                except ModelFormatError as exc:
                    log.error("event=slm_unloadable project=%s slm_version=%s error=%s", project_key, version, exc)
                    self._served[directory] = None
            return self._served[directory]


class ProjectHook:
    """`predictor.TargetHook` for one project and request."""

    def __init__(self, refinement: Refinement, profile: ProjectProfile, served: ServedSLM | None) -> None:
        self.refinement = refinement
        self.profile = profile
        self.llm_version = llm_version(profile.version)
        self.served_slm = served

    def known(self, target: Target, tasks: list[tuple[int, str]]) -> dict[int, np.ndarray]:
        return self.refinement.distributions.get_many(self.profile.key, self.llm_version, target.from_name, tasks)

    def record(self, target: Target, rows: list[tuple[int, str, np.ndarray]]) -> None:
        self.refinement.distributions.put(self.profile.key, self.llm_version, target.from_name, rows)

    def refine(self, target: Target, texts: list[str], llm_probabilities: np.ndarray) -> Refined | None:
        served = self.served_slm
        if served is None or target.multiple or not served.serves(target.from_name, target.result_values):
            return None
        try:
            embeddings = self.refinement.encoders.embed(texts, served.encoder)
        except EncoderUnavailable as exc:
            log.error("event=slm_encoder_unavailable project=%s slm_version=%s error=%s",
                      self.profile.key, served.version, exc)
            return None
        blended = served.score(llm_probabilities, embeddings)
        return Refined(probabilities=blended.probabilities, scores=blended.score,
                       mislabeling=blended.llm_wrong_probability)
