#!/usr/bin/env bash
# The container image, proven on a machine without a Docker engine (issue: "A scratch image of
# a few megabytes"):
#   1. lints the Dockerfile with hadolint;
#   2. builds the static x86_64 musl binary the way the Dockerfile's builder stage does
#      (cargo zigbuild --release --locked), checks it is statically linked, prints its size;
#   3. builds the image's final stage from the real Dockerfile with buildah, a prebuilt
#      directory standing in for the `builder` stage (--build-context builder=DIR), prints its
#      size and fails above the 3 MiB budget; checks its files, user, entrypoint and labels;
#   4. unpacks it with umoci and runs it with `chroot --userspec=65532:65532` against a real
#      Azurite and a real HTTP endpoint on loopback (tests/image.rs): messages are delivered
#      and deleted, with nothing from the host;
#   5. builds the aarch64 binary (cargo zigbuild), runs it under qemu-aarch64-static, and
#      builds the linux/arm64 image the same way.
# Needs root (chroot, buildah's chroot isolation); installs its tools (tests/setup.sh image).
# Rebuilds only what changed: cargo caches under target/, the image work dir is target/image.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET=$((3 * 1024 * 1024))
NAME=azure-queue-sidecar
WORK=target/image

log() { printf '[image] %s\n' "$*" >&2; }
fail() { printf '[image] FAIL: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

[ "$(id -u)" -eq 0 ] || fail "needs root (chroot and buildah's chroot isolation)"
bash tests/setup.sh image
for tool in hadolint buildah umoci cargo-zigbuild qemu-aarch64-static file python3 chroot; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found: run tests/setup.sh image"
done

# --- 1. hadolint ----------------------------------------------------------------------------
# Any finding fails, down to style. The one rule ignored in the Dockerfile (DL3008, unpinned
# apt versions) is explained next to its `hadolint ignore` comment.
log "hadolint $(hadolint --version | awk '{print $NF}') Dockerfile"
hadolint --failure-threshold style Dockerfile
log "hadolint: no findings"

# --- 2. the static binaries -----------------------------------------------------------------
check_static() { # binary, expected `file` architecture
  local binary=$1 arch=$2 description
  description=$(file -b "$binary")
  case "$description" in
    *"$arch"*) ;;
    *) fail "$binary is not $arch: $description" ;;
  esac
  case "$description" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) fail "$binary is not statically linked: $description" ;;
  esac
  if readelf -l "$binary" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    fail "$binary asks for a dynamic loader"
  fi
  log "$binary: $description"
  log "$binary: $(stat -c %s "$binary") bytes ($(mib "$(stat -c %s "$binary")"))"
}

build() { # rust target triple
  log "cargo zigbuild --release --locked --target $1"
  cargo zigbuild --release --locked --target "$1"
}

build x86_64-unknown-linux-musl
amd64_bin=target/x86_64-unknown-linux-musl/release/$NAME
check_static "$amd64_bin" x86-64
# ldd on a static binary says so (and exits 1).
if ldd_out=$(ldd "$amd64_bin" 2>&1); then :; fi
case "$ldd_out" in
  *"not a dynamic executable"* | *"statically linked"*) log "ldd: ${ldd_out//$'\t'/}" ;;
  *) fail "ldd finds dynamic dependencies: $ldd_out" ;;
esac

# --- 3. the image -----------------------------------------------------------------------
# buildah 1.28 (Debian 12) rejects `COPY --link`, a BuildKit flag that changes how the layer
# is cached and rebased, not what it contains. buildah gets the Dockerfile with that flag
# removed, and nothing else changed (checked below).
mkdir -p "$WORK"
sed 's/^COPY --link /COPY /' Dockerfile >"$WORK/Dockerfile.buildah"
changed=$(diff Dockerfile "$WORK/Dockerfile.buildah" | grep -c '^>' || true)
links=$(grep -c '^COPY --link ' Dockerfile || true)
if [ "$changed" -ne "$links" ] || [ "$links" -lt 2 ]; then
  fail "the buildah copy of the Dockerfile differs in more than its COPY --link lines"
fi

# buildah keeps its own storage under target/image so nothing leaks into the machine's.
storage=("--storage-driver" "vfs" "--root" "$WORK/storage" "--runroot" "$WORK/run")
rm -rf "$WORK/storage" "$WORK/run"

build_image() { # platform (linux/amd64 or linux/arm64), binary, tag
  local platform=$1 binary=$2 tag=$3 builder="$WORK/builder-${1#linux/}"
  # What the builder stage leaves behind: /out/<binary> and /out/ca-certificates.crt (the
  # same Debian ca-certificates bundle the builder stage installs).
  rm -rf "$builder" && mkdir -p "$builder/out"
  cp "$binary" "$builder/out/$NAME"
  cp /etc/ssl/certs/ca-certificates.crt "$builder/out/ca-certificates.crt"
  log "buildah bud --platform $platform --build-context builder=$builder"
  # Docker's image format, as `docker build` writes it: OCI image configs have no HEALTHCHECK.
  buildah "${storage[@]}" bud --quiet --isolation chroot --format docker --platform "$platform" \
    --build-context "builder=$builder" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -f "$WORK/Dockerfile.buildah" -t "$tag" . >/dev/null
  local healthcheck
  healthcheck=$(buildah "${storage[@]}" inspect --type image "$tag" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Docker"]["config"].get("Healthcheck", {}).get("Test"))')
  [ "$healthcheck" = "['CMD', '/azure-queue-sidecar', 'healthcheck']" ] ||
    fail "$platform image: HEALTHCHECK is $healthcheck"
  # An OCI layout on disk, for the size report and for umoci.
  rm -rf "$WORK/oci-${platform#linux/}"
  buildah "${storage[@]}" push --quiet "$tag" "oci:$WORK/oci-${platform#linux/}:test"
}

image_report() { # oci layout dir, platform; checks size, config, labels; prints figures
  python3 - "$1" "$2" "$BUDGET" <<'PY'
import gzip, json, os, sys
layout, platform, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
def blob(digest):
    return os.path.join(layout, "blobs", *digest.split(":"))
index = json.load(open(os.path.join(layout, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
layers = manifest["layers"]
def unpacked(layer):
    data = open(blob(layer["digest"]), "rb").read()
    return len(gzip.decompress(data)) if layer["mediaType"].endswith("+gzip") else len(data)
# Uncompressed: the layer tars as a runtime unpacks them (what the budget is about).
# Compressed: what a registry stores and a node pulls.
size = sum(unpacked(l) for l in layers)
pulled = sum(l["size"] for l in layers)
print(f"[image] {platform}: {len(layers)} layer(s), {size} bytes uncompressed "
      f"({size / 1048576:.2f} MiB; budget {budget / 1048576:.0f} MiB), "
      f"{pulled} bytes compressed ({pulled / 1048576:.2f} MiB)", file=sys.stderr)
problems = []
if size > budget:
    problems.append(f"image is {size} bytes, over the {budget}-byte budget")
arch = platform.split("/")[1]
if config.get("architecture") != arch:
    problems.append(f"architecture {config.get('architecture')}, expected {arch}")
c = config["config"]
if c.get("Entrypoint") != ["/azure-queue-sidecar"]:
    problems.append(f"entrypoint {c.get('Entrypoint')}")
if c.get("User") != "65532:65532":
    problems.append(f"user {c.get('User')!r}, expected 65532:65532")
if "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" not in c.get("Env", []):
    problems.append("SSL_CERT_FILE is not set to the CA bundle")
labels = c.get("Labels") or {}
for key in ("title", "description", "version", "revision", "licenses"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"label org.opencontainers.image.{key} missing")
if problems:
    sys.exit("[image] FAIL: " + "; ".join(problems))
PY
}

build_image linux/amd64 "$amd64_bin" "localhost/$NAME:test-amd64"
image_report "$WORK/oci-amd64" linux/amd64

# --- 4. run the image -----------------------------------------------------------------------
bundle="$WORK/bundle"
rm -rf "$bundle"
umoci unpack --image "$WORK/oci-amd64:test" "$bundle" >/dev/null
files=$(cd "$bundle/rootfs" && find . -type f -o -type l | sort | tr '\n' ' ')
[ "$files" = "./azure-queue-sidecar ./etc/ssl/certs/ca-certificates.crt " ] ||
  fail "the image holds [$files], expected only the binary and the CA bundle"
certs=$(grep -c 'BEGIN CERTIFICATE' "$bundle/rootfs/etc/ssl/certs/ca-certificates.crt")
[ "$certs" -gt 50 ] || fail "the CA bundle holds $certs certificates"
log "rootfs: the binary and a CA bundle of $certs certificates, nothing else"

version=$(chroot --userspec=65532:65532 "$bundle/rootfs" /azure-queue-sidecar --version)
log "chroot --userspec=65532:65532 rootfs /azure-queue-sidecar --version: $version"
[ "$version" = "$NAME $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)" ] ||
  fail "unexpected --version output: $version"

log "cargo test --test image against the unpacked image (real Azurite, real endpoint)"
SIDECAR_IMAGE_BUNDLE="$PWD/$bundle" cargo test --locked --test image -- --nocapture 2>&1 |
  tee "$WORK/test.log" | grep -E '^(image test|test |test result)' >&2
grep -q '^test result: ok. 1 passed' "$WORK/test.log" || { cat "$WORK/test.log" >&2; fail "image test failed"; }
grep -q '^image test (chroot ' "$WORK/test.log" || fail "the image test did not run inside the rootfs"

# --- 5. arm64 -------------------------------------------------------------------------------
build aarch64-unknown-linux-musl
arm64_bin=target/aarch64-unknown-linux-musl/release/$NAME
check_static "$arm64_bin" aarch64
arm_version=$(qemu-aarch64-static "$arm64_bin" --version)
log "qemu-aarch64-static $arm64_bin --version: $arm_version"
[ "$arm_version" = "$version" ] || fail "arm64 --version says $arm_version, amd64 says $version"
build_image linux/arm64 "$arm64_bin" "localhost/$NAME:test-arm64"
image_report "$WORK/oci-arm64" linux/arm64

log "image checks passed"
