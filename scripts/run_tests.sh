#!/usr/bin/env bash
# Runs every test: unit, then integration (real model weights, real Label Studio, ...).
# pytest exits 5 when it collected no test: that is a failure here, not a success.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest tests -ra --durations=15 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
