"""The one settings object, built from environment variables.

Every knob of the service lives here so that a reader can see in one place what
can be configured; the README's settings table mirrors this class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "default"  # the Qwen2.5-Coder-0.5B-Instruct GGUF shipped in PyPI wheels


class SettingsError(ValueError):
    """Invalid configuration; the message names each wrong environment variable and why."""


class Settings(BaseSettings):
    """Service configuration (env vars are the upper-case field names).

    Build it with `load_settings()` at a process entry point: its error names the environment
    variables (`WORKERS`, not `workers`) that are wrong.
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- HTTP server (gunicorn, ml_backend/gunicorn_conf.py) ----------------------------
    host: str = Field("0.0.0.0", min_length=1, description="Address gunicorn binds to.")
    port: int = Field(9090, ge=1, le=65535, description="Port gunicorn listens on.")
    workers: int = Field(
        1, ge=1, description="gunicorn worker processes; each loads the model once; with more than 1, set REDIS_URL."
    )
    threads: int = Field(4, ge=1, description="Threads per gunicorn worker (Label Studio's concurrent calls).")
    worker_timeout: int = Field(
        180,
        ge=1,
        description="Seconds before gunicorn replaces a silent worker; above Label Studio's 100 s predict timeout.",
    )

    # --- LLM -----------------------------------------------------------------
    llm_runtime: Literal["llama_cpp", "transformers"] = Field(
        "llama_cpp", description="Which in-process runtime scores labels."
    )
    llm_model: str = Field(
        DEFAULT_MODEL,
        description="'default' (embedded Qwen2.5-Coder-0.5B GGUF), a path to a .gguf file, "
        "or a local Hugging Face checkpoint directory (transformers runtime).",
    )
    llm_gguf_file: str | None = Field(
        None, description="With the transformers runtime: a GGUF file name inside LLM_MODEL's directory."
    )
    llm_device: str = Field("cpu", description="transformers device (cpu, cuda).")
    llm_threads: int = Field(2, ge=1, description="CPU threads for llama.cpp.")
    llm_n_ctx: int = Field(2048, ge=256, description="Context window in tokens (prefix + task + label).")
    llm_batch_size: int = Field(8, ge=1, description="Tasks per runtime call; other requests can take the model between calls.")
    # --- LLM served by an OpenAI-compatible server (instead of in-process) -------------
    llm_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server (vLLM, llama.cpp server, llama-cpp-python), "
        "e.g. http://gpu-box:8000; set: label scores come from its logprobs, no model loads in-process. "
        "LLM_MODEL then names the served model ('default': the server's only one).",
    )
    llm_api_key: str | None = Field(None, repr=False, description="Bearer token for LLM_BASE_URL (vLLM --api-key).")
    llm_chat_template: Path | None = Field(
        None,
        description="With LLM_BASE_URL: a .gguf, Hugging Face model directory or Jinja file holding the served "
        "model's chat template (default: LLM_MODEL's, when that is 'default' or a local path).",
    )
    llm_logprobs_mode: Literal["auto", "echo", "first_token"] = Field(
        "auto",
        description="With LLM_BASE_URL: echo = full-sequence label scores from prompt logprobs, first_token = "
        "the first answer token's top_logprobs; auto probes the server at start-up (README).",
    )
    llm_top_logprobs: int = Field(20, ge=1, le=100, description="first_token mode: top_logprobs per request.")
    llm_max_concurrency: int = Field(
        4, ge=1, le=256, description="With LLM_BASE_URL: most requests this process has in flight at once."
    )
    llm_timeout_s: float = Field(60.0, gt=0, description="With LLM_BASE_URL: timeout of every request (seconds).")
    llm_retries: int = Field(2, ge=0, le=10, description="Retries of a request on 429, 5xx, timeouts, connection errors.")
    llm_retry_backoff_s: float = Field(
        0.5, ge=0, description="Wait before the first retry (seconds); each next wait doubles."
    )
    llm_breaker_failures: int = Field(
        5, ge=1, description="Consecutive failed requests (retries spent) after which calls fail fast."
    )
    llm_breaker_cooldown_s: float = Field(
        30.0, ge=0, description="How long calls fail fast once the breaker opened (seconds); then one trial call."
    )
    max_text_tokens: int = Field(
        256, ge=8, description="Task text is truncated to this many tokens (a warning is logged)."
    )
    scoring_mode: Literal["full_sequence", "first_token"] = Field(
        "full_sequence",
        description="full_sequence: probability of each label's whole token sequence; "
        "first_token: LabelFast-style probability of the first token only.",
    )
    bias_calibration: Literal["none", "content_free", "prior_matching"] = Field(
        "prior_matching",
        description="Correct the model's label prior without labels (see README).",
    )
    demonstrations: int = Field(
        8, ge=0, le=32, description="Self-labeled in-context demonstrations chosen at cold start (0 = zero-shot)."
    )
    cold_start_tasks: int = Field(
        200, ge=10, description="How many of a project's tasks the cold-start step reads (bias estimate, demo pool)."
    )
    ner_max_new_tokens: int = Field(
        64, ge=8, le=1024, description="NER: most tokens generated per task when proposing entities."
    )
    instruction: str | None = Field(
        None, description="Project-independent labeling instruction prepended to every prompt."
    )
    instruction_file: Path | None = Field(
        None, description="A file holding the instruction (read once, when the settings are built)."
    )
    # INSTRUCTION_FILE's text, read once per Settings object: (the path it was read from, its text).
    _instruction_file_text: tuple[Path, str | None] | None = PrivateAttr(None)

    # --- Label Studio ----------------------------------------------------------
    label_studio_url: str | None = Field(None, description="Label Studio base URL for API calls.")
    label_studio_api_key: str | None = Field(None, repr=False, description="Label Studio legacy API token.")
    label_studio_offsets: Literal["codepoint", "utf16"] = Field(
        "codepoint",
        description="Unit of NER span offsets: code points (Label Studio 1.23.2) or UTF-16 units (older versions).",
    )

    # --- Background jobs and bulk pre-annotation ---------------------------------------
    redis_url: str | None = Field(
        None,
        description="rq + Redis job queue (e.g. redis://localhost:6379/0); unset: an in-process "
        "background worker runs the same jobs (one gunicorn worker then).",
    )
    rq_queue: str = Field("ls-llm-backend", description="rq queue name that `rq worker` must listen on.")
    redis_connect_timeout_s: float = Field(
        0.25, gt=0, le=30, description="Connect timeout of the web process's Redis calls (seconds): with Redis "
        "down, a webhook still answers inside Label Studio's 1 s (its event is reconciled later).",
    )
    redis_socket_timeout_s: float = Field(
        0.5, gt=0, le=60, description="Read/write timeout of the web process's Redis calls (seconds); one "
        "immediate retry, no backoff.",
    )
    reconcile_interval_s: float = Field(
        60.0, ge=0, description="Every this many seconds each web process re-enqueues unfinished pre-annotation "
        "and due training (also once at start-up; lost jobs, deferred webhooks); 0 = never.",
    )
    job_timeout_s: int = Field(6 * 3600, ge=10, description="A job running longer than this is stopped (seconds).")
    job_retries: int = Field(3, ge=0, description="Retries of a failed job.")
    job_retry_backoff_s: int = Field(
        10, ge=0, description="Wait before the first retry (seconds); each next wait is 4x longer."
    )
    job_lease_s: int = Field(
        60,
        ge=2,
        description="Lease of a project's running job (seconds), renewed while it runs: a job killed "
        "with SIGKILL blocks its project's next job for at most this long.",
    )
    worker_heartbeat_s: int = Field(
        10, ge=1, description="rq workers renew a running job's heartbeat this often; a job whose worker "
        "died is retried by another after three missed beats and the next maintenance pass.",
    )
    worker_maintenance_s: int = Field(
        60, ge=5, description="How often an idle rq worker looks for jobs of dead workers (rq's default is 600).",
    )
    preannotate_auto: bool = Field(
        True, description="Start pre-annotation on a project's first /setup, on imports and on new versions."
    )
    preannotate_score_batch: int = Field(
        8, ge=1, description="Tasks per scoring step of the job (progress, cache and deadline checks)."
    )
    preannotate_write_batch: int = Field(
        32, ge=1, description="Predictions per Label Studio write (bulk import request)."
    )
    preannotate_page_size: int = Field(500, ge=10, description="Tasks per page when the job lists a project.")
    preannotate_first_page: int = Field(
        20,
        ge=0,
        description="Before a new project's cold start, this many tasks get zero-shot predictions under a "
        "provisional version at once (replaced by the job); 0 = none.",
    )
    preannotate_labeled: bool = Field(
        False, description="Also pre-annotate tasks that already have a human annotation."
    )
    prediction_cache_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long the job's predictions are kept for /predict (seconds)."
    )
    predict_time_budget_s: float = Field(
        60.0,
        ge=0,
        description="/predict scores tasks for at most this long (Label Studio waits 100 s); the rest is "
        "answered with a 'pending' placeholder and handed to the job.",
    )
    label_studio_timeout_s: float = Field(60.0, gt=0, description="HTTP timeout of Label Studio API calls.")

    # --- Learning from annotations (the SLM loop) ----------------------------------------
    queue_ordering: bool = Field(
        True, description="After each new version: uncertainty sampling on it and a 'Review queue' view (lowest score first)."
    )
    auto_accept_threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Off when unset. After each new version, unannotated tasks whose score is at least this and "
        "where LLM and SLM agree get an automatic annotation (user auto-accept@ls-llm-backend.local).",
    )
    auto_accept_target_accuracy: float | None = Field(
        None, gt=0.5, lt=1.0,
        description="Instead of a fixed threshold: the lowest one at which the project's reviewed tasks reach "
        "this accuracy (its threshold report; needs 30 reviewed tasks).",
    )
    training_auto: bool = Field(
        True, description="Annotation webhooks start training; off: only Start Training / POST /train do."
    )
    train_min_new_annotations: int = Field(
        10, ge=1, description="New, changed or deleted annotations that start a training run (Start Training: any)."
    )
    train_debounce_s: float = Field(
        2.0, ge=0, le=60,
        description="A training run starts once no annotation event arrived for this long (at most 30 s of "
        "waiting): a burst of events (a bulk edit, a team submitting at once) becomes one run.",
    )
    slm_encoder: Literal["embeddinggemma", "e5-small", "minilm"] = Field(
        "embeddinggemma",
        description="Frozen text encoder of the SLM: embeddinggemma (multilingual, Gemma Terms of Use), "
        "e5-small (multilingual, MIT, light), minilm (English only, Apache-2.0).",
    )
    slm_encoder_dir: Path | None = Field(
        None, description="Where `make encoders` assembled EmbeddingGemma (default: CACHE_DIR/encoders)."
    )
    learned_demos: int = Field(
        8, ge=0, le=32, description="Round two: demonstrations picked from the human labels that training "
        "evaluates against the serving prompt and adopts only when they clearly win (then every task is "
        "scored again); 0 = off.",
    )
    learned_demos_min_labels: int = Field(
        30, ge=8, description="Human-labeled tasks before round two's demonstrations are first evaluated "
        "(again each time the count has doubled).",
    )
    ner_demonstrations: int = Field(
        3, ge=0, le=8, description="NER projects: annotated examples nearest to a task shown in its prompt (0 = zero-shot)."
    )
    slm_keep_versions: int = Field(3, ge=1, description="Trained SLM versions kept per project (rollback targets).")
    llm_distribution_ttl_s: int = Field(
        30 * 24 * 3600, ge=60,
        description="How long the LLM's label distributions are kept for retraining (seconds).",
    )

    # --- Storage, logging, auth ---------------------------------------------------
    model_dir: Path = Field(Path("model_store"), description="Per-project state (versions, calibration).")
    lsllm_home: Path = Field(Path(".lsllm"), description="`lsllm` (batch command line): where file projects keep their state.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "ls-llm-backend",
        description="Where the embedded default GGUF is assembled once (and encoders, embeddings).",
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (bytes); a bigger one is answered 413 before it is read "
        "(Label Studio's largest /predict, every selected task in one body, stays well under the default).",
    )
    log_level: str = Field("INFO", description="Python log level.")
    basic_auth_user: str | None = Field(None, description="If set with BASIC_AUTH_PASS, require HTTP basic auth.")
    # secrets: repr=False keeps them out of any printed or logged Settings
    basic_auth_pass: str | None = Field(None, repr=False, description="Password for BASIC_AUTH_USER.")
    webhook_secret: str | None = Field(
        None,
        repr=False,
        description="If set, /webhook and /train require it in an X-Webhook-Secret (or Authorization: Bearer) "
        "header, which Label Studio's webhook form can add (or valid basic auth, which Start Training sends).",
    )
    prometheus_multiproc_dir: Path | None = Field(
        None, description="Where gunicorn's workers write their /metrics values (emptied at start; default: a "
        "fresh temporary folder). prometheus-client's own variable: gunicorn_conf sets it for the workers.",
    )

    def encoder_dir(self) -> Path:
        return self.slm_encoder_dir or self.cache_dir / "encoders"

    def embedding_cache_dir(self) -> Path:
        return self.cache_dir / "embeddings"

    @model_validator(mode="after")
    def _read_instruction_file(self) -> "Settings":
        """Read INSTRUCTION_FILE now: a missing or unreadable file stops start-up, not a later /predict."""
        self._instruction_file_text = None
        if self.instruction_file is not None:
            self._instruction_file_text = (self.instruction_file, _read_instruction(self.instruction_file))
        return self

    def resolved_instruction(self) -> str | None:
        """The instruction from INSTRUCTION_FILE wins over INSTRUCTION: a file is what users iterate on.

        The file was read when these settings were built (an edit needs a restart); this never
        touches the disk again, except once for a copy made with
        `model_copy(update={"instruction_file": ...})`, which skips validation.
        """
        if self.instruction_file is None:
            return self.instruction
        cached = self._instruction_file_text
        if cached is None or cached[0] != self.instruction_file:
            cached = self._instruction_file_text = (self.instruction_file, _read_instruction(self.instruction_file))
        return cached[1]


def _read_instruction(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"INSTRUCTION_FILE={str(path)!r} cannot be read: {reason}") from None


def _env_name(loc: tuple[Any, ...]) -> str:
    return str(loc[0]).upper() if loc else "settings"


def describe_validation_error(error: ValidationError) -> str:
    """One line per wrong setting, by its environment variable: `WORKERS='0': Input should be ...`."""
    lines = []
    for problem in error.errors(include_url=False):
        name = _env_name(tuple(problem.get("loc") or ()))
        message = str(problem.get("msg", "invalid"))
        if problem.get("type") == "value_error":
            message = message.removeprefix("Value error, ")
        if problem.get("loc") and "input" in problem:
            lines.append(f"{name}={problem['input']!r}: {message}")
        else:
            lines.append(f"{name}: {message}" if problem.get("loc") else message)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """`Settings(**overrides)` from the environment; a `SettingsError` names the wrong variables."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
