#!/usr/bin/env bash
# Runs every benchmark in benchmarks/ (each prints a table and writes benchmarks/results/<name>.json).
# Benchmarks compare methods side by side within one run: read the ratios, not absolute seconds.
# bench_bulk needs a Label Studio: LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, or one is started here.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${LABEL_STUDIO_URL:-}" ]; then
  data_dir=$(mktemp -d /tmp/ls-bench.XXXXXX)
  read -r LABEL_STUDIO_URL ls_pid < <(bash scripts/start_label_studio.sh "$data_dir" "${LS_PORT:-8089}")
  [ -n "${ls_pid:-}" ] || { echo "could not start Label Studio for bench_bulk" >&2; exit 1; }
  trap 'kill -- -"$ls_pid" 2>/dev/null || true' EXIT
  export LABEL_STUDIO_URL LABEL_STUDIO_API_KEY=0123456789abcdef0123456789abcdef01234567
fi
# bench_slm and bench_learned_demos read cached LLM distributions and embeddings (1,000 project tasks +
# 500 test texts per set): filled here once (slow the first time), resumed and instant afterwards.
.venv/bin/python -m benchmarks.slm_data llm
.venv/bin/python -m benchmarks.slm_data embed
for script in benchmarks/bench_*.py; do
  echo "=== $script"
  .venv/bin/python "$script"
done
