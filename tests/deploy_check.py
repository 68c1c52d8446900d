#!/usr/bin/env python3
"""Structural checks on one rendered overlay (`kubectl kustomize` output), for tests/deploy.sh.

kubernetes-validate checks the built-in kinds against the API schemas; this checks what a
schema cannot: that the sidecar is a native sidecar with its security settings, probes,
resources and a grace period that fits its drain; the per-overlay wiring (workload identity
labels, the Secret the base reads, the KEDA objects, which have no schema there).

Usage: deploy_check.py OVERLAY RENDERED.yaml (OVERLAY `monitoring` for deploy/monitoring)
Prints one line per check; exits 1 on the first failed overlay with every failure listed.
"""

import base64
import os
import re
import sys

import yaml

SIDECAR = "azure-queue-sidecar"
ADMIN_PORT = 9464
# src/pipeline/pump.rs: a receive under way at SIGTERM may finish for this long (RECEIVE_GRACE) before the
# drain's SHUTDOWN_TIMEOUT starts; after it, deliveries that were cut off get RELEASE_GRACE to
# release their messages before the sidecar exits.
RECEIVE_GRACE_SECONDS = 5
RELEASE_GRACE_SECONDS = 10

failures = []


def check(condition, what):
    print(("  ok   " if condition else "  FAIL ") + what)
    if not condition:
        failures.append(what)


def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration.strip())
    if not match:
        raise SystemExit(f"cannot read duration {duration!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def one(docs, kind, name=None):
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def config_map_for(docs, container):
    """The data of the ConfigMap the container takes its environment from."""
    names = [
        source["configMapRef"]["name"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    ]
    check(len(names) == 1, "the sidecar reads its settings from one ConfigMap")
    return one(docs, "ConfigMap", names[0]).get("data", {})


def check_restricted(container, label):
    sc = container.get("securityContext", {})
    check(sc.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: drops ALL capabilities")


def workload(docs, job):
    """The Deployment, or (job) a stand-in with the ScaledJob's pod template."""
    if not job:
        return one(docs, "Deployment", "queue-consumer")
    scaled = one(docs, "ScaledJob", "queue-consumer")
    return {"metadata": scaled["metadata"], "spec": {"template": scaled["spec"]["jobTargetRef"]["template"]}}


def check_sidecar(docs, job=False):
    """The sidecar in the pod: a native sidecar next to the app, or (job) the regular
    container that ends the Job, next to the app as a native sidecar."""
    deployment = workload(docs, job)
    pod = deployment["spec"]["template"]["spec"]
    inits = [c for c in pod.get("initContainers", []) if c["name"] == SIDECAR]
    regular = [c for c in pod.get("containers", []) if c["name"] == SIDECAR]
    if job:
        check(len(regular) == 1 and not inits, "Job: the sidecar is the regular container (it ends the Job)")
        sidecars = regular
    else:
        check(len(inits) == 1, "the sidecar is an init container")
        check(not regular, "the sidecar is not also a regular container")
        sidecars = inits
    if not sidecars:
        return
    sidecar = sidecars[0]
    if job:
        check("restartPolicy" not in sidecar, "Job: the sidecar has no container restartPolicy")
    else:
        check(sidecar.get("restartPolicy") == "Always", "native sidecar: restartPolicy Always")
    image = sidecar.get("image", "")
    check(
        re.search(r":[^/]+$", image) is not None and not image.endswith(":latest"),
        f"the sidecar image has a version tag ({image})",
    )

    sc = sidecar.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, "sidecar: runAsNonRoot")
    check(sc.get("runAsUser") == 65532, "sidecar: runAsUser 65532 (the image's USER)")
    check(sc.get("readOnlyRootFilesystem") is True, "sidecar: readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "sidecar: allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "sidecar: drops ALL capabilities")
    check(not sc.get("capabilities", {}).get("add"), "sidecar: adds no capability")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "sidecar: seccomp RuntimeDefault")
    check(
        pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault"
        and pod.get("securityContext", {}).get("runAsNonRoot") is True,
        "pod: runAsNonRoot and seccomp RuntimeDefault for every container",
    )
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        if container["name"] != SIDECAR:
            check_restricted(container, f"container {container['name']}")

    ports = {p.get("name"): p["containerPort"] for p in sidecar.get("ports", [])}
    check(ports.get("admin") == ADMIN_PORT, f"sidecar: port admin = {ADMIN_PORT}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = sidecar.get(probe, {}).get("httpGet", {})
        check(
            get.get("path") == path and get.get("port") in ("admin", ADMIN_PORT),
            f"sidecar: {probe} GET {path} on the admin port",
        )

    resources = sidecar.get("resources", {})
    check(
        {"cpu", "memory"} <= set(resources.get("requests", {})),
        "sidecar: cpu and memory requests",
    )
    check("memory" in resources.get("limits", {}), "sidecar: a memory limit")

    settings = config_map_for(docs, sidecar)
    check(
        settings.get("ADMIN_ADDR", "").endswith(f":{ADMIN_PORT}"),
        "ADMIN_ADDR listens on the probed port",
    )
    check(
        settings.get("ENDPOINT_URL", "").startswith("http://127.0.0.1:"),
        "ENDPOINT_URL is the app over the pod's loopback interface",
    )
    drain = (
        RECEIVE_GRACE_SECONDS
        + seconds(settings.get("SHUTDOWN_TIMEOUT", "20s"))
        + RELEASE_GRACE_SECONDS
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(
        grace >= drain,
        f"terminationGracePeriodSeconds {grace} >= receive grace + SHUTDOWN_TIMEOUT + release grace ({drain:g}s)",
    )
    return deployment, sidecar, settings


def secret_value(secret, key):
    """A Secret's value, whether written as stringData or (as generators do) base64 data."""
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def secret_refs(sidecar):
    return [s["secretRef"]["name"] for s in sidecar.get("envFrom", []) if "secretRef" in s]


def port_numbers(rule, container_ports):
    """The port numbers a NetworkPolicy ingress rule admits (names resolved); None = all."""
    if not rule.get("ports"):
        return None
    numbers = set()
    for entry in rule["ports"]:
        port = entry.get("port")
        numbers.add(container_ports.get(port, port))
    return numbers


def check_network_policy(docs, deployment, sidecar):
    """The admin port is admitted only from selected sources; the app's ports stay open."""
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"].get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
    ]
    check(len(policies) == 1, "one NetworkPolicy selects the pod")
    if len(policies) != 1:
        return
    spec = policies[0]["spec"]
    check(policies[0]["apiVersion"] == "networking.k8s.io/v1", "NetworkPolicy apiVersion networking.k8s.io/v1")
    check("Ingress" in spec.get("policyTypes", []), "the NetworkPolicy restricts ingress")
    containers = pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
    names = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", []) if "name" in p}
    rules = spec.get("ingress", [])
    open_rules = [port_numbers(r, names) for r in rules if not r.get("from")]
    check(
        all(ports is not None and ADMIN_PORT not in ports for ports in open_rules),
        f"no rule admits the admin port {ADMIN_PORT} from everywhere",
    )
    admin_rules = [r for r in rules if (port_numbers(r, names) or set()) >= {ADMIN_PORT}]
    check(
        len(admin_rules) >= 1 and all(r.get("from") for r in admin_rules),
        f"the admin port {ADMIN_PORT} is admitted from selected sources (Prometheus)",
    )
    app_ports = {p["containerPort"] for c in containers if c["name"] != SIDECAR for p in c.get("ports", [])}
    admitted = set().union(*[ports for ports in open_rules if ports is not None]) if open_rules else set()
    check(app_ports <= admitted, f"the app's ports {sorted(app_ports)} stay open")
    listed = set().union(*[port_numbers(r, names) or set() for r in rules]) if rules else set()
    all_ports = set(names.values()) | {p["containerPort"] for c in containers for p in c.get("ports", [])}
    check(listed <= all_ports, f"every port the NetworkPolicy lists is a container port ({sorted(listed)})")


def check_endpoint_token(pod, sidecar, settings):
    """ENDPOINT_TOKEN_FILE is a projected service account token for an audience of its own,
    mounted read-only into the sidecar, valid long enough for the kubelet to rotate it."""
    path = settings.get("ENDPOINT_TOKEN_FILE") or ""
    check(path.startswith("/"), "ENDPOINT_TOKEN_FILE is an absolute path")
    check(not settings.get("ENDPOINT_AUDIENCE"), "one endpoint token source, not ENDPOINT_AUDIENCE too")
    directory, _, name = path.rpartition("/")
    mounts = [m for m in sidecar.get("volumeMounts", []) if m.get("mountPath") == directory]
    check(len(mounts) == 1, f"the sidecar mounts a volume at {directory}")
    if not mounts:
        return
    check(mounts[0].get("readOnly") is True, "the endpoint token is mounted read-only")
    check("subPath" not in mounts[0], "no subPath: a subPath mount never sees a rotated token")
    volumes = [v for v in pod.get("volumes", []) if v.get("name") == mounts[0]["name"]]
    check(len(volumes) == 1, f"volume {mounts[0]['name']} exists")
    sources = volumes[0].get("projected", {}).get("sources", []) if volumes else []
    tokens = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
    check(len(tokens) == 1 and tokens[0].get("path") == name, f"a projected serviceAccountToken at {name}")
    if tokens:
        audience = tokens[0].get("audience", "")
        check(bool(audience) and audience != "api://AzureADTokenExchange",
              "the endpoint token has the app's audience, not workload identity's")
        check(tokens[0].get("expirationSeconds", 3600) >= 600, "expirationSeconds >= 600 (the API's minimum)")


def check_keda_trigger(spec, settings, docs):
    """The azure-queue trigger of a ScaledObject or ScaledJob reads the sidecar's queue as the
    KEDA operator's workload identity."""
    triggers = spec.get("triggers", [])
    check(len(triggers) == 1 and triggers[0].get("type") == "azure-queue", "one azure-queue trigger")
    meta = triggers[0].get("metadata", {}) if triggers else {}
    check(all(isinstance(v, str) for v in meta.values()), "trigger metadata values are strings")
    check(meta.get("queueName") == settings.get("QUEUE_NAME"), "trigger queueName = the sidecar's QUEUE_NAME")
    check(
        meta.get("accountName") == settings.get("AZURE_STORAGE_ACCOUNT"),
        "trigger accountName = the sidecar's AZURE_STORAGE_ACCOUNT",
    )
    check(str(meta.get("queueLength", "")).isdigit(), "trigger queueLength is a number")
    check("connection" not in meta and "connectionFromEnv" not in meta, "no connection string for KEDA")
    auth_name = triggers[0].get("authenticationRef", {}).get("name") if triggers else None
    auth = one(docs, "TriggerAuthentication", auth_name)
    check(auth["apiVersion"] == "keda.sh/v1alpha1", "TriggerAuthentication apiVersion keda.sh/v1alpha1")
    check(
        auth["spec"].get("podIdentity", {}).get("provider") == "azure-workload",
        "TriggerAuthentication uses podIdentity azure-workload",
    )


def check_job(docs, sidecar, pod):
    """The keda-job overlay: Jobs that the sidecar ends with EXIT_WHEN_IDLE."""
    check(not [d for d in docs if d["kind"] == "Deployment"], "no Deployment: the ScaledJob replaces it")
    scaled = one(docs, "ScaledJob", "queue-consumer")
    check(scaled["apiVersion"] == "keda.sh/v1alpha1", "ScaledJob apiVersion keda.sh/v1alpha1")
    check(pod.get("restartPolicy") in ("Never", "OnFailure"), "Job pod restartPolicy Never or OnFailure")
    idle = [e.get("value", "") for e in sidecar.get("env", []) if e["name"] == "EXIT_WHEN_IDLE"]
    check(len(idle) == 1 and seconds(idle[0]) > 0, f"the sidecar sets EXIT_WHEN_IDLE ({idle})")
    apps = [c for c in pod.get("initContainers", []) if c["name"] != SIDECAR]
    check(
        len(apps) == 1 and apps[0].get("restartPolicy") == "Always",
        "the app is a native sidecar: started first, stopped after the sidecar's drain",
    )
    check(bool(apps and apps[0].get("startupProbe")), "the app has a startupProbe: the sidecar starts once it listens")
    endpoint = config_map_for(docs, sidecar).get("ENDPOINT_URL", "")
    app_ports = {p["containerPort"] for c in apps for p in c.get("ports", [])}
    check(
        any(endpoint.startswith(f"http://127.0.0.1:{port}/") for port in app_ports),
        f"ENDPOINT_URL {endpoint} is the app's port {sorted(app_ports)}",
    )
    check_keda_trigger(scaled["spec"], config_map_for(docs, sidecar), docs)


def check_overlay(overlay, docs):
    result = check_sidecar(docs, job=overlay == "keda-job")
    if not result:
        return
    deployment, sidecar, settings = result
    check_network_policy(docs, deployment, sidecar)
    pod_meta = deployment["spec"]["template"]["metadata"]
    pod = deployment["spec"]["template"]["spec"]
    if overlay == "keda-job":
        check_job(docs, sidecar, pod)

    if overlay in ("connection-string", "azurite"):
        refs = secret_refs(sidecar)
        check(len(refs) == 1, "credentials come from one Secret")
        secret = one(docs, "Secret", refs[0])
        check(
            secret_value(secret, "AZURE_STORAGE_CONNECTION_STRING") is not None,
            "the Secret holds AZURE_STORAGE_CONNECTION_STRING",
        )

    if overlay in ("workload-identity", "keda", "keda-job"):
        check(secret_refs(sidecar) == [], "workload identity: no Secret at all")
        check(
            pod_meta.get("labels", {}).get("azure.workload.identity/use") == "true",
            'pod label azure.workload.identity/use: "true"',
        )
        account = pod.get("serviceAccountName")
        sa = one(docs, "ServiceAccount", account) if account else {}
        check(
            bool(sa.get("metadata", {}).get("annotations", {}).get("azure.workload.identity/client-id")),
            "the pod's ServiceAccount has azure.workload.identity/client-id",
        )
        check(settings.get("AZURE_STORAGE_ACCOUNT"), "AZURE_STORAGE_ACCOUNT is set")
        check(settings.get("AZURE_STORAGE_AUTH") == "workload-identity", "AZURE_STORAGE_AUTH=workload-identity")

    if overlay == "workload-identity":
        check_endpoint_token(pod, sidecar, settings)

    if overlay == "keda":
        scaled = one(docs, "ScaledObject")
        check(scaled["apiVersion"] == "keda.sh/v1alpha1", "ScaledObject apiVersion keda.sh/v1alpha1")
        spec = scaled["spec"]
        target = spec.get("scaleTargetRef", {})
        check(
            target.get("name") == deployment["metadata"]["name"]
            and target.get("kind", "Deployment") == "Deployment",
            "ScaledObject scales the Deployment",
        )
        check(
            0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100),
            "minReplicaCount <= maxReplicaCount",
        )
        check_keda_trigger(spec, settings, docs)

    if overlay == "azurite":
        azurite = one(docs, "Deployment", "azurite")
        service = one(docs, "Service", "azurite")
        port = service["spec"]["ports"][0]["port"]
        secret = one(docs, "Secret", secret_refs(sidecar)[0])
        connection = secret_value(secret, "AZURE_STORAGE_CONNECTION_STRING") or ""
        check(f"QueueEndpoint=http://azurite:{port}/devstoreaccount1" in connection,
              "the connection string points at the azurite Service")
        check(settings.get("AZURE_STORAGE_ALLOW_HTTP") == "true",
              "AZURE_STORAGE_ALLOW_HTTP=true: the key goes over plain http to another pod")
        check(azurite["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items(),
              "the azurite Service selects the azurite pods")
        for container in azurite["spec"]["template"]["spec"]["containers"]:
            check_restricted(container, f"azurite container {container['name']}")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_docs(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def readme_alerts():
    """The rule groups of the README's example alerts (Operations > Metrics)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    match = re.search(r"Example alerts.*?\n```yaml\n(.*?)```", readme, re.S)
    if not match:
        raise SystemExit("README.md has no ```yaml block after 'Example alerts'")
    return yaml.safe_load(match.group(1))["groups"]


def readme_metrics():
    """Metric names in the README's metrics table, as exported (counters with _total)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return {"azure_queue_sidecar_" + m for m in re.findall(r"^\| `([a-z_]+)[`{]", f.read(), re.M)}


def check_monitoring(docs):
    """deploy/monitoring: the PodMonitor scrapes every queue-consumer pod's admin port, and
    the PrometheusRule is the README's example alerts, on metrics the README documents."""
    monitor = one(docs, "PodMonitor")
    check(monitor["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor apiVersion monitoring.coreos.com/v1")
    selector = monitor["spec"].get("selector", {}).get("matchLabels", {})
    pods = {
        "the Deployment": one(repo_docs("deploy/base/deployment.yaml"), "Deployment")["spec"]["template"],
        "the keda-job Jobs": one(repo_docs("deploy/overlays/keda-job/scaledjob.yaml"), "ScaledJob")["spec"][
            "jobTargetRef"
        ]["template"],
    }
    for what, template in pods.items():
        labels = template["metadata"].get("labels", {})
        check(bool(selector) and selector.items() <= labels.items(), f"the PodMonitor selects the pods of {what}")
        containers = template["spec"].get("containers", []) + template["spec"].get("initContainers", [])
        sidecar = [c for c in containers if c["name"] == SIDECAR][0]
        names = {p.get("name"): p["containerPort"] for p in sidecar.get("ports", [])}
        endpoints = monitor["spec"].get("podMetricsEndpoints", [])
        check(
            len(endpoints) == 1
            and names.get(endpoints[0].get("port")) == ADMIN_PORT
            and endpoints[0].get("path") == "/metrics",
            f"the PodMonitor scrapes /metrics on the sidecar's admin port ({what})",
        )
    rule = one(docs, "PrometheusRule")
    check(rule["apiVersion"] == "monitoring.coreos.com/v1", "PrometheusRule apiVersion monitoring.coreos.com/v1")
    groups = rule["spec"].get("groups", [])
    check(groups == readme_alerts(), "the PrometheusRule's groups are the README's example alerts")
    alerts = {r.get("alert") for g in groups for r in g.get("rules", [])}
    check("OldestMessageTooOld" in alerts, "an alert on the oldest message's age")
    used = {m for g in groups for r in g.get("rules", []) for m in re.findall(r"azure_queue_sidecar_[a-z_]+", r["expr"])}
    documented = readme_metrics()
    check(used and used <= documented, f"every metric the alerts use is in the README ({sorted(used - documented)} missing)")


def main():
    overlay, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    print(f"{overlay}: {', '.join(d['kind'] + '/' + d['metadata']['name'] for d in docs)}")
    if overlay == "monitoring":
        check_monitoring(docs)
    else:
        check_overlay(overlay, docs)
    if failures:
        print(f"{overlay}: {len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
