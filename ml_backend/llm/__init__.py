"""The process's model, chosen by settings: an in-process runtime (`LLMRuntime`: llama.cpp,
transformers) or, with LLM_BASE_URL, an OpenAI-compatible server behind `OpenAICompatibleProvider`.

Callers outside this package use the text-level `provider.LLMProvider`; a loaded runtime becomes
one with `provider.as_provider(runtime)` (what `predictor.LabelScorer` does with a runtime), a
provider is used as is. `load_model` is what the composition root calls.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ml_backend.config import DEFAULT_MODEL, Settings
from ml_backend.llm.base import LLMRuntime
from ml_backend.llm.provider import LLMProvider

log = logging.getLogger(__name__)


def load_model(settings: Settings) -> LLMProvider | LLMRuntime:
    """The configured model: a server's provider when LLM_BASE_URL is set, else the in-process runtime."""
    if settings.llm_base_url:
        return connect_server(settings)
    return load_runtime(settings)


def connect_server(settings: Settings) -> LLMProvider:
    """An `OpenAICompatibleProvider` for LLM_BASE_URL; probes the server (its logprobs mode) once.

    Raises `errors.ModelServerUnavailable` when the server does not answer and
    `errors.ModelServerUnsupported` when it returns no log-probabilities."""
    from ml_backend.llm.openai_provider import OpenAICompatibleProvider
    from ml_backend.llm.served_template import chat_format_from
    from ml_backend.llm.server_client import ClientPolicy, ServerClient

    started = time.perf_counter()
    assert settings.llm_base_url
    client = ServerClient(
        settings.llm_base_url,
        api_key=settings.llm_api_key,
        policy=ClientPolicy(
            timeout_s=settings.llm_timeout_s, retries=settings.llm_retries, backoff_s=settings.llm_retry_backoff_s,
            max_in_flight=settings.llm_max_concurrency, breaker_failures=settings.llm_breaker_failures,
            breaker_cooldown_s=settings.llm_breaker_cooldown_s,
        ),
    )
    model = _served_model(client, settings)
    template_source = settings.llm_chat_template or _local_model_path(settings)
    if template_source is None:
        raise FileNotFoundError(
            f"LLM_MODEL={settings.llm_model!r} is not a local file or directory, so its chat template is unknown: "
            "set LLM_CHAT_TEMPLATE to the served model's .gguf, Hugging Face directory or Jinja template"
        )
    provider = OpenAICompatibleProvider(
        client, model=model, chat_format=chat_format_from(template_source), name=model_name(settings),
        mode=settings.llm_logprobs_mode, top_logprobs=settings.llm_top_logprobs,
        max_concurrency=settings.llm_max_concurrency,
    )
    log.info("event=model_loaded runtime=openai model=%s base_url=%s ms=%d", provider.name, client.base_url,
             (time.perf_counter() - started) * 1000)
    return provider


def _served_model(client, settings: Settings) -> str:
    """The model name requests carry: LLM_MODEL, or the server's only model when LLM_MODEL is
    'default' or a local path the server does not list under that name."""
    served = [str(m.get("id")) for m in client.get_json("/v1/models").get("data", []) if m.get("id")]
    if settings.llm_model in served or not served:
        return settings.llm_model
    if len(served) == 1:
        return served[0]
    raise ValueError(f"LLM_MODEL={settings.llm_model!r} is not served at {client.base_url}; it serves {served}")


def _local_model_path(settings: Settings) -> Path | None:
    if settings.llm_model == DEFAULT_MODEL:
        return _gguf_path(settings)[0]
    path = Path(settings.llm_model)
    return path if path.exists() else None


def model_name(settings: Settings) -> str:
    """Readable model id, known without loading the model (the fast /setup puts it into model_version).

    A served model gets "-openai": its scores come from another engine, so its predictions must
    not pass for the in-process model's. An explicitly chosen read-out (LLM_LOGPROBS_MODE=echo or
    first_token) is part of the name too: switching it changes every score, so it must change the
    version. Under "auto" the mode is what the server supports (fixed per server software, logged
    as `event=llm_provider_mode`); it is not known before the server is probed, and /setup must
    answer without probing."""
    if settings.llm_model == DEFAULT_MODEL:
        from ml_backend.llm.default_model import DEFAULT_MODEL_NAME

        name = DEFAULT_MODEL_NAME
    else:
        name = Path(settings.llm_gguf_file or settings.llm_model).stem
    if not settings.llm_base_url:
        return name
    readout = {"echo": "-echo", "first_token": "-ft"}.get(settings.llm_logprobs_mode, "")
    return f"{name}-openai{readout}"


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
