#!/usr/bin/env bash
# deploy/compose/compose.yaml, proven on a machine without a Docker engine:
#   1. yamllint on deploy/compose/;
#   2. the Compose Specification's JSON schema (from the pinned check-jsonschema package) and the checks a
#      schema cannot make (tests/compose_check.py check): the sidecar's variables exist, its
#      healthcheck execs the binary, the queue creator and the sidecar agree on the queue,
#      Azurite runs with the tests' flags, the services are wired to each other;
#   3. the same checks against deliberately wrong copies, each of which must fail (self-test);
#   4. the services run without Docker (compose_check.py run): Azurite with the compose
#      command line, the create-queue script with node, the sidecar with the compose
#      environment, an HTTP endpoint standing in for event_display.
# Installs what it needs (tests/setup.sh compose) and builds the debug sidecar.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[compose] %s\n' "$*" >&2; }
fail() { printf '[compose] FAIL: %s\n' "$*" >&2; exit 1; }

bash tests/setup.sh compose
for tool in yamllint node python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found: run tests/setup.sh compose"
done
python3 -c 'import jsonschema, yaml' 2>/dev/null || fail "python3 cannot import jsonschema and yaml: run tests/setup.sh compose"

file=deploy/compose/compose.yaml
log "yamllint deploy/compose/"
yamllint --strict -c deploy/.yamllint.yaml deploy/compose/
log "node --check deploy/compose/create-queue.mjs"
node --check deploy/compose/create-queue.mjs

log "schema and structural checks ($file)"
python3 tests/compose_check.py check "$file"

# With an example, as tests/demo.sh builds it: dev-dependencies' features are then on, as in
# `cargo test`, so all three share one debug binary instead of rebuilding it for each other.
log "cargo build --bin azure-queue-sidecar --example demo-tool (for the run)"
cargo build --quiet --locked --bin azure-queue-sidecar --example demo-tool
binary=target/debug/azure-queue-sidecar

log "self-test: wrong copies of $file must fail"
python3 tests/compose_check.py self-test "$file" "$binary"

log "run the services without Docker"
python3 tests/compose_check.py run "$file" "$binary"
log "compose checks passed"
