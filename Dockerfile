# syntax=docker/dockerfile:1
#
# azure-queue-sidecar as a FROM scratch image: one static musl binary, a CA bundle, nothing
# else (under 3 MiB unpacked; tests/image.sh fails above that).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t azure-queue-sidecar:dev .
#
# The `builder` stage runs on the build machine's own platform ($BUILDPLATFORM) and
# cross-compiles for $TARGETPLATFORM with cargo-zigbuild (zig is the C compiler for ring and
# the linker), so a multi-arch build needs no emulation. It leaves exactly what the final
# stage takes under /out. The final stage copies from `builder` and nothing else, so a
# prebuilt directory can stand in for it: tests/image.sh builds this file with
# `buildah bud --build-context builder=DIR`, where DIR/out holds a binary built on the host.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-slim AS builder

# zig and cargo-zigbuild from PyPI (wheels for amd64 and arm64 build machines), at the
# versions tests/setup.sh installs and tests/image.sh builds with.
ARG ZIGLANG_VERSION=0.17.1
ARG CARGO_ZIGBUILD_VERSION=0.24.1

# DL3008: ca-certificates and python3-venv follow the base image's Debian release; pinning
# their versions would break the build at the next Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/zig \
 && /opt/zig/bin/pip install --no-cache-dir "ziglang==${ZIGLANG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}" \
 && rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
ENV PATH="/opt/zig/bin:${PATH}"

WORKDIR /src
# .dockerignore lets in only what cargo needs (manifest, lock file, sources).
COPY . .

ARG TARGETARCH
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=azure-queue-sidecar-target-${TARGETARCH},sharing=locked \
    set -eu; \
    case "${TARGETARCH}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH=${TARGETARCH} (amd64 and arm64 are built)" >&2; exit 1 ;; \
    esac; \
    cargo zigbuild --release --locked --target "${target}"; \
    mkdir -p /out; \
    cp "target/${target}/release/azure-queue-sidecar" /out/azure-queue-sidecar; \
    cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM scratch

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="azure-queue-sidecar" \
      org.opencontainers.image.description="Delivers Azure Storage Queue messages to an HTTP endpoint as CloudEvents" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"

# The CA bundle sits where rustls-native-certs (openssl-probe) looks first; SSL_CERT_FILE
# says so explicitly. Nothing else: no shell, no package manager, no libc.
COPY --link --from=builder /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --link --from=builder /out/azure-queue-sidecar /azure-queue-sidecar
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# 65532 is the conventional "nonroot" uid/gid of distroless images; numeric, because scratch
# has no /etc/passwd to resolve a name (and Kubernetes' runAsNonRoot needs a number).
USER 65532:65532
ENTRYPOINT ["/azure-queue-sidecar"]
# For `docker run` and Compose: the binary GETs its own /healthz on ADMIN_ADDR (no curl here).
# Kubernetes ignores this and uses the probes in deploy/.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["/azure-queue-sidecar", "healthcheck"]
