#!/usr/bin/env bash
# Start a throw-away Label Studio (the .venv-ls that `make label-studio` installs) in the
# background and wait until it answers. Prints `URL PID` on stdout; logs go to DATA_DIR/label-studio.log.
#   read -r url pid < <(bash scripts/start_label_studio.sh /tmp/ls-data 8089)
# The legacy API token is fixed (LABEL_STUDIO_API_KEY below) so scripts can call the API at once.
# USE_DEFAULT_BANNED_SUBNETS=false lets Label Studio call a backend on loopback (its SSRF guard
# blocks 127.0.0.1 otherwise; see ../shared/LABEL_STUDIO_NOTES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:?data dir}
port=${2:-8089}
token=${LABEL_STUDIO_API_KEY:-0123456789abcdef0123456789abcdef01234567}
binary=.venv-ls/bin/label-studio
[ -x "$binary" ] || { echo "$binary missing: run 'make label-studio'" >&2; exit 1; }
mkdir -p "$data_dir"
env -u VIRTUAL_ENV -u HOST \
  LABEL_STUDIO_BASE_DATA_DIR="$data_dir" \
  LABEL_STUDIO_USERNAME=admin@example.com LABEL_STUDIO_PASSWORD=admin12345 \
  LABEL_STUDIO_USER_TOKEN="$token" LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
  USE_DEFAULT_BANNED_SUBNETS=false LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
  setsid "$binary" start --no-browser --port "$port" --host 127.0.0.1 >"$data_dir/label-studio.log" 2>&1 &
pid=$!
for _ in $(seq 400); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    echo "http://127.0.0.1:$port $pid"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || { echo "Label Studio exited; see $data_dir/label-studio.log" >&2; exit 1; }
  sleep 1
done
echo "Label Studio did not answer within 400 s; see $data_dir/label-studio.log" >&2
kill -- -"$pid" 2>/dev/null || true
exit 1
