#!/usr/bin/env bash
# Runs every benchmark in benchmarks/ (each prints a table and writes benchmarks/results/<name>.json).
# Benchmarks compare methods side by side within one run: read the ratios, not absolute seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for script in benchmarks/bench_*.py; do
  echo "=== $script"
  .venv/bin/python "$script"
done
