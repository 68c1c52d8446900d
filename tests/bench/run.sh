#!/usr/bin/env bash
# The benchmark (issues 7 and 17): `bash tests/bench/run.sh`. Not part of tests/run.sh: it takes
# about six minutes and its throughput figures depend on what else the machine is doing (the table
# shows how much CPU other processes used in each window; run it on a quiet machine).
#
# Installs what it needs (tests/setup.sh: Azurite, cargo-zigbuild; valgrind via apt), builds
# the release sidecar, the static musl binary the way the image does (cargo zigbuild) and the
# driver (tests/bench/bench.rs, a cargo example), then runs the driver. It starts a fresh
# in-memory Azurite per phase, a sink and a feeder, measures the sidecar from outside (/proc,
# a TCP proxy, callgrind) and prints a table, the budgets with PASS/FAIL and one
# `BENCH {json}` line (also in target/bench/last.json). Every process's log is in target/bench/.
#
# Knobs (environment): BENCH_WINDOW_S (15), BENCH_WARMUP_S (3), BENCH_IDLE_RAMP_S (10),
# BENCH_IDLE_STEADY_S (40), BENCH_START_RUNS (7), BENCH_CALLGRIND=0 (skip callgrind),
# BENCH_MUSL=0 (skip the static binary), BENCH_ARM64=0 (skip building the arm64 binary, whose
# size the image budget needs), BENCH_RTTS_MS (0,10,20,50: queue round trips of the rtt phase),
# BENCH_PHASES (start,throughput,rtt,batched,big,callgrind,static; also `sidecar` = throughput without
# the baselines, and `syscalls` = strace -f -c per 64 KiB message, release and static, with
# BENCH_SYSCALL_MESSAGES (1000)), BENCH_DEADLINE_S (900: the driver stops, and kills what it
# started, after this long). E.g. the latency table alone: BENCH_PHASES=rtt BENCH_MUSL=0.
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
if [[ ",${BENCH_PHASES:-}," == *",syscalls,"* ]] && ! command -v strace >/dev/null 2>&1; then
  log "installing strace (for the syscalls phase)"
  SETUP_APT_PACKAGES="strace" bash tests/setup.sh
fi
if [ "${BENCH_MUSL:-1}" = "1" ]; then
  if command -v cargo-zigbuild >/dev/null 2>&1; then
    log "cargo zigbuild --release --target x86_64-unknown-linux-musl (as the image is built)"
    cargo zigbuild --release --locked --target x86_64-unknown-linux-musl --bin azure-queue-sidecar
    if [ "${BENCH_ARM64:-1}" = "1" ]; then
      log "cargo zigbuild --release --target aarch64-unknown-linux-musl (its size only)"
      cargo zigbuild --release --locked --target aarch64-unknown-linux-musl --bin azure-queue-sidecar
    fi
  else
    echo "[bench] cargo-zigbuild not found (tests/setup.sh installs it); BENCH_MUSL=0 skips the static binary" >&2
    exit 1
  fi
fi

log "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (quiet: well under 1)"
exec target/release/examples/bench
