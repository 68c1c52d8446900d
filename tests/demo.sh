#!/usr/bin/env bash
# Runs the sidecar end to end on this machine: installs and starts Azurite (queue service, in
# memory), creates a queue, sends sample messages, starts a small endpoint that prints every
# CloudEvent it receives, and runs the sidecar between them. Ctrl-C stops everything.
#
#   bash tests/demo.sh            # binary mode
#   CE_MODE=structured bash tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
cargo build --quiet --bin azure-queue-sidecar --example demo-tool
bin=target/debug/azure-queue-sidecar
tool=target/debug/examples/demo-tool

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
queue_port=${AZURITE_PORT:-$(free_port)}
endpoint_port=${ENDPOINT_PORT:-$(free_port)}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

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

"$tool" echo "$endpoint_port" &
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
