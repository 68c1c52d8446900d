#!/usr/bin/env bash
# The benchmark (issue 7): `bash tests/bench/run.sh`. Not part of tests/run.sh: it takes
# about three minutes and its throughput figures depend on what else the machine is doing.
#
# Installs what it needs (tests/setup.sh: Azurite; valgrind via apt), builds the release
# sidecar and the benchmark driver (tests/bench/bench.rs, a cargo example), then runs the
# driver, which starts an in-memory Azurite, a sink and a feeder, measures the sidecar from
# outside (/proc, a TCP proxy, callgrind) and prints a table, the budgets with PASS/FAIL and
# one `BENCH {json}` line (also written to target/bench/last.json). Logs of every process
# are in target/bench/.
#
# Knobs (environment): BENCH_WINDOW_S (15), BENCH_WARMUP_S (3), BENCH_IDLE_RAMP_S (10),
# BENCH_IDLE_STEADY_S (20), BENCH_START_RUNS (7), BENCH_CALLGRIND=0 to skip callgrind,
# BENCH_MUSL=1 to also build the static musl binary for the size figure.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[bench] %s\n' "$*" >&2; }

bash tests/setup.sh
if ! command -v valgrind >/dev/null 2>&1; then
  log "installing valgrind (for instructions per message)"
  SETUP_APT_PACKAGES="valgrind" bash tests/setup.sh
fi

log "cargo build --release (sidecar and benchmark driver)"
cargo build --release --locked --bin azure-queue-sidecar --example bench
if [ "${BENCH_MUSL:-0}" = "1" ]; then
  log "cargo build --release --target x86_64-unknown-linux-musl"
  cargo build --release --locked --target x86_64-unknown-linux-musl --bin azure-queue-sidecar
fi

log "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (quiet machine: well under 1)"
exec target/release/examples/bench
