#!/usr/bin/env bash
# The Kubernetes manifests under deploy/: renders every overlay with `kubectl kustomize`,
# validates the built-in kinds with `kubernetes-validate --strict` against Kubernetes 1.29
# (the first release with native sidecars on by default) and the newest schema it knows, lints
# sources and renders with yamllint, and runs tests/deploy_check.py for what schemas cannot
# see: native sidecar, security settings, probes, resources, grace period, and the wiring of
# each overlay, including the KEDA objects (CRDs, for which no schema is available here).
# Needs kubectl (with kustomize); installs kubernetes-validate, yamllint, PyYAML (tests/setup.sh deploy).
# deploy/compose/ is linted here with the rest of deploy/ and checked by tests/compose.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[deploy] %s\n' "$*" >&2; }
fail() { printf '[deploy] FAIL: %s\n' "$*" >&2; exit 1; }

bash tests/setup.sh deploy
for tool in kubectl kubernetes-validate yamllint python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found: run tests/setup.sh deploy"
done
python3 -c 'import yaml' 2>/dev/null || fail "python3 cannot import yaml (PyYAML): run tests/setup.sh deploy"

overlays=(connection-string workload-identity keda azurite)
found=$(find deploy/overlays -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | tr '\n' ' ')
expected=$(printf '%s\n' "${overlays[@]}" | sort | tr '\n' ' ')
[ "$found" = "$expected" ] || fail "deploy/overlays holds [$found], this test knows [$expected]"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

log "yamllint deploy/"
yamllint --strict -c deploy/.yamllint.yaml deploy/

# Kinds with a schema in kubernetes-validate; anything else must be listed in crd_kinds and is
# left to the structural checks.
crd_kinds='ScaledObject TriggerAuthentication'

for overlay in "${overlays[@]}"; do
  log "kubectl kustomize deploy/overlays/$overlay"
  kubectl kustomize "deploy/overlays/$overlay" >"$out/$overlay.yaml"
  yamllint --strict -c deploy/.yamllint.yaml "$out/$overlay.yaml"

  # Split built-in kinds from CRDs, refusing any kind nobody decided about.
  python3 - "$out/$overlay.yaml" "$out/$overlay.builtin.yaml" "$crd_kinds" <<'PY'
import sys, yaml
src, dst, crd_kinds = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
docs = [d for d in yaml.safe_load_all(open(src)) if d]
builtin = [d for d in docs if d["kind"] not in crd_kinds]
for d in docs:
    group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
    if d["kind"] in crd_kinds and group != "keda.sh":
        sys.exit(f"{d['kind']} has apiVersion {d['apiVersion']}, expected keda.sh")
yaml.safe_dump_all(builtin, open(dst, "w"), sort_keys=False)
PY
  resources=$(grep -c '^kind:' "$out/$overlay.builtin.yaml")
  for version in 1.29.0 1.37.0; do
    log "kubernetes-validate --strict -k $version ($overlay: $resources built-in resources)"
    kubernetes-validate --strict -k "$version" "$out/$overlay.builtin.yaml" | tee "$out/validate.log"
    passed=$(grep -c ' passed for resource ' "$out/validate.log" || true)
    [ "$passed" -eq "$resources" ] ||
      fail "$overlay: $passed of $resources resources passed kubernetes-validate against $version"
  done

  log "structural checks ($overlay)"
  python3 tests/deploy_check.py "$overlay" "$out/$overlay.yaml"
done
log "all overlays render, validate and pass the checks"
