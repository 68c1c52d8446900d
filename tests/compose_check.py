#!/usr/bin/env python3
"""Checks on deploy/compose/compose.yaml without a Docker engine, for tests/compose.sh.

  compose_check.py check [--project-directory DIR] FILE
      Validates FILE against the Compose Specification's JSON schema (the copy that the pinned
      PyPI package check-jsonschema ships, see SCHEMA_PACKAGE), then
      checks what a schema cannot: every variable the sidecar service sets is in the sidecar's
      variable table (src/config/variables.rs), its healthcheck execs the binary's `healthcheck` command
      (no shell: the image has none), the queue creator and the sidecar agree on the queue and
      the queue service, the Azurite command line has the integration tests' flags, and the
      wiring between the services. Relative paths resolve against DIR (default: FILE's
      directory), as with `docker compose --project-directory`. Exits 1 if a check fails.
  compose_check.py self-test FILE [BINARY]
      Writes deliberately wrong copies of FILE (at least one per check) and makes sure the
      checks reject each of them, for the reason expected; with BINARY, also that `run` fails
      on a wrong healthcheck and on a queue creator that cannot authenticate.
  compose_check.py run FILE BINARY
      Runs the services without Docker: Azurite from target/tools with the compose command
      line, the create-queue script with node, BINARY with the sidecar's environment, and an
      HTTP endpoint in this process standing in for event_display. Service names are mapped to
      127.0.0.1 and free ports; ADMIN_ADDR is moved to a free port. Passes when every message
      arrives once, unchanged, the compose healthcheck command succeeds and SIGTERM stops the
      sidecar with exit 0.
"""

import copy
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
# The Compose Specification's JSON schema (github.com/compose-spec/compose-spec,
# schema/compose-spec.json, Apache-2.0) comes from a package registry rather than a copy in this
# repository: check-jsonschema vendors it, with its licence and SHA-256, and tests/setup.sh pins
# that package (PIP_COMPOSE), so the schema's version is the package's version. To move to a
# newer schema, raise the pin there and run `bash tests/compose.sh`.
SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "compose-spec.json"

AZURITE, CREATOR, SIDECAR, APP = "azurite", "create-queue", "sidecar", "event-display"
# event_display listens on 8080 (the CloudEvents Go SDK's default port).
APP_PORT = 8080
# src/pipeline/pump.rs: a receive under way at SIGTERM may finish for RECEIVE_GRACE before the drain's
# SHUTDOWN_TIMEOUT starts; after it, deliveries that were cut off get RELEASE_GRACE to release
# their messages before the sidecar exits (the same figures as tests/deploy_check.py).
RECEIVE_GRACE_SECONDS = 5
RELEASE_GRACE_SECONDS = 10
DEFAULT_SHUTDOWN_TIMEOUT = "20s"
DEFAULT_ADMIN_ADDR = "0.0.0.0:9464"
# Flags that only change what Azurite prints, not how it behaves.
CONSOLE_FLAGS = {"--silent"}


# --- sources of truth in the repository -------------------------------------------------


def sidecar_variables():
    """The names in config::VARIABLES (what --help prints)."""
    source = (REPO / "src/config/variables.rs").read_text()
    match = re.search(r"pub const VARIABLES: &\[Variable\] = &\[(.*?)\n\];", source, re.S)
    if not match:
        raise SystemExit("cannot find config::VARIABLES in src/config/variables.rs")
    names = set(re.findall(r'name:\s*"([A-Z0-9_]+)"', match.group(1)))
    if "QUEUE_NAME" not in names:
        raise SystemExit(f"config::VARIABLES parsed as {sorted(names)}: no QUEUE_NAME")
    return names


def test_azurite_flags():
    """The flags tests/support/mod.rs starts in-memory Azurite with."""
    source = (REPO / "tests/support/mod.rs").read_text()
    match = re.search(r"pub async fn start_with\(.*?\n    }\n", source, re.S)
    if not match:
        raise SystemExit("cannot find Azurite::start_with in tests/support/mod.rs")
    flags = set(re.findall(r'"(--[A-Za-z]+)"', match.group(0)))
    # --location is the on-disk alternative to --inMemoryPersistence (restart tests).
    flags.discard("--location")
    if "--inMemoryPersistence" not in flags:
        raise SystemExit(f"tests/support/mod.rs Azurite flags parsed as {sorted(flags)}")
    return flags


def demo_azurite_flags():
    """The flags tests/demo.sh starts Azurite with."""
    source = (REPO / "tests/demo.sh").read_text().replace("\\\n", " ")
    lines = [line for line in source.splitlines() if "node_modules/.bin/azurite-queue " in line]
    if len(lines) != 1:
        raise SystemExit(f"expected one azurite-queue command in tests/demo.sh, found {len(lines)}")
    return set(re.findall(r"(?<!\S)(--[A-Za-z]+)", lines[0]))


def pinned_azurite_version():
    match = re.search(r"^AZURITE_VERSION=(\S+)$", (REPO / "tests/setup.sh").read_text(), re.M)
    if not match:
        raise SystemExit("cannot find AZURITE_VERSION in tests/setup.sh")
    return match.group(1)


def dockerfile_entrypoint(dockerfile):
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.M)
    if not match:
        raise SystemExit(f"no exec-form ENTRYPOINT in {dockerfile}")
    return json.loads(match.group(1))


# --- reading a compose file ---------------------------------------------------------------


def environment(service):
    """A service's environment as a dict, from either of Compose's two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def parse_flags(args):
    """--name=value, --name value and --name, as {name: value or None}."""
    flags, i = {}, 0
    while i < len(args):
        arg = str(args[i])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                value, i = str(args[i + 1]), i + 1
            flags[name] = value if (eq or value) else None
        i += 1
    return flags


def seconds(duration):
    """A Compose or sidecar duration (10s, 1m30s, 500ms, 2h) in seconds."""
    text = str(duration).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"cannot read duration {duration!r}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


def command_list(service, key):
    value = service.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else str(value).split()


def mounted_file(service, container_path, project_dir):
    """The host file a short-syntax bind mount puts at container_path, or None."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[1] == container_path and parts[0].startswith("."):
                return (project_dir / parts[0]).resolve()
    return None


# --- the checks ---------------------------------------------------------------------------


class Checks:
    def __init__(self, quiet=False):
        self.failures, self.quiet = [], quiet

    def check(self, condition, what):
        if not self.quiet:
            print(("  ok   " if condition else "  FAIL ") + what)
        if not condition:
            self.failures.append(what)
        return condition


def check_schema(c, data):
    from importlib import resources
    vendor = resources.files(SCHEMA_PACKAGE)
    raw = (vendor / SCHEMA_FILE).read_bytes()
    noted = (vendor / "sha256" / (SCHEMA_FILE.removesuffix(".json") + ".sha256")).read_text().strip()
    if not c.check(hashlib.sha256(raw).hexdigest() == noted,
                   f"the schema is the one check-jsonschema notes ({SCHEMA_FILE}, SHA-256)"):
        return False
    schema = json.loads(raw)
    # The validator follows the schema's own "$schema" draft, after checking the schema itself
    # against that draft; an unknown draft is an error rather than a silent fallback.
    validator = jsonschema.validators.validator_for(schema, default=None)
    if not c.check(validator is not None, f"the schema's draft is known: {schema.get('$schema')}"):
        return False
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    for error in errors:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        c.check(False, f"schema: {where}: {error.message}")
    return c.check(not errors, "the file is valid against the Compose Specification schema")


def check_azurite(c, services):
    azurite = services[AZURITE]
    image = str(azurite.get("image", ""))
    version = pinned_azurite_version()
    c.check(image == f"mcr.microsoft.com/azure-storage/azurite:{version}",
            f"azurite: image {image!r} is Azurite {version}, the version tests/setup.sh pins")
    command = command_list(azurite, "command")
    c.check(command[:1] == ["azurite-queue"], "azurite: runs the queue service only (azurite-queue)")
    flags = parse_flags(command[1:])
    names = set(flags)
    # Flags, not values: the tests listen on 127.0.0.1 and a free port, a container must
    # listen on 0.0.0.0 to be reachable from the others.
    tests, demo = test_azurite_flags(), demo_azurite_flags()
    c.check(names - CONSOLE_FLAGS == tests,
            f"azurite: flags {sorted(names - CONSOLE_FLAGS)} (besides {sorted(CONSOLE_FLAGS)}) "
            f"are those of tests/support/mod.rs {sorted(tests)}")
    c.check(names == demo, f"azurite: flags {sorted(names)} are those of tests/demo.sh {sorted(demo)}")
    c.check(flags.get("--queueHost") == "0.0.0.0",
            "azurite: --queueHost=0.0.0.0 (reachable from the other containers)")
    return flags.get("--queuePort")


def check_queue_endpoint(c, label, env, queue_port):
    endpoint = env.get("AZURE_STORAGE_QUEUE_ENDPOINT") or ""
    url = urlsplit(endpoint)
    try:
        port = url.port
    except ValueError:
        port = None
    c.check(url.scheme == "http" and url.hostname == AZURITE and str(port) == str(queue_port)
            and url.path.rstrip("/") == "/devstoreaccount1",
            f"{label}: AZURE_STORAGE_QUEUE_ENDPOINT {endpoint!r} is the azurite service's queue port "
            f"({queue_port}) and development account")
    return endpoint


def check_creator(c, services, project_dir, queue_port):
    creator = services[CREATOR]
    env = environment(creator)
    entrypoint = command_list(creator, "entrypoint")
    c.check(entrypoint[:1] == ["node"] and len(entrypoint) == 2,
            "create-queue: entrypoint is node and one script")
    script = mounted_file(creator, entrypoint[1], project_dir) if len(entrypoint) == 2 else None
    c.check(script is not None and script.is_file(),
            f"create-queue: the script is a file of the repository mounted into the container ({script})")
    c.check(bool(command_list(creator, "command")), "create-queue: puts at least one message (command arguments)")
    depends = creator.get("depends_on") or {}
    c.check(AZURITE in depends, "create-queue: depends on azurite (it waits for it to listen by itself)")
    endpoint = check_queue_endpoint(c, "create-queue", env, queue_port)
    return env.get("QUEUE_NAME"), endpoint


def check_sidecar_environment(c, sidecar):
    env = environment(sidecar)
    table = sidecar_variables()
    c.check("env_file" not in sidecar, "sidecar: settings only under environment, where they are checked")
    for name in sorted(env):
        if name in table:
            c.check(True, f"sidecar: {name} is in the sidecar's variable table")
        else:
            c.check(False, f"sidecar: {name} is not in the sidecar's variable table (src/config/variables.rs VARIABLES)")
    return env


def check_healthcheck(c, sidecar, binary):
    health = sidecar.get("healthcheck")
    if not c.check(isinstance(health, dict), "sidecar: sets a healthcheck"):
        return
    c.check(health.get("disable") is not True, "sidecar: healthcheck not disabled")
    test = health.get("test")
    c.check(isinstance(test, list) and test[:1] == ["CMD"],
            f"sidecar: healthcheck in exec form [\"CMD\", ...] (no shell in the image), got {test!r}")
    if isinstance(test, list):
        args = test[1:]
        c.check(args[:2] == [binary, "healthcheck"] and len(args) <= 3
                and all(str(a).startswith("/") for a in args[2:]),
                f"sidecar: healthcheck command is `{binary} healthcheck [PATH]`, got {args!r}")


def check_sidecar(c, services, project_dir, queue_port, dockerfile):
    sidecar = services[SIDECAR]
    build = sidecar.get("build") or {}
    context = project_dir / str(build.get("context", "."))
    c.check((context / str(build.get("dockerfile", "Dockerfile"))).resolve() == dockerfile.resolve(),
            f"sidecar: built from the repository's Dockerfile ({dockerfile})")
    c.check("command" not in sidecar and "entrypoint" not in sidecar,
            "sidecar: runs the image's entrypoint, the binary")
    binary = dockerfile_entrypoint(dockerfile)[0]
    env = check_sidecar_environment(c, sidecar)
    check_healthcheck(c, sidecar, binary)
    endpoint = check_queue_endpoint(c, "sidecar", env, queue_port)
    c.check(env.get("AZURE_STORAGE_CONNECTION_STRING") == "UseDevelopmentStorage=true",
            "sidecar: Azurite's development account (UseDevelopmentStorage=true)")
    # Issue 11: a key over plain http to a host that is not loopback needs this.
    c.check(env.get("AZURE_STORAGE_ALLOW_HTTP") == "true",
            "sidecar: AZURE_STORAGE_ALLOW_HTTP=true (a key over http to the azurite service)")
    target = urlsplit(env.get("ENDPOINT_URL") or "")
    try:
        target_port = target.port
    except ValueError:
        target_port = None
    c.check(target.scheme == "http" and target.hostname == APP and target_port == APP_PORT,
            f"sidecar: ENDPOINT_URL is the {APP} service on port {APP_PORT}")
    depends = sidecar.get("depends_on") or {}
    creator = depends.get(CREATOR, {}) if isinstance(depends, dict) else {}
    c.check(creator.get("condition") == "service_completed_successfully",
            "sidecar: starts once create-queue completed successfully")
    admin_host, _, admin_port = (env.get("ADMIN_ADDR") or DEFAULT_ADMIN_ADDR).rpartition(":")
    c.check(admin_host in ("0.0.0.0", "[::]"), "sidecar: ADMIN_ADDR listens on all interfaces (published port)")
    for port in sidecar.get("ports") or []:
        published = str(port).rsplit(":", 1)[-1].split("/")[0] if not isinstance(port, dict) else str(port.get("target"))
        c.check(published == admin_port, f"sidecar: published container port {published} is ADMIN_ADDR's")
    try:
        needed = (RECEIVE_GRACE_SECONDS + seconds(env.get("SHUTDOWN_TIMEOUT") or DEFAULT_SHUTDOWN_TIMEOUT)
                  + RELEASE_GRACE_SECONDS)
        grace = seconds(sidecar.get("stop_grace_period", "10s"))
    except ValueError as error:
        c.check(False, f"sidecar: {error}")
    else:
        c.check(grace >= needed,
                f"sidecar: stop_grace_period {grace:g}s covers {RECEIVE_GRACE_SECONDS}s receive grace + SHUTDOWN_TIMEOUT + {RELEASE_GRACE_SECONDS}s release ({needed:g}s)")
    return env.get("QUEUE_NAME"), endpoint


def check_file(path, project_dir=None, quiet=False):
    """Every check on one compose file; the list of failures."""
    path = Path(path)
    project_dir = Path(project_dir or path.parent).resolve()
    c = Checks(quiet)
    data = yaml.safe_load(path.read_text())
    # The checks below read the file's structure, which only a schema-valid file is sure to have.
    if not check_schema(c, data):
        return c.failures
    services = data.get("services") or {}
    found = set(services)
    if not c.check(found == {AZURITE, CREATOR, SIDECAR, APP},
                   f"services are {sorted({AZURITE, CREATOR, SIDECAR, APP})}, found {sorted(found)}"):
        return c.failures
    dockerfile = REPO / "Dockerfile"
    queue_port = check_azurite(c, services)
    creator_queue, creator_endpoint = check_creator(c, services, project_dir, queue_port)
    sidecar_queue, sidecar_endpoint = check_sidecar(c, services, project_dir, queue_port, dockerfile)
    c.check(bool(sidecar_queue) and creator_queue == sidecar_queue,
            f"create-queue and sidecar agree on the queue name ({creator_queue!r}, {sidecar_queue!r})")
    c.check(creator_endpoint == sidecar_endpoint,
            f"create-queue and sidecar agree on the queue service ({creator_endpoint!r}, {sidecar_endpoint!r})")
    c.check(str(services[APP].get("image", "")).startswith("gcr.io/knative-releases/knative.dev/eventing/cmd/event_display"),
            f"{APP}: Knative's event_display (the app listens on {APP_PORT})")
    return c.failures


# --- self-test: wrong copies --------------------------------------------------------------


def env_set(service, **values):
    def mutate(d):
        d["services"][service].setdefault("environment", {}).update(values)
    return mutate


def env_del(service, name):
    def mutate(d):
        d["services"][service]["environment"].pop(name)
    return mutate


def setter(*keys, value):
    def mutate(d):
        node = d
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return mutate


def deleter(*keys):
    def mutate(d):
        node = d
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return mutate


def azurite_args(transform):
    def mutate(d):
        command = d["services"][AZURITE]["command"]
        d["services"][AZURITE]["command"] = transform(command)
    return mutate


def env_as_list(service, extra):
    def mutate(d):
        env = d["services"][service]["environment"]
        d["services"][service]["environment"] = [f"{k}={v}" for k, v in env.items()] + [extra]
    return mutate


# (what is wrong, how to make it wrong, a phrase of the failure expected)
WRONG = [
    ("a misspelt service key", setter("services", SIDECAR, "healthchek", value={"test": ["NONE"]}),
     "schema: services/sidecar: Unevaluated properties are not allowed ('healthchek' was unexpected)"),
    ("an unknown depends_on condition", setter("services", SIDECAR, "depends_on", CREATOR, "condition", value="service_completed"),
     "schema: services/sidecar/depends_on: "),
    ("ports as a number", setter("services", SIDECAR, "ports", value=9464), "schema: services/sidecar/ports"),
    ("a variable the sidecar does not read", env_set(SIDECAR, QUEUE_NAMES="demo"),
     "sidecar: QUEUE_NAMES is not in the sidecar's variable table"),
    ("an unknown variable, list form", env_as_list(SIDECAR, "BATCHSIZE=4"),
     "sidecar: BATCHSIZE is not in the sidecar's variable table"),
    ("settings from an env_file", setter("services", SIDECAR, "env_file", value=["sidecar.env"]),
     "sidecar: settings only under environment"),
    ("no healthcheck", deleter("services", SIDECAR, "healthcheck"), "sidecar: sets a healthcheck"),
    ("a disabled healthcheck", setter("services", SIDECAR, "healthcheck", "disable", value=True),
     "sidecar: healthcheck not disabled"),
    ("a shell-form healthcheck", setter("services", SIDECAR, "healthcheck", "test", value="/azure-queue-sidecar healthcheck"),
     "sidecar: healthcheck in exec form"),
    ("a CMD-SHELL healthcheck", setter("services", SIDECAR, "healthcheck", "test", value=["CMD-SHELL", "/azure-queue-sidecar healthcheck"]),
     "sidecar: healthcheck in exec form"),
    ("a curl healthcheck", setter("services", SIDECAR, "healthcheck", "test", value=["CMD", "curl", "-f", "http://127.0.0.1:9464/healthz"]),
     "sidecar: healthcheck command is"),
    ("queue names that differ", env_set(CREATOR, QUEUE_NAME="orders"),
     "create-queue and sidecar agree on the queue name"),
    ("the creator at another queue service", env_set(CREATOR, AZURE_STORAGE_QUEUE_ENDPOINT="http://azurite:10002/devstoreaccount1"),
     "create-queue: AZURE_STORAGE_QUEUE_ENDPOINT"),
    ("the sidecar at loopback", env_set(SIDECAR, AZURE_STORAGE_QUEUE_ENDPOINT="http://127.0.0.1:10001/devstoreaccount1"),
     "sidecar: AZURE_STORAGE_QUEUE_ENDPOINT"),
    ("Azurite without --skipApiVersionCheck", azurite_args(lambda a: [x for x in a if x != "--skipApiVersionCheck"]),
     "are those of tests/support/mod.rs"),
    ("Azurite with an extra flag", azurite_args(lambda a: a + ["--loose"]), "are those of tests/support/mod.rs"),
    ("Azurite on disk", azurite_args(lambda a: [x for x in a if x != "--inMemoryPersistence"] + ["--location=/data"]),
     "are those of tests/support/mod.rs"),
    ("Azurite on loopback", azurite_args(lambda a: [x.replace("0.0.0.0", "127.0.0.1") for x in a]),
     "azurite: --queueHost=0.0.0.0"),
    ("Azurite's blob and queue services", azurite_args(lambda a: ["azurite"] + a[1:]), "azurite: runs the queue service only"),
    ("another Azurite version", setter("services", AZURITE, "image", value="mcr.microsoft.com/azure-storage/azurite:3.34.0"),
     "the version tests/setup.sh pins"),
    ("Azurite on another port than the endpoints'", azurite_args(lambda a: [x.replace("10001", "10011") for x in a]),
     "sidecar: AZURE_STORAGE_QUEUE_ENDPOINT"),
    ("an endpoint on the wrong port", env_set(SIDECAR, ENDPOINT_URL="http://event-display/"),
     "sidecar: ENDPOINT_URL is the event-display service on port 8080"),
    ("no AZURE_STORAGE_ALLOW_HTTP", env_del(SIDECAR, "AZURE_STORAGE_ALLOW_HTTP"), "sidecar: AZURE_STORAGE_ALLOW_HTTP=true"),
    ("another account", env_set(SIDECAR, AZURE_STORAGE_CONNECTION_STRING="AccountName=x;AccountKey=eA=="),
     "sidecar: Azurite's development account"),
    ("admin server on loopback", env_set(SIDECAR, ADMIN_ADDR="127.0.0.1:9464"), "sidecar: ADMIN_ADDR listens on all interfaces"),
    ("a published port that is not the admin port", setter("services", SIDECAR, "ports", value=["127.0.0.1:8080:8080"]),
     "sidecar: published container port 8080"),
    ("a stop grace period shorter than the drain", setter("services", SIDECAR, "stop_grace_period", value="10s"),
     "sidecar: stop_grace_period 10s"),
    ("a longer drain than the grace period", env_set(SIDECAR, SHUTDOWN_TIMEOUT="1m"), "sidecar: stop_grace_period 35s"),
    ("a sidecar that does not wait for the queue", setter("services", SIDECAR, "depends_on", CREATOR, "condition", value="service_started"),
     "sidecar: starts once create-queue completed successfully"),
    ("a sidecar built from elsewhere", setter("services", SIDECAR, "build", "context", value="."),
     "sidecar: built from the repository's Dockerfile"),
    ("a sidecar command", setter("services", SIDECAR, "command", value=["check"]), "sidecar: runs the image's entrypoint"),
    ("a creator script that is not mounted", setter("services", CREATOR, "volumes", value=[]),
     "create-queue: the script is a file of the repository"),
    ("a creator without messages", deleter("services", CREATOR, "command"), "create-queue: puts at least one message"),
    ("a missing service", deleter("services", APP), "services are"),
]


def self_test(path, binary=None):
    path = Path(path)
    original = yaml.safe_load(path.read_text())
    failures = check_file(path, quiet=True)
    if failures:
        raise SystemExit(f"self-test: {path} itself fails: {failures}")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, mutate, expected in WRONG:
            data = copy.deepcopy(original)
            mutate(data)
            wrong = Path(tmp) / "compose.yaml"
            wrong.write_text(yaml.safe_dump(data, sort_keys=False))
            found = check_file(wrong, project_dir=path.parent, quiet=True)
            caught = [f for f in found if expected in f]
            print(("  ok   " if caught else "  FAIL ") + f"rejects {what}: {caught[0] if caught else found}")
            if not caught:
                problems.append(what)
        # And through the command line: exit status 1, the failure printed.
        data = copy.deepcopy(original)
        env_set(SIDECAR, QUEUE_NAMES="demo")(data)
        wrong = Path(tmp) / "compose.yaml"
        wrong.write_text(yaml.safe_dump(data, sort_keys=False))
        result = subprocess.run([sys.executable, __file__, "check", "--project-directory", str(path.parent), str(wrong)],
                                capture_output=True, text=True)
        cli_ok = result.returncode == 1 and "FAIL sidecar: QUEUE_NAMES" in result.stdout
        print(("  ok   " if cli_ok else "  FAIL ") + f"`check` exits {result.returncode} on a wrong copy")
        if not cli_ok:
            problems.append("exit status")
        if binary:
            problems += run_self_test(path, original, binary, Path(tmp))
    if problems:
        raise SystemExit(f"self-test: {len(problems)} wrong copies passed: {problems}")
    print(f"self-test: all {len(WRONG) + 1 + (len(WRONG_RUNS) if binary else 0)} wrong copies rejected")


# (what is wrong, how to make the compose file wrong, how to make the script wrong, the reason)
WRONG_RUNS = [
    ("a healthcheck of a path the admin server does not serve",
     setter("services", SIDECAR, "healthcheck", "test", value=["CMD", "/azure-queue-sidecar", "healthcheck", "/nope"]),
     lambda script: script, "healthcheck"),
    ("a queue creator signing with another key", lambda d: None,
     lambda script: script.replace('const KEY = "Eby8', 'const KEY = "Fby8'), "create-queue exited 1"),
]


def run_self_test(path, original, binary, tmp):
    """`run` fails on a wrong copy of the file or of the script; the list of those it passed."""
    problems = []
    script = (path.parent / "create-queue.mjs").read_text()
    for what, mutate, mutate_script, expected in WRONG_RUNS:
        data = copy.deepcopy(original)
        mutate(data)
        wrong = tmp / "compose.yaml"
        wrong.write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp / "create-queue.mjs").write_text(mutate_script(script))
        result = subprocess.run([sys.executable, __file__, "run", str(wrong), binary], capture_output=True, text=True)
        caught = result.returncode != 0 and expected in result.stdout + result.stderr
        print(("  ok   " if caught else "  FAIL ") + f"run rejects {what}: exit {result.returncode}")
        if not caught:
            print(result.stdout + result.stderr)
            problems.append(what)
    return problems


# --- run: the services without Docker -----------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"run: timed out after {timeout} s waiting for {what}")


class Sink(http.server.BaseHTTPRequestHandler):
    """The stand-in for event_display: records each request and answers 200."""

    received = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            self.received.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def delivery_problems(messages, received):
    """Each message arrived exactly once, its bytes unchanged (binary mode); an already-CloudEvent
    message arrived as that event. The list of what did not hold."""
    problems = []
    if len(received) != len(messages):
        problems.append(f"{len(received)} events for {len(messages)} messages")
    for text in messages:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("specversion") == "1.0":
            hits = [h for h, _ in received if h.get("ce-id") == parsed["id"]]
            what = f"the CloudEvent {parsed['id']} arrived as itself"
        else:
            hits = [b for _, b in received if b == text.encode()]
            what = f"{text!r} arrived byte for byte"
        print(("  ok   " if len(hits) == 1 else "  FAIL ") + what)
        if len(hits) != 1:
            problems.append(what)
    return problems


def run(path, binary):
    path = Path(path)
    project_dir = path.parent.resolve()
    services = yaml.safe_load(path.read_text())["services"]
    queue_port, app_port, admin_port = free_port(), free_port(), free_port()
    azurite_flags = parse_flags(command_list(services[AZURITE], "command")[1:])
    hosts = {f"//{AZURITE}:{azurite_flags['--queuePort']}": f"//127.0.0.1:{queue_port}",
             f"//{APP}:{APP_PORT}": f"//127.0.0.1:{app_port}"}

    def localized(env):
        out = {"PATH": os.environ["PATH"]}
        for key, value in env.items():
            for old, new in hosts.items():
                value = (value or "").replace(old, new)
            out[key] = value
        return out

    processes = []

    def start(args, env, name):
        log = open(Path(tempfile.gettempdir()) / f"compose-run-{os.getpid()}-{name}.log", "w+")
        processes.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log, name))
        return processes[-1]

    def output(entry):
        entry[1].flush()
        entry[1].seek(0)
        return entry[1].read()

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", app_port), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        # The creator first, as in Compose, where Azurite's container may not listen yet: the
        # script has to wait for it.
        creator = services[CREATOR]
        entrypoint = command_list(creator, "entrypoint")
        script = mounted_file(creator, entrypoint[1], project_dir)
        messages = [str(m) for m in command_list(creator, "command")]
        creating = start(["node", str(script)] + messages, localized(environment(creator)), CREATOR)
        time.sleep(1)
        command = command_list(services[AZURITE], "command")
        args = [str(REPO / "target/tools/node_modules/.bin" / command[0])]
        for name, value in azurite_flags.items():
            value = {"--queueHost": "127.0.0.1", "--queuePort": str(queue_port)}.get(name, value)
            args.append(name if value is None else f"{name}={value}")
        azurite = start(args, dict(os.environ), AZURITE)
        print(f"run: {' '.join(args[1:])}")
        try:
            code = creating[0].wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"run: create-queue did not finish in 90 s:\n{output(creating)}")
        print("run: create-queue: " + output(creating).strip().replace("\n", "\n     "))
        if code != 0:
            raise SystemExit(f"run: create-queue exited {code}; Azurite said:\n{output(azurite)}")

        env = localized(environment(services[SIDECAR]))
        if env.get("CE_MODE", "binary") != "binary":
            raise SystemExit(f"run: compares bodies byte for byte, in binary mode only (CE_MODE={env['CE_MODE']})")
        env["ADMIN_ADDR"] = f"127.0.0.1:{admin_port}"
        sidecar = start([binary], env, SIDECAR)
        wait_for(lambda: len(Sink.received) >= len(messages) or sidecar[0].poll() is not None, 90,
                 f"{len(messages)} events")
        if sidecar[0].poll() is not None:
            raise SystemExit(f"run: the sidecar exited {sidecar[0].returncode}:\n{output(sidecar)}")
        time.sleep(1)  # a duplicate would show up now
        problems = delivery_problems(messages, Sink.received)

        health = services[SIDECAR]["healthcheck"]["test"][1:]
        binary_in_image = dockerfile_entrypoint(REPO / "Dockerfile")[0]
        probe = subprocess.run([binary if a == binary_in_image else a for a in health], env=env,
                               capture_output=True, text=True, timeout=seconds(services[SIDECAR]["healthcheck"]["timeout"]) + 10)
        print(("  ok   " if probe.returncode == 0 else "  FAIL ")
              + f"healthcheck `{' '.join(health)}`: exit {probe.returncode}, {probe.stdout.strip()}")
        if probe.returncode != 0:
            problems.append("healthcheck")

        sidecar[0].send_signal(signal.SIGTERM)
        grace = seconds(services[SIDECAR]["stop_grace_period"])
        try:
            code = sidecar[0].wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        print(("  ok   " if code == 0 else "  FAIL ") + f"SIGTERM: the sidecar exited {code} within {grace:g} s")
        if code != 0:
            problems.append("shutdown")
        if problems:
            raise SystemExit(f"run: {problems}\n--- sidecar log:\n{output(sidecar)}")
        print("run: every message delivered once, healthcheck ok, clean shutdown")
    finally:
        sink.shutdown()
        for process, log, _ in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
            os.unlink(log.name)


def main(argv):
    if len(argv) >= 2 and argv[0] == "check":
        project_dir = None
        if argv[1] == "--project-directory" and len(argv) == 4:
            project_dir, argv = argv[2], argv[:1] + argv[3:]
        if len(argv) == 2:
            failures = check_file(argv[1], project_dir)
            if failures:
                print(f"{argv[1]}: {len(failures)} check(s) failed")
                return 1
            print(f"{argv[1]}: all checks passed")
            return 0
    if len(argv) in (2, 3) and argv[0] == "self-test":
        self_test(*argv[1:])
        return 0
    if len(argv) == 3 and argv[0] == "run":
        run(argv[1], argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
