"""LLM runtimes behind one token-level interface (`LLMRuntime`), chosen by settings.

Callers outside this package use the text-level `provider.LLMProvider`; a loaded runtime becomes
one with `provider.as_provider(runtime)` (what `predictor.LabelScorer` does with a runtime).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ml_backend.config import DEFAULT_MODEL, Settings
from ml_backend.llm.base import LLMRuntime

log = logging.getLogger(__name__)


def load_runtime(settings: Settings) -> LLMRuntime:
    """Load the configured model once; callers share the returned runtime for the process's life."""
    started = time.perf_counter()
    runtime: LLMRuntime
    if settings.llm_runtime == "llama_cpp":
        from ml_backend.llm.llama_cpp_runtime import LlamaCppRuntime

        model_path, name = _gguf_path(settings)
        runtime = LlamaCppRuntime(model_path, n_ctx=settings.llm_n_ctx, n_threads=settings.llm_threads, name=name)
    else:
        from ml_backend.llm.transformers_runtime import TransformersRuntime

        if settings.llm_model == DEFAULT_MODEL:
            model_path, name = _gguf_path(settings)
            runtime = TransformersRuntime(model_path.parent, gguf_file=model_path.name, device=settings.llm_device, name=name)
        else:
            runtime = TransformersRuntime(settings.llm_model, gguf_file=settings.llm_gguf_file, device=settings.llm_device)
    log.info(
        "event=model_loaded runtime=%s model=%s ms=%d",
        settings.llm_runtime,
        runtime.name,
        (time.perf_counter() - started) * 1000,
    )
    return runtime


def _gguf_path(settings: Settings) -> tuple[Path, str]:
    if settings.llm_model == DEFAULT_MODEL:
        from ml_backend.llm.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        return ensure_default_model(settings.cache_dir), DEFAULT_MODEL_NAME
    path = Path(settings.llm_model)
    if not path.is_file():
        raise FileNotFoundError(
            f"LLM_MODEL={settings.llm_model!r} is not a file; with LLM_RUNTIME=llama_cpp it must be a .gguf path "
            "(or 'default' for the embedded model)"
        )
    return path, path.stem
