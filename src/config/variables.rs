//! The variable table: every environment variable the sidecar reads, with its default and its
//! meaning, in one place.
//!
//! It is the single source of three things that must agree: the parser's defaults (the
//! configuration reads a [`Default::Value`] from here, see [`default_value`]), `--help` (the
//! `help` line of each variable, see `commands::cli`), and the tables under *Configuration*
//! in the README (the `readme` text, rendered by [`readme_table`]; a test fails when the README
//! is not what the table renders, and `UPDATE_README=1 cargo test --lib readme` rewrites it).

#[cfg(test)]
use std::fmt::Write as _;

/// The CloudEvent `type` of wrapped messages unless `CE_TYPE` says otherwise: what existing
/// Knative sources for this queue emit.
pub(crate) const DEFAULT_CE_TYPE: &str = "com.microsoft.azure.queuestorage";

/// Where the admin server listens unless `ADMIN_ADDR` says otherwise: all interfaces, so the
/// kubelet and Prometheus can reach it; 9464 is the port OpenTelemetry's Prometheus exporter
/// uses, so dashboards and scrape configs that expect an exporter there keep working.
pub(crate) const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9464";

/// A variable's default, as the parser uses it and the documentation shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Default {
    /// Unset by default (shown as `-` in `--help`, `–` in the README).
    None,
    /// Must be set.
    Required,
    /// A literal value the parser uses when the variable is unset.
    Value(&'static str),
    /// A literal derived from other settings (`<QUEUE_NAME>-poison`), shown as code.
    Code(&'static str),
    /// A description of what happens when unset (`the queue URL`), shown as prose.
    Text(&'static str),
}

impl Default {
    /// How `--help` shows it.
    pub(crate) fn help(self) -> &'static str {
        match self {
            Default::None => "-",
            Default::Required => "required",
            Default::Value(text) | Default::Code(text) | Default::Text(text) => text,
        }
    }

    /// How the README shows it (Markdown).
    #[cfg(test)]
    fn readme(self) -> String {
        match self {
            Default::None => "–".to_string(),
            Default::Required => "**required**".to_string(),
            Default::Value(text) | Default::Code(text) => format!("`{text}`"),
            Default::Text(text) => text.to_string(),
        }
    }
}

/// The README table a variable is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Storage,
    Endpoint,
    Throughput,
    Retries,
    Operations,
}

impl Section {
    /// Every section, in README order.
    #[cfg(test)]
    const ALL: [Section; 5] = [
        Section::Storage,
        Section::Endpoint,
        Section::Throughput,
        Section::Retries,
        Section::Operations,
    ];

    /// The name in the README's marker comment above the table.
    #[cfg(test)]
    fn marker(self) -> &'static str {
        match self {
            Section::Storage => "storage",
            Section::Endpoint => "endpoint",
            Section::Throughput => "throughput",
            Section::Retries => "retries",
            Section::Operations => "operations",
        }
    }
}

/// One documented environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub(crate) default: Default,
    /// One line for `--help`.
    pub(crate) help: &'static str,
    // The README fields are read by the test that renders the README's tables.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) section: Section,
    /// The README row's meaning (Markdown): the longer story.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) readme: &'static str,
    /// The README row's first cell, when the row covers more than this variable.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) readme_name: Option<&'static str>,
    /// The README row's default, when it is the image's rather than the binary's.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) readme_default: Option<&'static str>,
}

/// The fields most rows leave as they are.
const ROW: Variable = Variable {
    name: "",
    default: Default::None,
    help: "",
    section: Section::Storage,
    readme: "",
    readme_name: None,
    readme_default: None,
};

/// Every variable the sidecar reads, in README order.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "AZURE_STORAGE_CONNECTION_STRING",
        default: Default::None,
        help: "storage connection string (AccountName/AccountKey, SharedAccessSignature, QueueEndpoint, EndpointSuffix, DefaultEndpointsProtocol, UseDevelopmentStorage=true)",
        section: Section::Storage,
        readme: "A storage connection string: `AccountName` + `AccountKey`, or `SharedAccessSignature`; `QueueEndpoint`, `EndpointSuffix`, `DefaultEndpointsProtocol`; or `UseDevelopmentStorage=true` (Azurite's well-known account at `http://127.0.0.1:10001/devstoreaccount1`).",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_ACCOUNT",
        default: Default::None,
        help: "storage account name (instead of a connection string)",
        section: Section::Storage,
        readme: "The account name, instead of a connection string (the az CLI's names).",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_KEY",
        default: Default::None,
        help: "account key, with AZURE_STORAGE_ACCOUNT",
        section: Section::Storage,
        readme: "The account key, with `AZURE_STORAGE_ACCOUNT`.",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_SAS_TOKEN",
        default: Default::None,
        help: "SAS token (needs the 'p' permission), with AZURE_STORAGE_ACCOUNT or AZURE_STORAGE_QUEUE_ENDPOINT",
        section: Section::Storage,
        readme: "A SAS token (leading `?` optional), with `AZURE_STORAGE_ACCOUNT` or `AZURE_STORAGE_QUEUE_ENDPOINT`. Needs `p` (process); `u` (update) and `a` on the poison queue for the full feature set (see *Least privilege*).",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_QUEUE_ENDPOINT",
        default: Default::Code("https://<account>.queue.core.windows.net"),
        help: "queue service URL (Azurite: http://127.0.0.1:10001/devstoreaccount1)",
        section: Section::Storage,
        readme: "The queue service URL; overrides the connection string's. Azurite path style: `http://127.0.0.1:10001/devstoreaccount1`. Must not contain a query (put a SAS in `AZURE_STORAGE_SAS_TOKEN`).",
        ..ROW
    },
    Variable {
        name: "QUEUE_NAME",
        default: Default::Required,
        help: "the queue to consume (never created by the sidecar)",
        section: Section::Storage,
        readme: "The queue to consume. The sidecar never creates it.",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_ALLOW_HTTP",
        default: Default::Value("false"),
        help: "allow an account key or SAS over plain http to a host that is not loopback (e.g. Azurite in a cluster)",
        section: Section::Storage,
        readme: "Allow an account key or SAS over plain `http://` to a host that is not loopback (Azurite in another container or pod). Without it such an endpoint stops the sidecar at start; `127.0.0.1`, `[::1]` and `localhost` are always allowed.",
        ..ROW
    },
    Variable {
        name: "AZURE_STORAGE_AUTH",
        default: Default::Text("automatic"),
        help: "force key, sas, workload-identity or managed-identity (automatic: a key or SAS if given, else workload identity if AZURE_FEDERATED_TOKEN_FILE is set, else managed identity)",
        section: Section::Storage,
        readme: "Force `key`, `sas`, `workload-identity` or `managed-identity` (see *Authentication*).",
        ..ROW
    },
    Variable {
        name: "AZURE_FEDERATED_TOKEN_FILE",
        default: Default::None,
        help: "workload identity: the projected service account token, re-read at every token request (set by the AKS webhook)",
        section: Section::Storage,
        readme: "Workload identity: the projected service account token, re-read at every token request. The AKS webhook sets it.",
        ..ROW
    },
    Variable {
        name: "AZURE_CLIENT_ID",
        default: Default::None,
        help: "workload identity: the application (client) ID; managed identity: selects a user-assigned identity",
        section: Section::Storage,
        readme: "Workload identity: the application (client) ID. Managed identity: selects a user-assigned identity.",
        ..ROW
    },
    Variable {
        name: "AZURE_TENANT_ID",
        default: Default::None,
        help: "workload identity: the Microsoft Entra tenant ID",
        section: Section::Storage,
        readme: "Workload identity: the tenant ID.",
        ..ROW
    },
    Variable {
        name: "AZURE_AUTHORITY_HOST",
        default: Default::Code("https://login.microsoftonline.com"),
        help: "workload identity: the https token authority (sovereign clouds)",
        section: Section::Storage,
        readme: "Workload identity: the https token authority (sovereign clouds).",
        ..ROW
    },
    Variable {
        name: "IDENTITY_ENDPOINT",
        default: Default::Text("IMDS"),
        help: "managed identity endpoint with IDENTITY_HEADER (App Service, Container Apps); unset: the VM instance metadata service",
        section: Section::Storage,
        readme: "Managed identity endpoint (App Service, Container Apps). Unset: the VM instance metadata service.",
        readme_name: Some("`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`"),
        ..ROW
    },
    Variable {
        name: "SSL_CERT_FILE",
        default: Default::Text("system bundle"),
        help: "PEM bundle of trusted CAs, replacing the system store (SSL_CERT_DIR: directories of PEM files, in addition)",
        section: Section::Storage,
        readme: "Trusted CAs for every connection. They **replace** the system store.",
        readme_name: Some("`SSL_CERT_FILE` / `SSL_CERT_DIR`"),
        readme_default: Some("the image's bundle"),
    },
    Variable {
        name: "K_CA_CERTS",
        default: Default::None,
        help: "PEM CA certificates trusted for the endpoint only, in addition to the others (Knative)",
        section: Section::Storage,
        readme: "PEM CAs trusted for the endpoint only, in addition to the others (Knative).",
        ..ROW
    },
    Variable {
        name: "ENDPOINT_URL",
        default: Default::Code("$K_SINK"),
        help: "http(s) URL events are POSTed to",
        section: Section::Endpoint,
        readme: "The http(s) URL events are POSTed to. Knative's `K_SINK` is used when unset.",
        ..ROW
    },
    Variable {
        name: "CE_TYPE",
        default: Default::Value(DEFAULT_CE_TYPE),
        help: "CloudEvent type",
        section: Section::Endpoint,
        readme: "CloudEvent `type` (what existing Knative sources for this queue emit, so Trigger filters keep working).",
        ..ROW
    },
    Variable {
        name: "CE_SOURCE",
        default: Default::Text("the queue URL"),
        help: "CloudEvent source",
        section: Section::Endpoint,
        readme: "CloudEvent `source` (never contains a SAS).",
        ..ROW
    },
    Variable {
        name: "CE_MODE",
        default: Default::Value("binary"),
        help: "binary, structured or batched content mode",
        section: Section::Endpoint,
        readme: "`binary` (attributes in `ce-` headers, data as body), `structured` (`application/cloudevents+json`) or `batched` (`application/cloudevents-batch+json`: up to `CE_BATCH_SIZE` structured events per POST, see *Batched mode*).",
        ..ROW
    },
    Variable {
        name: "CE_BATCH_SIZE",
        default: Default::Value("32"),
        help: "CE_MODE=batched: most events per POST, 1-32",
        section: Section::Endpoint,
        readme: "With `CE_MODE=batched`: the most events in one POST, 1–32 (the messages of one receive are split into batches; see *Batched mode*).",
        ..ROW
    },
    Variable {
        name: "CE_BATCH_MAX_BYTES",
        default: Default::Value("1048576"),
        help: "CE_MODE=batched: most bytes per POST body (1024-67108864); a larger single event goes alone",
        section: Section::Endpoint,
        readme: "With `CE_MODE=batched`: the most bytes in one POST body, 1024–67108864 (1 KiB–64 MiB). A single event larger than this is sent alone, as a batch of one.",
        ..ROW
    },
    Variable {
        name: "K_CE_OVERRIDES",
        default: Default::None,
        help: "JSON {\"extensions\":{\"name\":\"value\"}} set on every event (string values; not context attributes or the sidecar's own extensions)",
        section: Section::Endpoint,
        readme: "Knative's `{\"extensions\":{\"name\":\"value\"}}`, set on every event. Names: 1–20 lowercase letters/digits, not a context attribute or one of the sidecar's extensions; values: strings (see *The CloudEvent*).",
        ..ROW
    },
    Variable {
        name: "CE_PASSTHROUGH",
        default: Default::Value("true"),
        help: "forward messages that are CloudEvents as those events (their id, source and type are the producer's); false wraps every message",
        section: Section::Endpoint,
        readme: "Forward a message that is a CloudEvent (or an Event Grid event) as that event: its `id`, `source` and `type` are then the producer's. `false` wraps every message (see *Trust*).",
        ..ROW
    },
    Variable {
        name: "EVENTGRID_SCHEMA",
        default: Default::Value("map"),
        help: "map: Event Grid schema events become the CloudEvent Event Grid would deliver; wrap: they are wrapped as JSON data",
        section: Section::Endpoint,
        readme: "`map`: an Event Grid schema event becomes the CloudEvent Event Grid would deliver (`source` = `topic`, `type` = `eventType`, ...); `wrap`: it is wrapped as JSON data.",
        ..ROW
    },
    Variable {
        name: "DECODE_BASE64",
        default: Default::Value("false"),
        help: "decode message text from base64 first (needed for Event Grid subscriptions, Azure Functions)",
        section: Section::Endpoint,
        readme: "Decode message text from base64 first (what Event Grid, Azure Functions and older SDKs write). Standard and URL-safe alphabets, padded or not.",
        ..ROW
    },
    Variable {
        name: "HTTP_TIMEOUT",
        default: Default::Value("30s"),
        help: "timeout of one POST",
        section: Section::Endpoint,
        readme: "Timeout of one POST.",
        ..ROW
    },
    Variable {
        name: "ENDPOINT_TOKEN_FILE",
        default: Default::Text("Knative's /oidc/token under K_SINK"),
        help: "file holding a bearer token sent to the endpoint as Authorization: Bearer; re-read at most 10s after it changes and at once after a 401",
        section: Section::Endpoint,
        readme: "A file holding a bearer token, sent as `Authorization: Bearer <token>` on every POST and probe (whitespace trimmed). Re-read at most 10 s after it changes (rename or Kubernetes' `..data` swap) and at once after a 401. Unset with `K_SINK` set: Knative's sender identity token `/oidc/token`, if mounted (see *Endpoint authentication*).",
        ..ROW
    },
    Variable {
        name: "ENDPOINT_AUDIENCE",
        default: Default::None,
        help: "send a Microsoft Entra ID token for this audience (scope <audience>/.default) from the queue's workload or managed identity",
        section: Section::Endpoint,
        readme: "Send a Microsoft Entra ID token for this audience (scope `<audience>/.default`), from the queue's workload or managed identity, refreshed before it expires. Not with `ENDPOINT_TOKEN_FILE`.",
        ..ROW
    },
    Variable {
        name: "TRACE_CONTEXT",
        default: Default::Value("on"),
        help: "on: every single-event POST carries W3C traceparent (trace id = message id, or the passed-through event's trace); off: none",
        section: Section::Endpoint,
        readme: "`on`: every single-event POST carries W3C `traceparent` (trace id = the message id, or the trace of a passed-through event's `traceparent`, with its `tracestate`); `off`: none (see *Trace context*).",
        ..ROW
    },
    Variable {
        name: "BATCH_SIZE",
        default: Default::Value("32"),
        help: "messages per receive, 1..32",
        section: Section::Throughput,
        readme: "Messages per Get Messages call, 1–32.",
        ..ROW
    },
    Variable {
        name: "MAX_IN_FLIGHT",
        default: Default::Value("32"),
        help: "POSTs open to the endpoint at once (deletes run on their own budget)",
        section: Section::Throughput,
        readme: "POSTs open to the endpoint at once. Deletes and retry delays after them run on a budget of their own (2 × this), and up to this many more messages may be received ahead while the queue has a backlog (see *Receiving*).",
        ..ROW
    },
    Variable {
        name: "VISIBILITY_TIMEOUT",
        default: Default::Value("30s"),
        help: "lease taken on each received message, 1s..7d; renewed at half-life while a delivery or its delete runs",
        section: Section::Throughput,
        readme: "The lease taken on each received message, 1s–7d. Renewed at half-life while a delivery runs and while its delete is retried.",
        ..ROW
    },
    Variable {
        name: "POLL_MIN_INTERVAL",
        default: Default::Value("100ms"),
        help: "first idle backoff step",
        section: Section::Throughput,
        readme: "First idle backoff step.",
        ..ROW
    },
    Variable {
        name: "POLL_MAX_INTERVAL",
        default: Default::Value("10s"),
        help: "longest idle backoff step (about one Get per interval on an idle queue)",
        section: Section::Throughput,
        readme: "Longest idle backoff step: an idle queue costs about one Get per interval.",
        ..ROW
    },
    Variable {
        name: "RETRY_BASE_DELAY",
        default: Default::Value("1s"),
        help: "delay before the first retry of a failed delivery, at least 100ms; doubles per attempt (with jitter); the queue counts whole seconds",
        section: Section::Retries,
        readme: "Delay before the first retry of a failed delivery, at least `100ms`; doubles per attempt, ±20 % jitter. The queue counts whole seconds: a delay under 1 s waits 1 s.",
        ..ROW
    },
    Variable {
        name: "RETRY_MAX_DELAY",
        default: Default::Value("5m"),
        help: "longest retry delay; also caps an endpoint's Retry-After",
        section: Section::Retries,
        readme: "Longest retry delay; also caps an endpoint's `Retry-After`.",
        ..ROW
    },
    Variable {
        name: "MAX_DEQUEUE_COUNT",
        default: Default::Value("5"),
        help: "poison a message whose attempt fails once the queue's DequeueCount (receives, not only attempts) reaches this; 0 disables poisoning",
        section: Section::Retries,
        readme: "A message whose attempt fails is poisoned once the queue's `DequeueCount` reaches this. The count grows on every receive, not only on attempts (see *What `MAX_DEQUEUE_COUNT` counts*). `0` disables poisoning.",
        ..ROW
    },
    Variable {
        name: "POISON_QUEUE_NAME",
        default: Default::Code("<QUEUE_NAME>-poison"),
        help: "where messages that cannot be delivered are moved",
        section: Section::Retries,
        readme: "Where undeliverable messages go (the Azure Functions convention).",
        ..ROW
    },
    Variable {
        name: "CREATE_POISON_QUEUE",
        default: Default::Value("false"),
        help: "create the poison queue if it is missing (needs the right to create queues)",
        section: Section::Retries,
        readme: "Create the poison queue when it is missing (needs the right to create queues).",
        ..ROW
    },
    Variable {
        name: "SHUTDOWN_TIMEOUT",
        default: Default::Value("20s"),
        help: "on SIGTERM, how long deliveries in progress may finish before their messages are released (a second SIGTERM stops at once)",
        section: Section::Retries,
        readme: "After SIGTERM, how long deliveries in progress may finish before their messages are released; a second SIGTERM stops at once. The sidecar needs up to 5 s + `SHUTDOWN_TIMEOUT` + 10 s to exit: keep the pod's `terminationGracePeriodSeconds` (30 s by default) above that plus the app's own shutdown.",
        ..ROW
    },
    Variable {
        name: "EXIT_WHEN_IDLE",
        default: Default::Text("off"),
        help: "run to completion: once no message was received for this long and nothing is in flight, drain and exit 0 (for Jobs); unset or 0 runs until a signal",
        section: Section::Retries,
        readme: "Run to completion, for Kubernetes Jobs, KEDA `ScaledJob`s and Container Apps jobs: once no message has been received for this long and no delivery is in flight, the sidecar drains as on SIGTERM and exits 0. Unset (or `0`) runs until a signal. Only a successful, empty receive counts as idle: a queue that cannot be reached keeps the sidecar running (and not ready). A message waiting for a retry delay is invisible, so it does not keep the sidecar up; it stays in the queue for the next run. See *Run to completion*.",
        ..ROW
    },
    Variable {
        name: "ADMIN_ADDR",
        default: Default::Value(DEFAULT_ADMIN_ADDR),
        help: "address of the HTTP server for /healthz, /readyz and /metrics; off disables it",
        section: Section::Operations,
        readme: "Address of the HTTP server for `/healthz`, `/readyz` and `/metrics`; `off` disables it. A port already in use stops start-up with exit 1 and a message naming `ADMIN_ADDR`.",
        ..ROW
    },
    Variable {
        name: "QUEUE_LENGTH_INTERVAL",
        default: Default::Value("30s"),
        help: "how often the queue's approximate message count and oldest message's age are read for /metrics; 0 disables",
        section: Section::Operations,
        readme: "How often the queue's approximate message count and the age of its oldest visible message are read for the `queue_approximate_messages` and `queue_oldest_message_age_seconds` gauges; `0` disables both. Minimum 1s.",
        ..ROW
    },
    Variable {
        name: "LOG_FORMAT",
        default: Default::Value("json"),
        help: "json or text",
        section: Section::Operations,
        readme: "`json` (one JSON object per line) or `text`.",
        ..ROW
    },
    Variable {
        name: "LOG_LEVEL",
        default: Default::Value("info"),
        help: "RUST_LOG-style filter, e.g. debug or info,azure_core=debug",
        section: Section::Operations,
        readme: "A `RUST_LOG`-style filter: `debug`, `info,azure_core=debug`, … The Azure SDK's and HTTP stack's own logs are at `warn` unless named explicitly; note that `azure_core=debug` logs queue response URLs, pop receipts included (never keys, SAS signatures or tokens).",
        ..ROW
    },
];

/// The variable named `name`.
pub(crate) fn variable(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| v.name == name)
}

/// The literal default of `name`, for the parser. `None` if the table gives it none (or a
/// description instead): the parser then has no default to use, which is a mistake in the
/// table that the configuration tests catch.
pub(crate) fn default_value(name: &str) -> Option<&'static str> {
    match variable(name)?.default {
        Default::Value(value) => Some(value),
        _ => None,
    }
}

/// The README table of `section` (header included), one row per variable.
#[cfg(test)]
pub(crate) fn readme_table(section: Section) -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for v in VARIABLES.iter().filter(|v| v.section == section) {
        let name = v
            .readme_name
            .map_or_else(|| format!("`{}`", v.name), str::to_string);
        let default = v
            .readme_default
            .map_or_else(|| v.default.readme(), str::to_string);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "| {name} | {default} | {} |", v.readme);
    }
    out
}

/// The line in the README above the table of `section`.
#[cfg(test)]
fn readme_marker(section: Section) -> String {
    format!(
        "<!-- variables: {} (generated from src/config/variables.rs) -->",
        section.marker()
    )
}

/// `readme` with every variable table replaced by what [`readme_table`] renders; an error
/// names a section whose marker is missing.
#[cfg(test)]
fn render_readme(readme: &str) -> Result<String, String> {
    let mut out = readme.to_string();
    for section in Section::ALL {
        let marker = readme_marker(section);
        let start = out
            .find(&marker)
            .ok_or_else(|| format!("README.md has no line {marker}"))?
            + marker.len()
            + 1;
        let table_len = out[start..]
            .split_inclusive('\n')
            .take_while(|line| line.starts_with('|'))
            .map(str::len)
            .sum::<usize>();
        out.replace_range(start..start + table_len, &readme_table(section));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_documented_once_with_a_usable_default() {
        for (index, v) in VARIABLES.iter().enumerate() {
            assert!(!v.help.is_empty() && !v.readme.is_empty(), "{}", v.name);
            assert!(
                VARIABLES[index + 1..]
                    .iter()
                    .all(|other| other.name != v.name),
                "{} twice",
                v.name
            );
            assert!(
                !v.help.contains('\n') && !v.readme.contains('|'),
                "{}",
                v.name
            );
        }
        assert_eq!(default_value("VISIBILITY_TIMEOUT"), Some("30s"));
        assert_eq!(default_value("QUEUE_NAME"), None);
        assert_eq!(default_value("NOT_A_VARIABLE"), None);
    }

    /// The README's variable tables are what the table renders. On a difference, rerun with
    /// `UPDATE_README=1` to rewrite them (then review the diff).
    #[test]
    fn readme_tables_are_generated_from_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let rendered = render_readme(&readme).unwrap_or_else(|e| panic!("{e}"));
        if rendered != readme && std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(&path, &rendered).expect("write README.md");
            return;
        }
        assert!(
            rendered == readme,
            "README.md's variable tables differ from src/config/variables.rs; run `UPDATE_README=1 cargo test --lib readme` and review the diff"
        );
    }
}
