#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs everything that is missing (tests/setup.sh
# with no part named: all of them), then formatting, lints, unit and integration tests against a
# real Azurite, and the image, Kubernetes manifest and compose file checks. Exits non-zero on
# the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup"
bash tests/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo tree -d (one HTTP stack)"
dupes=$(cargo tree -d --edges normal --locked 2>/dev/null | grep -E '^(reqwest|hyper|rustls|h2) v' || true)
if [ -n "$dupes" ]; then
  echo "a second HTTP/TLS stack is in the dependency tree:" >&2
  echo "$dupes" >&2
  exit 1
fi

step "module graph: no cycle, layer rules (tests/modules.py)"
python3 tests/modules.py

step "cargo test"
cargo test --locked --all-targets

for extra in tests/image.sh tests/deploy.sh tests/compose.sh; do
  step "$extra"
  bash "$extra"
done
step "all tests passed"
