#!/usr/bin/env bash
# Runs the sidecar end to end on this machine: installs and starts Azurite (queue service, in
# memory), creates a queue, sends sample messages, starts a small endpoint that prints every
# CloudEvent it receives, and runs the sidecar between them. Ctrl-C stops everything.
#
#   bash tests/demo.sh            # binary mode
#   CE_MODE=structured bash tests/demo.sh
#   DEMO_SECONDS=5 bash tests/demo.sh   # stop by itself after 5 s of delivering
#
# It installs only what it uses (`tests/setup.sh demo`: cargo and Azurite) and builds only the
# debug sidecar and the demo-tool example. The time from its start to the first CloudEvent
# printed is reported as "[demo] first event after N s".
set -euo pipefail
cd "$(dirname "$0")/.."

# Wall clock since the start, in seconds with one decimal (bash 5's EPOCHREALTIME, else date).
now() { if [ -n "${EPOCHREALTIME:-}" ]; then printf '%s' "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi; }
started=$(now)
elapsed() { awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[demo] %s\n' "$*" >&2; }

bash tests/setup.sh demo
say "$(elapsed) s: set up; cargo build (debug sidecar and demo-tool; a few minutes the first time)"
cargo build --quiet --locked --bin azure-queue-sidecar --example demo-tool
say "$(elapsed) s: built"
bin=target/debug/azure-queue-sidecar
tool=target/debug/examples/demo-tool

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
queue_port=${AZURITE_PORT:-$(free_port)}
endpoint_port=${ENDPOINT_PORT:-$(free_port)}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# The same flags as the integration tests (tests/support/mod.rs) and deploy/compose, plus
# --silent: no access log in the demo's output.
target/tools/node_modules/.bin/azurite-queue --queueHost 127.0.0.1 --queuePort "$queue_port" \
  --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent &
pids+=($!)
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$queue_port") 2>/dev/null && break; sleep 0.1; done

export AZURE_STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true"
export AZURE_STORAGE_QUEUE_ENDPOINT="http://127.0.0.1:${queue_port}/devstoreaccount1"
export QUEUE_NAME=${QUEUE_NAME:-demo}
export ENDPOINT_URL="http://127.0.0.1:${endpoint_port}/events"
export LOG_FORMAT=${LOG_FORMAT:-text}
export ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:$(free_port)}

# Passes the echo endpoint's output through and notes when the first event arrived (each
# event it prints starts with "--- POST").
first_event() {
  local line first=1
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if ((first)) && [[ $line == "--- POST "* ]]; then
      first=0
      say "first event after $(elapsed) s (from the start of tests/demo.sh)"
    fi
  done
}
"$tool" echo "$endpoint_port" > >(first_event) &
pids+=($!)
"$tool" send "$QUEUE_NAME" \
  '{"order": 1, "item": "coffee"}' \
  'plain text: hello from the queue' \
  '{"specversion":"1.0","id":"evt-42","source":"/demo","type":"com.example.already.cloudevent","data":{"ok":true}}'

echo "--- sidecar: queue $AZURE_STORAGE_QUEUE_ENDPOINT/$QUEUE_NAME -> $ENDPOINT_URL (Ctrl-C to stop)"
"$bin" &
pids+=($!)
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  wait
fi
