#!/usr/bin/env bash
# The Kubernetes manifests under deploy/: renders every overlay with `kubectl kustomize`,
# validates the built-in kinds with `kubernetes-validate --strict` against Kubernetes 1.29
# (the first release with native sidecars on by default) and the newest schema it knows, lints
# sources and renders with yamllint, and runs tests/deploy_check.py for what schemas cannot
# see: native sidecar, security settings, probes, resources, grace period, and the wiring of
# each overlay, including the KEDA objects (CRDs, for which no schema is available here; a
# ScaledJob's job template is validated as the batch/v1 Job it becomes). deploy/monitoring
# (PodMonitor, PrometheusRule: Prometheus Operator CRDs) is rendered, linted and checked the
# same way, its alerts against the README's.
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

overlays=(connection-string workload-identity keda keda-job azurite)
found=$(find deploy/overlays -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | tr '\n' ' ')
expected=$(printf '%s\n' "${overlays[@]}" | sort | tr '\n' ' ')
[ "$found" = "$expected" ] || fail "deploy/overlays holds [$found], this test knows [$expected]"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

log "yamllint deploy/"
yamllint --strict -c deploy/.yamllint.yaml deploy/

# Kinds with a schema in kubernetes-validate; anything else must be listed in crd_kinds (as
# kind=API group) and is left to the structural checks.
crd_kinds='ScaledObject=keda.sh ScaledJob=keda.sh TriggerAuthentication=keda.sh PodMonitor=monitoring.coreos.com PrometheusRule=monitoring.coreos.com'

# Splits the built-in kinds of a render ($1) into $2, refusing any kind nobody decided about
# and a CRD of an unexpected API group. A ScaledJob's jobTargetRef becomes a batch/v1 Job in
# $2, so the pod template KEDA will run is validated like any other.
split_crds() {
  python3 - "$1" "$2" "$crd_kinds" <<'PY'
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
crd_groups = dict(pair.split("=") for pair in sys.argv[3].split())
docs = [d for d in yaml.safe_load_all(open(src)) if d]
builtin = [d for d in docs if d["kind"] not in crd_groups]
for d in docs:
    group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
    if d["kind"] in crd_groups and group != crd_groups[d["kind"]]:
        sys.exit(f"{d['kind']} has apiVersion {d['apiVersion']}, expected {crd_groups[d['kind']]}")
    if d["kind"] == "ScaledJob":
        builtin.append({"apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": d["metadata"]["name"]},
                        "spec": d["spec"]["jobTargetRef"]})
yaml.safe_dump_all(builtin, open(dst, "w"), sort_keys=False)
PY
}

for overlay in "${overlays[@]}"; do
  log "kubectl kustomize deploy/overlays/$overlay"
  kubectl kustomize "deploy/overlays/$overlay" >"$out/$overlay.yaml"
  yamllint --strict -c deploy/.yamllint.yaml "$out/$overlay.yaml"

  split_crds "$out/$overlay.yaml" "$out/$overlay.builtin.yaml"
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
log "kubectl kustomize deploy/monitoring"
kubectl kustomize deploy/monitoring >"$out/monitoring.yaml"
yamllint --strict -c deploy/.yamllint.yaml "$out/monitoring.yaml"
split_crds "$out/monitoring.yaml" "$out/monitoring.builtin.yaml"
[ "$(grep -c '^kind:' "$out/monitoring.builtin.yaml" || true)" -eq 0 ] ||
  fail "deploy/monitoring holds built-in kinds; expected only PodMonitor and PrometheusRule"
log "structural checks (monitoring)"
python3 tests/deploy_check.py monitoring "$out/monitoring.yaml"
log "all overlays and deploy/monitoring render, validate and pass the checks"
