#!/usr/bin/env bash
# Installs everything the tests and the local demo need, on a machine that has none of it:
# the Rust components and musl target, Debian packages, and Azurite (npm, into target/tools).
# Idempotent: what is already there is not installed again. Fails loudly on any error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "[setup] cargo not found: install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi

# Rust components and targets.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    log "rustup component add ${component}"
    rustup component add "${component}"
  fi
done
for target in ${SETUP_RUST_TARGETS:-x86_64-unknown-linux-musl}; do
  if ! rustup target list --installed | grep -qx "${target}"; then
    log "rustup target add ${target}"
    rustup target add "${target}"
  fi
done

# Debian packages (only where apt-get exists and something is missing). openssl: the Entra ID
# tests (tests/entra.rs) make their private CA and server certificate with it.
packages=(${SETUP_APT_PACKAGES:-musl-tools openssl})
missing=()
for package in "${packages[@]}"; do
  dpkg -s "${package}" >/dev/null 2>&1 || missing+=("${package}")
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] missing packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  log "apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Azurite, pinned to major 3, installed locally so no global npm state is needed.
if [ ! -x target/tools/node_modules/.bin/azurite-queue ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] npm not found: install Node.js 18+ (Azurite runs on it)" >&2
    exit 1
  fi
  log "npm install azurite@3 (into target/tools)"
  mkdir -p target/tools
  (cd target/tools && npm install --no-audit --no-fund --loglevel=error azurite@3 >/dev/null)
fi
target/tools/node_modules/.bin/azurite-queue --version >/dev/null
log "ready"
