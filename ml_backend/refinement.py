"""Serving the learning loop: a project's trained SLM refines the LLM's scores at predict time.

For every classification target of a Label Studio project, `ProjectHook` (the predictor's
`TargetHook`) does three things around the LLM:

1. `known`: LLM distributions already computed for a task (by the job, `/predict` or a training
   run) are taken from `llm_cache` instead of running the LLM again;
2. `record`: new ones are remembered there, for the next training run;
3. `refine`: when the project has a trained SLM version for this target and these labels
   (`ProjectState.slm_version`), the task texts are embedded with the version's frozen encoder
   and the served label and score become the blend's (`slm_model.ServedSLM.score`).

For a `<Labels>` (NER) target, `ner_demonstrations` gives each task the project's annotated
examples nearest to it by embedding (`slm_model.NerExamples`), as the extraction prompt's
demonstrations (NER_DEMONSTRATIONS of them).

A version that cannot be loaded (a bad checksum, a truncated file, no manifest) is logged
(`event=model_version_corrupt`) and the newest older version that loads serves instead; with none,
or an encoder that is not installed, the LLM alone serves: a broken model file must never stop
pre-annotation.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ml_backend.config import Settings
from ml_backend.encoders import EmbeddingCache, EncoderUnavailable, TextEncoder, embed_texts, load_encoder
from ml_backend.kv import KV
from ml_backend.label_config import Target
from ml_backend.llm_cache import LLMDistributionCache
from ml_backend.model_store import ModelStore, is_label_studio_project
from ml_backend.ner.prompts import NerDemonstration
from ml_backend.predictor import Refined
from ml_backend.profile import ProjectProfile
from ml_backend.slm_model import (
    KIND_NER,
    ModelFormatError,
    NerExamples,
    ServedSLM,
    fallback_order,
    list_versions,
    load_ner_examples,
    load_served,
    read_manifest,
    remove_leftovers,
    versions_dir,
)
from ml_backend.versioning import llm_version

log = logging.getLogger(__name__)

EncoderLoader = Callable[[str], TextEncoder]
RETRY_UNLOADABLE_S = 60.0  # a version that failed to load is tried again after this long


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


def nearest_demonstrations(examples: NerExamples, target: Target, embeddings: np.ndarray, texts: list[str],
                           k: int) -> list[list[NerDemonstration]]:
    """Each text's `k` nearest annotated examples as NER prompt demonstrations (types by prompt name)."""
    prompt_name = {option.result_value: option.prompt_name for option in target.options}
    return [
        [NerDemonstration(text=examples.texts[i],
                          entities=tuple((surface, prompt_name[label]) for surface, label in examples.entities[i]
                                         if label in prompt_name))
         for i in nearest]
        for nearest in examples.nearest(embeddings, texts, k)
    ]


class Refinement:
    """Builds the per-request hook of a project (see the module docstring)."""

    def __init__(self, settings: Settings, kv: KV, store: ModelStore, encoders: Encoders) -> None:
        self.settings = settings
        self.store = store
        self.encoders = encoders
        self.distributions = LLMDistributionCache(kv, ttl_s=settings.llm_distribution_ttl_s)
        self._served: dict[Path, ServedSLM | NerExamples] = {}
        self._unloadable: dict[Path, float] = {}  # directory → when loading it last failed
        self._fallbacks_logged: set[tuple[Path, str]] = set()  # (damaged version, the one serving instead)
        self._lock = threading.Lock()

    def hook(self, profile: ProjectProfile) -> "ProjectHook | None":
        if not is_label_studio_project(profile.key):
            return None
        return ProjectHook(self, profile, self.served(profile.key, profile.state.slm_version))

    def served(self, project_key: str, version: str | None) -> ServedSLM | NerExamples | None:
        """The loaded version: the current one, or when it does not verify (a bad checksum, a
        truncated file, no manifest) the newest older one that does (`slm_model.fallback_order`).
        Cached: a version directory never changes once written."""
        if not version:
            return None
        root = versions_dir(self.store.project_dir(project_key))
        with self._lock:
            served = self._load(project_key, root / version)
            if served is not None:
                return served
            for candidate in fallback_order(list_versions(root.parent), version)[1:]:
                served = self._load(project_key, root / candidate)
                if served is not None:
                    if (root / version, candidate) not in self._fallbacks_logged:  # once, not per /predict
                        self._fallbacks_logged.add((root / version, candidate))
                        log.warning("event=model_version_fallback project=%s version=%s serving=%s",
                                    project_key, version, candidate)
                    return served
            return None

    def _load(self, project_key: str, directory: Path) -> ServedSLM | NerExamples | None:
        """One version from disk (under the lock), None when it cannot be loaded."""
        if directory in self._served:
            return self._served[directory]
        if time.monotonic() - self._unloadable.get(directory, -RETRY_UNLOADABLE_S) < RETRY_UNLOADABLE_S:
            return None
        remove_leftovers(directory.parent)
        try:
            kind = read_manifest(directory).get("kind")
            self._served[directory] = load_ner_examples(directory) if kind == KIND_NER else load_served(directory)
        except ModelFormatError as exc:
            # Not cached for good: on a shared disk, a version another host just wrote may be
            # visible here a moment later.
            log.error("event=model_version_corrupt project=%s version=%s error=%s", project_key, directory.name, exc)
            self._unloadable[directory] = time.monotonic()
            return None
        return self._served[directory]


class ProjectHook:
    """`predictor.TargetHook` for one project and request."""

    def __init__(self, refinement: Refinement, profile: ProjectProfile, served: ServedSLM | NerExamples | None) -> None:
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
        if not isinstance(served, ServedSLM) or target.multiple or not served.serves(target.from_name, target.result_values):
            return None
        embeddings = self._embed(texts, served)
        if embeddings is None:
            return None
        blended = served.score(llm_probabilities, embeddings)
        return Refined(probabilities=blended.probabilities, scores=blended.score,
                       mislabeling=blended.llm_wrong_probability, clusters=blended.cluster,
                       agreement=~blended.disagreement)

    def ner_demonstrations(self, target: Target, texts: list[str]) -> list[list[NerDemonstration]] | None:
        examples = self.served_slm
        k = self.refinement.settings.ner_demonstrations
        if not isinstance(examples, NerExamples) or examples.target != target.from_name or k <= 0:
            return None
        embeddings = self._embed(texts, examples)
        if embeddings is None:
            return None
        return nearest_demonstrations(examples, target, embeddings, texts, k)

    def _embed(self, texts: list[str], served: ServedSLM | NerExamples) -> np.ndarray | None:
        try:
            return self.refinement.encoders.embed(texts, served.encoder)
        except EncoderUnavailable as exc:
            log.error("event=slm_encoder_unavailable project=%s slm_version=%s error=%s",
                      self.profile.key, served.version, exc)
            return None
