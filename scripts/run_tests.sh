#!/usr/bin/env bash
# Runs every test: unit, then integration (real model weights, real Label Studio, ...).
# pytest exits 5 when it collected no test: that is a failure here, not a success.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The import contract first (seconds): an upward import or a cycle fails the run before any test.
if ! .venv/bin/lint-imports --config .importlinter; then
  echo "import contract broken (see .importlinter and ARCHITECTURE.md)" >&2
  exit 1
fi
.venv/bin/python -m pytest tests -ra --durations=15 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
