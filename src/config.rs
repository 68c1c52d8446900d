//! Typed configuration, read once from the environment at start.
//!
//! Every knob is an environment variable (the sidecar runs in a pod, where env is the native
//! way to configure a container). [`Config::from_env`] validates everything before any network
//! call, so a broken deployment fails at once with exit status 2 and a single line naming the
//! variable and what it expects, instead of crash-looping on the first request.
//!
//! Secrets (account keys, SAS tokens) are held in [`Secret`]s and never appear in errors or in
//! the `Debug` output of this module's types.

use crate::auth::connection_string::{self, ConnectionString};
use crate::auth::entra;
use crate::auth::Credential;
use azure_core::credentials::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use url::Url;

/// Where the Azure Storage emulator listens when `UseDevelopmentStorage=true` is used.
pub const DEFAULT_CE_TYPE: &str = "com.microsoft.azure.queuestorage";

/// Service limits that bound the configuration (Azure Queue Storage REST reference).
const MAX_BATCH_SIZE: u32 = 32;
const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest delay before a retry: the smallest `RETRY_BASE_DELAY` accepted, and the floor
/// of every retry delay (an endpoint's `Retry-After: 0` included).
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_IN_FLIGHT_LIMIT: usize = 4096;

/// A configuration mistake: which variable, and what was expected of it.
///
/// Its `Display` is the one line printed before exiting with status 2. It never contains the
/// value of a secret variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {expected}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What the variable should hold, in words a user can act on.
    pub expected: String,
}

impl ConfigError {
    fn new(variable: &'static str, expected: impl Into<String>) -> Self {
        Self {
            variable,
            expected: expected.into(),
        }
    }
}

/// How a CloudEvent is laid out in the HTTP request (CloudEvents HTTP binding 1.0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// Attributes as `ce-*` headers, the data as the body.
    Binary,
    /// The whole event as one `application/cloudevents+json` document.
    Structured,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The storage account side: which queue, where, and how to authenticate.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The queue's URL, e.g. `https://acct.queue.core.windows.net/orders`. Never carries a SAS.
    pub queue_url: Url,
    /// The queue's name (also the last path segment of `queue_url`).
    pub queue_name: String,
    /// How requests are authorized.
    pub credential: Credential,
}

/// How queue messages become CloudEvents.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// The CloudEvent `type` of wrapped messages.
    pub ce_type: String,
    /// The CloudEvent `source` of wrapped messages.
    pub source: String,
    /// Binary or structured content mode.
    pub mode: ContentMode,
    /// Extensions added to every event (Knative's `K_CE_OVERRIDES`).
    pub overrides: BTreeMap<String, String>,
    /// Whether message text is base64 that must be decoded first.
    pub decode_base64: bool,
    /// Whether messages that are CloudEvents (or Event Grid events) are forwarded as those
    /// events (`CE_PASSTHROUGH`); when false every message is wrapped.
    pub passthrough: bool,
    /// What to do with Event Grid schema events (`EVENTGRID_SCHEMA`).
    pub event_grid: EventGridSchema,
}

/// What becomes of a message in the Event Grid event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventGridSchema {
    /// Mapped to the CloudEvent Event Grid itself would deliver (`id`, `source` = `topic`,
    /// `type` = `eventType`, ...).
    Map,
    /// Wrapped as JSON data, like any other JSON message.
    Wrap,
}

/// Idle polling bounds.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    pub min_interval: Duration,
    pub max_interval: Duration,
}

/// What happens to a message whose delivery failed.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Delay before the first retry; doubles with every attempt.
    pub base_delay: Duration,
    /// The longest retry delay (also the cap on an endpoint's `Retry-After`).
    pub max_delay: Duration,
    /// Attempts before a message goes to the poison queue; 0 never poisons.
    pub max_dequeue_count: u32,
    /// Where poisoned messages go.
    pub poison_queue_url: Url,
    pub poison_queue_name: String,
    /// Whether the sidecar may create the poison queue if it is missing.
    pub create_poison_queue: bool,
}

/// Logging setup.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter.
    pub filter: String,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageConfig,
    /// Where events are POSTed.
    pub endpoint: Url,
    pub event: EventConfig,
    /// Messages asked for per Get Messages call (1..=32).
    pub batch_size: u32,
    /// Deliveries running at once.
    pub max_in_flight: usize,
    /// The lease taken on each received message.
    pub visibility_timeout: Duration,
    pub poll: PollConfig,
    /// Per-POST timeout.
    pub http_timeout: Duration,
    pub retry: RetryConfig,
    /// How long deliveries in progress may run on after SIGTERM.
    pub shutdown_timeout: Duration,
    pub log: LogConfig,
    /// The admin server (probes, metrics) and queue-length polling.
    pub ops: OpsConfig,
}

/// One documented environment variable: its name, default and meaning. `--help` prints this
/// table and the README mirrors it, so the two cannot drift apart silently.
pub struct VariableDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every variable the sidecar reads.
pub const VARIABLES: &[VariableDoc] = &[
    VariableDoc {
        name: "AZURE_STORAGE_CONNECTION_STRING",
        default: "-",
        meaning: "storage connection string (AccountName/AccountKey, SharedAccessSignature, QueueEndpoint, EndpointSuffix, DefaultEndpointsProtocol, UseDevelopmentStorage=true)",
    },
    VariableDoc {
        name: "AZURE_STORAGE_ACCOUNT",
        default: "-",
        meaning: "storage account name (instead of a connection string)",
    },
    VariableDoc {
        name: "AZURE_STORAGE_KEY",
        default: "-",
        meaning: "account key, with AZURE_STORAGE_ACCOUNT",
    },
    VariableDoc {
        name: "AZURE_STORAGE_SAS_TOKEN",
        default: "-",
        meaning: "SAS token (needs the 'p' permission), with AZURE_STORAGE_ACCOUNT or AZURE_STORAGE_QUEUE_ENDPOINT",
    },
    VariableDoc {
        name: "AZURE_STORAGE_QUEUE_ENDPOINT",
        default: "https://<account>.queue.core.windows.net",
        meaning: "queue service URL (Azurite: http://127.0.0.1:10001/devstoreaccount1)",
    },
    VariableDoc {
        name: "AZURE_STORAGE_ALLOW_HTTP",
        default: "false",
        meaning: "allow an account key or SAS over plain http to a host that is not loopback (e.g. Azurite in a cluster)",
    },
    VariableDoc {
        name: "AZURE_STORAGE_AUTH",
        default: "automatic",
        meaning: "force key, sas, workload-identity or managed-identity (automatic: a key or SAS if given, else workload identity if AZURE_FEDERATED_TOKEN_FILE is set, else managed identity)",
    },
    VariableDoc {
        name: "AZURE_FEDERATED_TOKEN_FILE",
        default: "-",
        meaning: "workload identity: the projected service account token, re-read at every token request (set by the AKS webhook)",
    },
    VariableDoc {
        name: "AZURE_CLIENT_ID",
        default: "-",
        meaning: "workload identity: the application (client) ID; managed identity: selects a user-assigned identity",
    },
    VariableDoc {
        name: "AZURE_TENANT_ID",
        default: "-",
        meaning: "workload identity: the Microsoft Entra tenant ID",
    },
    VariableDoc {
        name: "AZURE_AUTHORITY_HOST",
        default: "https://login.microsoftonline.com",
        meaning: "workload identity: the https token authority (sovereign clouds)",
    },
    VariableDoc {
        name: "IDENTITY_ENDPOINT",
        default: "IMDS",
        meaning: "managed identity endpoint with IDENTITY_HEADER (App Service, Container Apps); unset: the VM instance metadata service",
    },
    VariableDoc {
        name: "SSL_CERT_FILE",
        default: "system bundle",
        meaning: "PEM bundle of trusted CAs, replacing the system store (SSL_CERT_DIR: directories of PEM files, in addition)",
    },
    VariableDoc {
        name: "K_CA_CERTS",
        default: "-",
        meaning: "PEM CA certificates trusted for the endpoint only, in addition to the others (Knative)",
    },
    VariableDoc {
        name: "QUEUE_NAME",
        default: "required",
        meaning: "the queue to consume (never created by the sidecar)",
    },
    VariableDoc {
        name: "ENDPOINT_URL",
        default: "$K_SINK",
        meaning: "http(s) URL events are POSTed to",
    },
    VariableDoc {
        name: "CE_TYPE",
        default: DEFAULT_CE_TYPE,
        meaning: "CloudEvent type",
    },
    VariableDoc {
        name: "CE_SOURCE",
        default: "the queue URL",
        meaning: "CloudEvent source",
    },
    VariableDoc {
        name: "CE_MODE",
        default: "binary",
        meaning: "binary or structured content mode",
    },
    VariableDoc {
        name: "K_CE_OVERRIDES",
        default: "-",
        meaning: "JSON {\"extensions\":{\"name\":\"value\"}} set on every event (string values; not context attributes or the sidecar's own extensions)",
    },
    VariableDoc {
        name: "CE_PASSTHROUGH",
        default: "true",
        meaning: "forward messages that are CloudEvents as those events (their id, source and type are the producer's); false wraps every message",
    },
    VariableDoc {
        name: "EVENTGRID_SCHEMA",
        default: "map",
        meaning: "map: Event Grid schema events become the CloudEvent Event Grid would deliver; wrap: they are wrapped as JSON data",
    },
    VariableDoc {
        name: "DECODE_BASE64",
        default: "false",
        meaning: "decode message text from base64 first (needed for Event Grid subscriptions, Azure Functions)",
    },
    VariableDoc {
        name: "BATCH_SIZE",
        default: "32",
        meaning: "messages per receive, 1..32",
    },
    VariableDoc {
        name: "MAX_IN_FLIGHT",
        default: "32",
        meaning: "concurrent deliveries",
    },
    VariableDoc {
        name: "VISIBILITY_TIMEOUT",
        default: "30s",
        meaning: "lease taken on each received message, 1s..7d; renewed at half-life while a delivery or its delete runs",
    },
    VariableDoc {
        name: "POLL_MIN_INTERVAL",
        default: "100ms",
        meaning: "first idle backoff step",
    },
    VariableDoc {
        name: "POLL_MAX_INTERVAL",
        default: "10s",
        meaning: "longest idle backoff step (about one Get per interval on an idle queue)",
    },
    VariableDoc {
        name: "HTTP_TIMEOUT",
        default: "30s",
        meaning: "timeout of one POST",
    },
    VariableDoc {
        name: "RETRY_BASE_DELAY",
        default: "1s",
        meaning: "delay before the first retry of a failed delivery, at least 100ms; doubles per attempt (with jitter); the queue counts whole seconds",
    },
    VariableDoc {
        name: "RETRY_MAX_DELAY",
        default: "5m",
        meaning: "longest retry delay; also caps an endpoint's Retry-After",
    },
    VariableDoc {
        name: "MAX_DEQUEUE_COUNT",
        default: "5",
        meaning: "poison a message whose attempt fails once the queue's DequeueCount (receives, not only attempts) reaches this; 0 disables poisoning",
    },
    VariableDoc {
        name: "POISON_QUEUE_NAME",
        default: "<QUEUE_NAME>-poison",
        meaning: "where messages that cannot be delivered are moved",
    },
    VariableDoc {
        name: "CREATE_POISON_QUEUE",
        default: "false",
        meaning: "create the poison queue if it is missing (needs the right to create queues)",
    },
    VariableDoc {
        name: "SHUTDOWN_TIMEOUT",
        default: "20s",
        meaning: "on SIGTERM, how long deliveries in progress may finish before their messages are released (a second SIGTERM stops at once)",
    },
    VariableDoc {
        name: "LOG_FORMAT",
        default: "json",
        meaning: "json or text",
    },
    VariableDoc {
        name: "LOG_LEVEL",
        default: "info",
        meaning: "RUST_LOG-style filter, e.g. debug or info,azure_core=debug",
    },
    VariableDoc {
        name: "ADMIN_ADDR",
        default: DEFAULT_ADMIN_ADDR,
        meaning: "address of the HTTP server for /healthz, /readyz and /metrics; off disables it",
    },
    VariableDoc {
        name: "QUEUE_LENGTH_INTERVAL",
        default: "30s",
        meaning: "how often the queue's approximate message count is read for /metrics; 0 disables",
    },
];

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates a configuration from any variable source (tests pass a map).
    ///
    /// Variables set to the empty string count as unset: Kubernetes manifests and shells make
    /// empty values easy to produce by accident, and treating them as values gives baffling
    /// errors.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String> + 'static,
    ) -> Result<Self, ConfigError> {
        let env = Env(Box::new(move |name| {
            lookup(name).filter(|value| !value.trim().is_empty())
        }));

        let queue_name = env.get("QUEUE_NAME").ok_or_else(|| {
            ConfigError::new(
                "QUEUE_NAME",
                "not set; expected the name of the queue to consume",
            )
        })?;
        validate_queue_name(&queue_name)?;
        let storage = storage_config(&env, queue_name)?;
        let endpoint = endpoint(&env)?;
        crate::trust::validate(&|name: &str| env.get(name))?;
        let event = event_config(&env, &storage)?;

        let batch_size = env.parse_range("BATCH_SIZE", 32, 1, MAX_BATCH_SIZE)?;
        let max_in_flight = env.parse_range("MAX_IN_FLIGHT", 32, 1, MAX_IN_FLIGHT_LIMIT)?;

        let visibility_timeout = env.duration("VISIBILITY_TIMEOUT", Duration::from_secs(30))?;
        if visibility_timeout < Duration::from_secs(1)
            || visibility_timeout > MAX_VISIBILITY_TIMEOUT
        {
            return Err(ConfigError::new(
                "VISIBILITY_TIMEOUT",
                "expected a duration from 1s to 7d (the queue service's limits)",
            ));
        }

        let poll = PollConfig {
            min_interval: env.duration("POLL_MIN_INTERVAL", Duration::from_millis(100))?,
            max_interval: env.duration("POLL_MAX_INTERVAL", Duration::from_secs(10))?,
        };
        if poll.min_interval.is_zero() {
            return Err(ConfigError::new(
                "POLL_MIN_INTERVAL",
                "expected a duration above zero, e.g. 100ms",
            ));
        }
        if poll.max_interval < poll.min_interval {
            return Err(ConfigError::new(
                "POLL_MAX_INTERVAL",
                format!(
                    "expected a duration at least POLL_MIN_INTERVAL ({})",
                    format_duration(poll.min_interval)
                ),
            ));
        }

        let http_timeout = env.duration("HTTP_TIMEOUT", Duration::from_secs(30))?;
        if http_timeout.is_zero() {
            return Err(ConfigError::new(
                "HTTP_TIMEOUT",
                "expected a duration above zero, e.g. 30s",
            ));
        }

        let retry = retry_config(&env, &storage)?;
        let shutdown_timeout = env.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(20))?;

        let log = log_config(&env)?;
        let ops = ops_config(&env)?;

        Ok(Config {
            storage,
            endpoint,
            event,
            batch_size,
            max_in_flight,
            visibility_timeout,
            poll,
            http_timeout,
            retry,
            shutdown_timeout,
            log,
            ops,
        })
    }
}

/// A source of variable values by name.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// The variable source, with empty values already filtered out.
struct Env(Lookup);

impl Env {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name)
            .map(|value| Secret::new(value.trim().to_string()))
    }

    fn parse_range<T>(
        &self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(ConfigError::new(
                name,
                format!("expected a whole number from {min} to {max}, got {:?}", raw),
            )),
        }
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse_duration(&raw).ok_or_else(|| {
                ConfigError::new(
                    name,
                    format!("expected a duration such as 500ms, 30s, 5m, 1h or 7d, got {raw:?}"),
                )
            }),
        }
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some(v)
                if v.eq_ignore_ascii_case("true") || v == "1" || v.eq_ignore_ascii_case("yes") =>
            {
                Ok(true)
            }
            Some(v)
                if v.eq_ignore_ascii_case("false") || v == "0" || v.eq_ignore_ascii_case("no") =>
            {
                Ok(false)
            }
            Some(v) => Err(ConfigError::new(
                name,
                format!("expected true or false, got {v:?}"),
            )),
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `7d` (a whole number and a unit; no unit is refused,
/// because a bare `30` is ambiguous between seconds and milliseconds).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Formats a duration the way the configuration accepts it.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1_000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

/// Queue names: 3-63 characters, lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit (Azure's naming rules). Checked here so a typo fails at start.
fn validate_queue_name(name: &str) -> Result<(), ConfigError> {
    check_queue_name("QUEUE_NAME", name)
}

fn check_queue_name(variable: &'static str, name: &str) -> Result<(), ConfigError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid = (3..=63).contains(&name.len())
        && valid_chars
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            variable,
            format!(
                "expected 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit, got {name:?}"
            ),
        ))
    }
}

/// Resolves the account, endpoint and credential from either the connection string or the
/// az-CLI-style variables. Two sources at once is an error: silently preferring one would hide
/// a stale Secret.
///
/// Selection: a key or SAS (in the connection string or the variables) wins; with neither, an
/// account or endpoint means a Microsoft Entra ID identity — workload identity if
/// `AZURE_FEDERATED_TOKEN_FILE` is set, a managed identity otherwise. `AZURE_STORAGE_AUTH`
/// forces one of the four and names whatever input it lacks.
fn storage_config(env: &Env, queue_name: String) -> Result<StorageConfig, ConfigError> {
    const CS: &str = "AZURE_STORAGE_CONNECTION_STRING";
    let mode = env
        .get(entra::AUTH_VARIABLE)
        .map(|raw| entra::AuthMode::parse(&raw))
        .transpose()?;
    let connection_string = env.get(CS);
    let account = env
        .get("AZURE_STORAGE_ACCOUNT")
        .map(|a| a.trim().to_string());
    let key = env.secret("AZURE_STORAGE_KEY");
    let sas = env.secret("AZURE_STORAGE_SAS_TOKEN");
    let endpoint_override = env
        .get("AZURE_STORAGE_QUEUE_ENDPOINT")
        .map(|raw| parse_service_url(&raw))
        .transpose()?;

    // Where the service URL comes from, for the plain-http rule below.
    let endpoint_variable = match (&endpoint_override, &connection_string) {
        (Some(_), _) => "AZURE_STORAGE_QUEUE_ENDPOINT",
        (None, Some(_)) => CS,
        (None, None) => "AZURE_STORAGE_ACCOUNT",
    };
    let allow_http = env.flag(ALLOW_HTTP, false)?;

    let no_secret = connection_string.is_none() && key.is_none() && sas.is_none();
    let identity_wanted = match mode {
        Some(mode) => mode.is_identity(),
        None => {
            no_secret
                && (account.is_some()
                    || endpoint_override.is_some()
                    || env.get("AZURE_FEDERATED_TOKEN_FILE").is_some())
        }
    };
    let (service_url, credential) = if identity_wanted {
        // A forced identity with a secret still configured: refuse, so a stale key or SAS
        // cannot linger unnoticed next to the identity that replaced it.
        let leftover = [
            (CS, connection_string.is_some()),
            ("AZURE_STORAGE_KEY", key.is_some()),
            ("AZURE_STORAGE_SAS_TOKEN", sas.is_some()),
        ];
        if let Some((variable, _)) = leftover.into_iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                variable,
                format!(
                    "is set, but {}={} does not use it; remove it",
                    entra::AUTH_VARIABLE,
                    mode.map_or("", entra::AuthMode::as_str)
                ),
            ));
        }
        let identity = entra::identity_from_env(&|name: &str| env.get(name), mode)?;
        let service_url = match (endpoint_override, account) {
            (Some(url), _) if url.scheme() != "https" => {
                return Err(ConfigError::new(
                    "AZURE_STORAGE_QUEUE_ENDPOINT",
                    format!(
                        "expected an https URL: {} tokens are only sent over TLS",
                        identity.kind()
                    ),
                ))
            }
            (Some(url), _) => url,
            (None, Some(account)) => {
                validate_account_name(&account)?;
                parse_service_url(&format!("https://{account}.queue.core.windows.net"))?
            }
            (None, None) => {
                let kind = identity.kind();
                return Err(ConfigError::new(
                    "AZURE_STORAGE_ACCOUNT",
                    format!(
                        "not set; {kind} needs the account name, or AZURE_STORAGE_QUEUE_ENDPOINT"
                    ),
                ));
            }
        };
        (service_url, Credential::token(identity))
    } else if let Some(raw) = connection_string {
        if account.is_some() || key.is_some() || sas.is_some() {
            return Err(ConfigError::new(
                CS,
                "conflicts with AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY/AZURE_STORAGE_SAS_TOKEN; set only one credential source",
            ));
        }
        let parsed: ConnectionString =
            connection_string::parse(&raw).map_err(|e| ConfigError::new(CS, e.to_string()))?;
        let credential = match (
            parsed.account_name,
            parsed.account_key,
            parsed.shared_access_signature,
        ) {
            (Some(account), Some(key), None) => Credential::shared_key(account, key)
                .map_err(|e| ConfigError::new(CS, e.to_string()))?,
            (_, None, Some(sas)) => {
                Credential::sas(sas).map_err(|e| ConfigError::new(CS, e.to_string()))?
            }
            _ => {
                return Err(ConfigError::new(
                    CS,
                    "expected AccountName with AccountKey, or SharedAccessSignature",
                ))
            }
        };
        entra::check_forced_secret(mode, matches!(credential, Credential::Sas(_)), true)?;
        (
            endpoint_override.unwrap_or(parsed.queue_endpoint),
            credential,
        )
    } else {
        let credential = match (key, sas) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "AZURE_STORAGE_KEY",
                    "conflicts with AZURE_STORAGE_SAS_TOKEN; set only one of them",
                ))
            }
            (Some(key), None) => {
                let account = account.clone().ok_or_else(|| {
                    ConfigError::new("AZURE_STORAGE_ACCOUNT", "not set; the account key needs the account name")
                })?;
                Credential::shared_key(account, key)
                    .map_err(|e| ConfigError::new("AZURE_STORAGE_KEY", e.to_string()))?
            }
            (None, Some(sas)) => {
                Credential::sas(sas).map_err(|e| ConfigError::new("AZURE_STORAGE_SAS_TOKEN", e.to_string()))?
            }
            (None, None) => {
                return Err(match mode {
                    Some(entra::AuthMode::Key) => ConfigError::new(
                        "AZURE_STORAGE_KEY",
                        "not set; AZURE_STORAGE_AUTH=key needs it (with AZURE_STORAGE_ACCOUNT), or AccountKey in AZURE_STORAGE_CONNECTION_STRING",
                    ),
                    Some(_) => ConfigError::new(
                        "AZURE_STORAGE_SAS_TOKEN",
                        "not set; AZURE_STORAGE_AUTH=sas needs it, or SharedAccessSignature in AZURE_STORAGE_CONNECTION_STRING",
                    ),
                    None => ConfigError::new(
                        CS,
                        "not set; set it, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_ACCOUNT alone for a workload or managed identity",
                    ),
                })
            }
        };
        entra::check_forced_secret(mode, matches!(credential, Credential::Sas(_)), false)?;
        let service_url =
            match (endpoint_override, account) {
                (Some(url), _) => url,
                (None, Some(account)) => {
                    validate_account_name(&account)?;
                    parse_service_url(&format!("https://{account}.queue.core.windows.net"))?
                }
                (None, None) => return Err(ConfigError::new(
                    "AZURE_STORAGE_ACCOUNT",
                    "not set; expected the storage account name, or AZURE_STORAGE_QUEUE_ENDPOINT",
                )),
            };
        (service_url, credential)
    };

    let sends_secret = matches!(
        credential,
        Credential::SharedKey { .. } | Credential::Sas(_)
    );
    if sends_secret && service_url.scheme() == "http" && !allow_http && !is_loopback(&service_url) {
        return Err(ConfigError::new(
            endpoint_variable,
            format!(
                "expected an https URL: a SAS token or account-key signatures are sent over plain http only to loopback (Azurite on 127.0.0.1/localhost); set {ALLOW_HTTP}=true to send them unencrypted to {}",
                service_url.host_str().unwrap_or_default()
            ),
        ));
    }

    let queue_url = queue_url(&service_url, &queue_name);
    Ok(StorageConfig {
        queue_url,
        queue_name,
        credential,
    })
}

/// The variable that lets a key or SAS travel over plain http to a remote host.
const ALLOW_HTTP: &str = "AZURE_STORAGE_ALLOW_HTTP";

/// Whether the URL's host is this machine: `localhost` (and `*.localhost`, RFC 6761) or a
/// loopback address. Plain http there never leaves the host (or the pod).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

fn validate_account_name(account: &str) -> Result<(), ConfigError> {
    let valid = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            "AZURE_STORAGE_ACCOUNT",
            "expected 3-24 lowercase letters and digits",
        ))
    }
}

/// Parses a queue service URL. A query string is refused: a SAS pasted into the endpoint would
/// end up in logs and in the CloudEvent `source`.
fn parse_service_url(raw: &str) -> Result<Url, ConfigError> {
    const VAR: &str = "AZURE_STORAGE_QUEUE_ENDPOINT";
    let url = Url::parse(raw.trim()).map_err(|_| {
        ConfigError::new(
            VAR,
            "expected an http(s) URL such as https://acct.queue.core.windows.net",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            VAR,
            "expected an http(s) URL such as https://acct.queue.core.windows.net",
        ));
    }
    if url.query().is_some() {
        return Err(ConfigError::new(
            VAR,
            "must not carry a query; put a SAS token in AZURE_STORAGE_SAS_TOKEN",
        ));
    }
    Ok(url)
}

/// `service/` + queue name, keeping any path prefix (Azurite's path-style `/devstoreaccount1`).
fn queue_url(service: &Url, queue_name: &str) -> Url {
    let mut url = service.clone();
    let path = format!("{}/{}", service.path().trim_end_matches('/'), queue_name);
    url.set_path(&path);
    url.set_fragment(None);
    url
}

fn retry_config(env: &Env, storage: &StorageConfig) -> Result<RetryConfig, ConfigError> {
    let base_delay = env.duration("RETRY_BASE_DELAY", Duration::from_secs(1))?;
    if base_delay < MIN_RETRY_DELAY {
        // A shorter delay would let MAX_DEQUEUE_COUNT=0 spin on a failing message.
        return Err(ConfigError::new(
            "RETRY_BASE_DELAY",
            "expected a duration of at least 100ms (retry delays are whole seconds at the queue: anything under 1s waits 1s)",
        ));
    }
    let max_delay = env.duration("RETRY_MAX_DELAY", Duration::from_secs(300))?;
    if max_delay > MAX_VISIBILITY_TIMEOUT {
        return Err(ConfigError::new(
            "RETRY_MAX_DELAY",
            "expected at most 7d (the queue service's limit)",
        ));
    }
    if max_delay < base_delay {
        return Err(ConfigError::new(
            "RETRY_MAX_DELAY",
            format!(
                "expected at least RETRY_BASE_DELAY ({})",
                format_duration(base_delay)
            ),
        ));
    }
    let max_dequeue_count = env.parse_range("MAX_DEQUEUE_COUNT", 5, 0, 1_000_000)?;
    let poison_queue_name = match env.get("POISON_QUEUE_NAME") {
        Some(name) => {
            let name = name.trim().to_string();
            check_queue_name("POISON_QUEUE_NAME", &name)?;
            name
        }
        None => {
            let name = format!("{}-poison", storage.queue_name);
            check_queue_name("POISON_QUEUE_NAME", &name).map_err(|_| {
                ConfigError::new(
                    "POISON_QUEUE_NAME",
                    format!(
                        "the default {name:?} is longer than 63 characters; set a shorter name"
                    ),
                )
            })?;
            name
        }
    };
    if poison_queue_name == storage.queue_name {
        return Err(ConfigError::new(
            "POISON_QUEUE_NAME",
            "must differ from QUEUE_NAME",
        ));
    }
    let mut poison_queue_url = storage.queue_url.clone();
    if let Ok(mut segments) = poison_queue_url.path_segments_mut() {
        segments.pop().push(&poison_queue_name);
    }
    Ok(RetryConfig {
        base_delay,
        max_delay,
        max_dequeue_count,
        poison_queue_url,
        poison_queue_name,
        create_poison_queue: env.flag("CREATE_POISON_QUEUE", false)?,
    })
}

fn endpoint(env: &Env) -> Result<Url, ConfigError> {
    let (variable, raw) = match (env.get("ENDPOINT_URL"), env.get("K_SINK")) {
        (Some(raw), _) => ("ENDPOINT_URL", raw),
        (None, Some(raw)) => ("K_SINK", raw),
        (None, None) => {
            return Err(ConfigError::new(
                "ENDPOINT_URL",
                "not set; expected the http(s) URL to POST events to (or Knative's K_SINK)",
            ))
        }
    };
    match Url::parse(raw.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url),
        _ => Err(ConfigError::new(
            variable,
            format!(
                "expected an http(s) URL such as http://127.0.0.1:8080/events, got {}",
                crate::redact::url_text(&raw)
            ),
        )),
    }
}

fn event_config(env: &Env, storage: &StorageConfig) -> Result<EventConfig, ConfigError> {
    let mode = match env.get("CE_MODE").as_deref().map(str::trim) {
        None => ContentMode::Binary,
        Some(m) if m.eq_ignore_ascii_case("binary") => ContentMode::Binary,
        Some(m) if m.eq_ignore_ascii_case("structured") => ContentMode::Structured,
        Some(m) => {
            return Err(ConfigError::new(
                "CE_MODE",
                format!("expected binary or structured, got {m:?}"),
            ))
        }
    };
    let overrides = match env.get("K_CE_OVERRIDES") {
        None => BTreeMap::new(),
        Some(raw) => parse_overrides(&raw)?,
    };
    let event_grid = match env.get("EVENTGRID_SCHEMA").as_deref().map(str::trim) {
        None => EventGridSchema::Map,
        Some(v) if v.eq_ignore_ascii_case("map") => EventGridSchema::Map,
        Some(v) if v.eq_ignore_ascii_case("wrap") => EventGridSchema::Wrap,
        Some(v) => {
            return Err(ConfigError::new(
                "EVENTGRID_SCHEMA",
                format!("expected map or wrap, got {v:?}"),
            ))
        }
    };
    Ok(EventConfig {
        ce_type: env
            .get("CE_TYPE")
            .unwrap_or_else(|| DEFAULT_CE_TYPE.to_string()),
        source: env
            .get("CE_SOURCE")
            .unwrap_or_else(|| storage.queue_url.to_string()),
        mode,
        overrides,
        decode_base64: env.flag("DECODE_BASE64", false)?,
        passthrough: env.flag("CE_PASSTHROUGH", true)?,
        event_grid,
    })
}

/// Knative's `K_CE_OVERRIDES`: `{"extensions": {"name": "value", ...}}`. Names must be valid
/// CloudEvents attribute names (lowercase letters and digits) or receivers reject the event,
/// and may not be context attributes or the sidecar's own extensions: an override `id` would
/// give every event the same id (and a second `"id"` member), one named `dequeuecount` would
/// lie about the delivery. Values must be strings, as in Knative.
fn parse_overrides(raw: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    use crate::event::{CONTEXT_ATTRIBUTES, EVENT_GRID_EXTENSIONS, QUEUE_EXTENSIONS};
    const VAR: &str = "K_CE_OVERRIDES";
    let expected = || {
        ConfigError::new(
            VAR,
            "expected JSON like {\"extensions\":{\"name\":\"value\"}}",
        )
    };
    let value: serde_json::Value = serde_json::from_str(raw).map_err(|_| expected())?;
    let Some(object) = value.as_object() else {
        return Err(expected());
    };
    if let Some(unknown) = object.keys().find(|key| *key != "extensions") {
        return Err(ConfigError::new(
            VAR,
            format!(
                "unknown member {:?}; expected JSON like {{\"extensions\":{{\"name\":\"value\"}}}}",
                shorten(unknown)
            ),
        ));
    }
    let mut overrides = BTreeMap::new();
    let Some(extensions) = object.get("extensions") else {
        return Ok(overrides);
    };
    let extensions = extensions.as_object().ok_or_else(expected)?;
    for (name, value) in extensions {
        if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            return Err(ConfigError::new(
                VAR,
                format!("{name:?} is a CloudEvents context attribute, not an extension; it cannot be overridden"),
            ));
        }
        if QUEUE_EXTENSIONS.contains(&name.as_str())
            || EVENT_GRID_EXTENSIONS.contains(&name.as_str())
        {
            return Err(ConfigError::new(
                VAR,
                format!("{name:?} is an extension the sidecar sets itself; choose another name"),
            ));
        }
        if !crate::event::is_attribute_name(name) || name.len() > 20 {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "extension name {:?} must be 1-20 lowercase letters or digits",
                    shorten(name)
                ),
            ));
        }
        let serde_json::Value::String(value) = value else {
            return Err(ConfigError::new(
                VAR,
                format!("extension {name:?} must have a string value, e.g. \"2\" rather than 2"),
            ));
        };
        overrides.insert(name.clone(), value.clone());
    }
    Ok(overrides)
}

/// At most 40 characters of `text`, for error messages about values a user typed.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn log_config(env: &Env) -> Result<LogConfig, ConfigError> {
    let format = match env.get("LOG_FORMAT").as_deref().map(str::trim) {
        None => LogFormat::Json,
        Some(f) if f.eq_ignore_ascii_case("json") => LogFormat::Json,
        Some(f) if f.eq_ignore_ascii_case("text") => LogFormat::Text,
        Some(f) => {
            return Err(ConfigError::new(
                "LOG_FORMAT",
                format!("expected json or text, got {f:?}"),
            ))
        }
    };
    let filter = env.get("LOG_LEVEL").unwrap_or_else(|| "info".to_string());
    crate::telemetry::validate_filter(&filter)
        .map_err(|reason| ConfigError::new("LOG_LEVEL", reason))?;
    Ok(LogConfig { format, filter })
}

/// Where the admin server listens unless `ADMIN_ADDR` says otherwise: all interfaces, so the
/// kubelet and Prometheus can reach it; 9464 is the port OpenTelemetry's Prometheus exporter
/// uses, so dashboards and scrape configs that expect an exporter there keep working.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9464";
/// The shortest queue-length polling interval: the count is approximate and cached by the
/// service, and every call is billed.
const MIN_QUEUE_LENGTH_INTERVAL: Duration = Duration::from_secs(1);

/// Operability: the admin HTTP server and queue-length polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None` when `ADMIN_ADDR=off`.
    pub admin_addr: Option<SocketAddr>,
    /// How often the approximate message count is read; `None` when disabled.
    pub queue_length_interval: Option<Duration>,
}

fn ops_config(env: &Env) -> Result<OpsConfig, ConfigError> {
    let admin_addr = parse_admin_addr(env.get("ADMIN_ADDR").as_deref())?;
    const QLI: &str = "QUEUE_LENGTH_INTERVAL";
    let queue_length_interval = match env.get(QLI).as_deref().map(str::trim) {
        // A bare `0` is accepted here (unlike other durations): "zero disables" is unambiguous.
        Some("0") => None,
        _ => match env.duration(QLI, Duration::from_secs(30))? {
            interval if interval.is_zero() => None,
            interval if interval < MIN_QUEUE_LENGTH_INTERVAL => {
                return Err(ConfigError::new(
                    QLI,
                    "expected 0 (disabled) or a duration of at least 1s, e.g. 30s",
                ))
            }
            interval => Some(interval),
        },
    };
    Ok(OpsConfig {
        admin_addr,
        queue_length_interval,
    })
}

/// Parses `ADMIN_ADDR` (unset means [`DEFAULT_ADMIN_ADDR`]). Public because the `healthcheck`
/// command reads this one variable without validating the whole configuration.
pub fn parse_admin_addr(raw: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    let raw = raw.map(str::trim).filter(|raw| !raw.is_empty());
    match raw {
        Some(off) if off.eq_ignore_ascii_case("off") => Ok(None),
        _ => {
            let raw = raw.unwrap_or(DEFAULT_ADMIN_ADDR);
            raw.parse::<SocketAddr>().map(Some).map_err(|_| {
                ConfigError::new(
                    "ADMIN_ADDR",
                    format!("expected an address and port such as 0.0.0.0:9464 or [::]:9464, or off, got {raw:?}"),
                )
            })
        }
    }
}

#[cfg(test)]
mod ops_tests {
    use super::*;

    fn ops(vars: &[(&'static str, &'static str)]) -> Result<OpsConfig, ConfigError> {
        let mut all = vec![
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://127.0.0.1:8080/"),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                "UseDevelopmentStorage=true",
            ),
        ];
        all.extend_from_slice(vars);
        Config::from_lookup(move |name| {
            all.iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .map(|config| config.ops)
    }

    fn ops_ok(vars: &[(&'static str, &'static str)]) -> OpsConfig {
        ops(vars).expect("valid")
    }

    #[test]
    fn defaults_serve_on_9464_and_poll_every_30s() {
        let ops = ops(&[]).expect("valid");
        assert_eq!(ops.admin_addr, Some(([0, 0, 0, 0], 9464).into()));
        assert_eq!(ops.queue_length_interval, Some(Duration::from_secs(30)));
    }

    #[test]
    fn both_can_be_turned_off() {
        let ops = ops(&[("ADMIN_ADDR", "OFF"), ("QUEUE_LENGTH_INTERVAL", "0")]).expect("valid");
        assert_eq!(ops.admin_addr, None);
        assert_eq!(ops.queue_length_interval, None);
        let ops = ops_ok(&[("QUEUE_LENGTH_INTERVAL", "0s")]);
        assert_eq!(ops.queue_length_interval, None);
    }

    #[test]
    fn addresses_and_intervals_are_validated() {
        assert_eq!(
            ops_ok(&[("ADMIN_ADDR", "[::1]:9000")]).admin_addr,
            Some("[::1]:9000".parse().expect("addr"))
        );
        assert_eq!(
            ops_ok(&[("QUEUE_LENGTH_INTERVAL", "5m")]).queue_length_interval,
            Some(Duration::from_secs(300))
        );
        for bad in ["9464", "localhost:9464", "0.0.0.0", "on"] {
            let err = ops(&[("ADMIN_ADDR", bad)]).expect_err(bad);
            assert_eq!(err.variable, "ADMIN_ADDR");
        }
        for bad in ["30", "500ms", "soon"] {
            let err = ops(&[("QUEUE_LENGTH_INTERVAL", bad)]).expect_err(bad);
            assert_eq!(err.variable, "QUEUE_LENGTH_INTERVAL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |name| map.get(name).cloned())
    }

    fn base<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut vars = vec![
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://127.0.0.1:8080/events"),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                "UseDevelopmentStorage=true",
            ),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k, v));
        }
        vars
    }

    fn error_variable(vars: &[(&str, &str)]) -> &'static str {
        config(vars)
            .expect_err("expected a configuration error")
            .variable
    }

    #[test]
    fn defaults_match_the_documentation() {
        let cfg = config(&base(&[])).expect("valid config");
        assert_eq!(cfg.batch_size, 32);
        assert_eq!(cfg.max_in_flight, 32);
        assert_eq!(cfg.visibility_timeout, Duration::from_secs(30));
        assert_eq!(cfg.poll.min_interval, Duration::from_millis(100));
        assert_eq!(cfg.poll.max_interval, Duration::from_secs(10));
        assert_eq!(cfg.http_timeout, Duration::from_secs(30));
        assert_eq!(cfg.event.ce_type, DEFAULT_CE_TYPE);
        assert_eq!(cfg.event.mode, ContentMode::Binary);
        assert!(!cfg.event.decode_base64);
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.retry.base_delay, Duration::from_secs(1));
        assert_eq!(cfg.retry.max_delay, Duration::from_secs(300));
        assert_eq!(cfg.retry.max_dequeue_count, 5);
        assert_eq!(cfg.retry.poison_queue_name, "orders-poison");
        assert_eq!(
            cfg.retry.poison_queue_url.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/orders-poison"
        );
        assert!(!cfg.retry.create_poison_queue);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(
            cfg.storage.queue_url.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/orders"
        );
        assert_eq!(
            cfg.event.source,
            "http://127.0.0.1:10001/devstoreaccount1/orders"
        );
        for doc in VARIABLES {
            assert!(!doc.meaning.is_empty(), "{} is documented", doc.name);
        }
    }

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }

    #[test]
    fn account_and_key_build_the_public_endpoint() {
        let cfg = config(&[
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://app:8080/"),
            ("AZURE_STORAGE_ACCOUNT", "myacct"),
            ("AZURE_STORAGE_KEY", DEV_KEY),
        ])
        .expect("valid config");
        assert_eq!(
            cfg.storage.queue_url.as_str(),
            "https://myacct.queue.core.windows.net/orders"
        );
        assert!(matches!(
            cfg.storage.credential,
            Credential::SharedKey { .. }
        ));
    }

    #[test]
    fn sas_with_endpoint_override_needs_no_account() {
        let cfg = config(&[
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://app:8080/"),
            ("AZURE_STORAGE_SAS_TOKEN", "?sv=2022-11-02&sp=rp&sig=abc%3D"),
            (
                "AZURE_STORAGE_QUEUE_ENDPOINT",
                "http://127.0.0.1:10001/devstoreaccount1/",
            ),
        ])
        .expect("valid config");
        assert_eq!(
            cfg.storage.queue_url.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/orders"
        );
        assert!(matches!(cfg.storage.credential, Credential::Sas(_)));
    }

    #[test]
    fn k_sink_is_the_fallback_endpoint() {
        let mut vars = base(&[("K_SINK", "http://broker.default.svc/")]);
        vars.retain(|(k, _)| *k != "ENDPOINT_URL");
        assert_eq!(
            config(&vars).expect("valid").endpoint.as_str(),
            "http://broker.default.svc/"
        );
    }

    #[test]
    fn every_mistake_names_its_variable() {
        let missing_queue: Vec<_> = base(&[])
            .into_iter()
            .filter(|(k, _)| *k != "QUEUE_NAME")
            .collect();
        assert_eq!(error_variable(&missing_queue), "QUEUE_NAME");
        assert_eq!(
            error_variable(&base(&[("QUEUE_NAME", "Orders!")])),
            "QUEUE_NAME"
        );
        let no_endpoint: Vec<_> = base(&[])
            .into_iter()
            .filter(|(k, _)| *k != "ENDPOINT_URL")
            .collect();
        assert_eq!(error_variable(&no_endpoint), "ENDPOINT_URL");
        assert_eq!(
            error_variable(&base(&[("ENDPOINT_URL", "not a url")])),
            "ENDPOINT_URL"
        );
        assert_eq!(
            error_variable(&base(&[("ENDPOINT_URL", "ftp://host/")])),
            "ENDPOINT_URL"
        );
        assert_eq!(error_variable(&base(&[("BATCH_SIZE", "0")])), "BATCH_SIZE");
        assert_eq!(error_variable(&base(&[("BATCH_SIZE", "40")])), "BATCH_SIZE");
        assert_eq!(
            error_variable(&base(&[("MAX_IN_FLIGHT", "0")])),
            "MAX_IN_FLIGHT"
        );
        assert_eq!(
            error_variable(&base(&[("VISIBILITY_TIMEOUT", "soon")])),
            "VISIBILITY_TIMEOUT"
        );
        assert_eq!(
            error_variable(&base(&[("VISIBILITY_TIMEOUT", "500ms")])),
            "VISIBILITY_TIMEOUT"
        );
        assert_eq!(
            error_variable(&base(&[("VISIBILITY_TIMEOUT", "8d")])),
            "VISIBILITY_TIMEOUT"
        );
        assert_eq!(
            error_variable(&base(&[("POLL_MIN_INTERVAL", "0ms")])),
            "POLL_MIN_INTERVAL"
        );
        assert_eq!(
            error_variable(&base(&[
                ("POLL_MIN_INTERVAL", "5s"),
                ("POLL_MAX_INTERVAL", "1s")
            ])),
            "POLL_MAX_INTERVAL"
        );
        assert_eq!(
            error_variable(&base(&[("HTTP_TIMEOUT", "30")])),
            "HTTP_TIMEOUT"
        );
        // A retry sooner than 100 ms would make a hot loop with MAX_DEQUEUE_COUNT=0.
        assert_eq!(
            error_variable(&base(&[("RETRY_BASE_DELAY", "0s")])),
            "RETRY_BASE_DELAY"
        );
        assert_eq!(
            error_variable(&base(&[("RETRY_BASE_DELAY", "99ms")])),
            "RETRY_BASE_DELAY"
        );
        assert_eq!(error_variable(&base(&[("CE_MODE", "batched")])), "CE_MODE");
        assert_eq!(
            error_variable(&base(&[("K_CE_OVERRIDES", "{nope")])),
            "K_CE_OVERRIDES"
        );
        assert_eq!(
            error_variable(&base(&[(
                "K_CE_OVERRIDES",
                r#"{"extensions":{"Bad-Name":"x"}}"#
            )])),
            "K_CE_OVERRIDES"
        );
        assert_eq!(
            error_variable(&base(&[("DECODE_BASE64", "maybe")])),
            "DECODE_BASE64"
        );
        assert_eq!(
            error_variable(&base(&[("LOG_FORMAT", "xml")])),
            "LOG_FORMAT"
        );
        assert_eq!(
            error_variable(&base(&[("LOG_LEVEL", "info,=[")])),
            "LOG_LEVEL"
        );
    }

    #[test]
    fn credential_mistakes_name_their_variable_and_hide_secrets() {
        let no_credentials = [("QUEUE_NAME", "orders"), ("ENDPOINT_URL", "http://a/")];
        assert_eq!(
            error_variable(&no_credentials),
            "AZURE_STORAGE_CONNECTION_STRING"
        );

        let conflict = base(&[
            ("AZURE_STORAGE_KEY", DEV_KEY),
            ("AZURE_STORAGE_ACCOUNT", "acct"),
        ]);
        let err = config(&conflict).expect_err("conflict");
        assert_eq!(err.variable, "AZURE_STORAGE_CONNECTION_STRING");
        assert!(!err.to_string().contains(DEV_KEY));

        let both = [
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://a/"),
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_STORAGE_KEY", DEV_KEY),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=SECRETSIG"),
        ];
        let err = config(&both).expect_err("key and sas");
        assert_eq!(err.variable, "AZURE_STORAGE_KEY");
        assert!(!err.to_string().contains("SECRETSIG"));

        let key_without_account = [
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://a/"),
            ("AZURE_STORAGE_KEY", DEV_KEY),
        ];
        assert_eq!(
            error_variable(&key_without_account),
            "AZURE_STORAGE_ACCOUNT"
        );

        let bad_key = [
            ("QUEUE_NAME", "orders"),
            ("ENDPOINT_URL", "http://a/"),
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_STORAGE_KEY", "not base64 at all!"),
        ];
        let err = config(&bad_key).expect_err("bad key");
        assert_eq!(err.variable, "AZURE_STORAGE_KEY");
        assert!(!err.to_string().contains("not base64 at all!"));

        let malformed = base(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=x;AccountKey",
        )]);
        assert_eq!(
            error_variable(&malformed),
            "AZURE_STORAGE_CONNECTION_STRING"
        );

        let endpoint_with_sas = base(&[(
            "AZURE_STORAGE_QUEUE_ENDPOINT",
            "https://a.queue.core.windows.net/?sig=SECRET",
        )]);
        let err = config(&endpoint_with_sas).expect_err("query in endpoint");
        assert_eq!(err.variable, "AZURE_STORAGE_QUEUE_ENDPOINT");
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn overrides_and_modes_are_read() {
        let cfg = config(&base(&[
            (
                "K_CE_OVERRIDES",
                r#"{"extensions":{"team":"payments","tier":"2"}}"#,
            ),
            ("CE_MODE", "structured"),
            ("DECODE_BASE64", "true"),
            ("CE_SOURCE", "/orders"),
        ]))
        .expect("valid");
        assert_eq!(
            cfg.event.overrides.get("team").map(String::as_str),
            Some("payments")
        );
        assert_eq!(
            cfg.event.overrides.get("tier").map(String::as_str),
            Some("2")
        );
        assert_eq!(cfg.event.mode, ContentMode::Structured);
        assert!(cfg.event.decode_base64);
        assert_eq!(cfg.event.source, "/orders");
    }

    #[test]
    fn overrides_may_not_name_context_attributes_or_our_extensions_and_must_be_strings() {
        for raw in [
            r#"{"extensions":{"id":"x"}}"#,
            r#"{"extensions":{"specversion":"1.0"}}"#,
            r#"{"extensions":{"time":"2024-01-01T00:00:00Z"}}"#,
            r#"{"extensions":{"data":"x"}}"#,
            r#"{"extensions":{"data_base64":"x"}}"#,
            r#"{"extensions":{"dequeuecount":"1"}}"#,
            r#"{"extensions":{"queuemessageid":"x"}}"#,
            r#"{"extensions":{"expirytime":"x"}}"#,
            r#"{"extensions":{"dataversion":"1"}}"#,
            r#"{"extensions":{"tier":2}}"#,
            r#"{"extensions":{"tier":true}}"#,
            r#"{"extensions":{"tier":null}}"#,
            r#"{"extensions":{"tier":{"a":"b"}}}"#,
            r#"{"extension":{"tier":"2"}}"#,
            r#"{"extensions":{"averyveryverylongname1":"x"}}"#,
            r#"["extensions"]"#,
        ] {
            let err = config(&base(&[("K_CE_OVERRIDES", raw)])).expect_err(raw);
            assert_eq!(err.variable, "K_CE_OVERRIDES", "{raw}");
            assert!(!err.to_string().contains('\n'));
        }
        let cfg = config(&base(&[("K_CE_OVERRIDES", r#"{"extensions":{}}"#)])).expect("valid");
        assert!(cfg.event.overrides.is_empty());
    }

    #[test]
    fn passthrough_and_event_grid_schema_are_read() {
        let cfg = config(&base(&[])).expect("valid");
        assert!(cfg.event.passthrough);
        assert_eq!(cfg.event.event_grid, EventGridSchema::Map);
        let cfg = config(&base(&[
            ("CE_PASSTHROUGH", "false"),
            ("EVENTGRID_SCHEMA", "WRAP"),
        ]))
        .expect("valid");
        assert!(!cfg.event.passthrough);
        assert_eq!(cfg.event.event_grid, EventGridSchema::Wrap);
        assert_eq!(
            error_variable(&base(&[("CE_PASSTHROUGH", "2")])),
            "CE_PASSTHROUGH"
        );
        assert_eq!(
            error_variable(&base(&[("EVENTGRID_SCHEMA", "cloudevents")])),
            "EVENTGRID_SCHEMA"
        );
    }

    #[test]
    fn a_key_or_sas_over_plain_http_goes_only_to_loopback_unless_allowed() {
        let sas = |endpoint: &'static str| {
            vec![
                ("QUEUE_NAME", "orders"),
                ("ENDPOINT_URL", "http://app:8080/"),
                (
                    "AZURE_STORAGE_SAS_TOKEN",
                    "sv=2022-11-02&sp=rp&sig=SECRETSIG",
                ),
                ("AZURE_STORAGE_QUEUE_ENDPOINT", endpoint),
            ]
        };
        for remote in [
            "http://storage.example.net/devstoreaccount1",
            "http://10.0.0.7:10001/devstoreaccount1",
            "http://azurite:10001/devstoreaccount1",
            "http://[2001:db8::1]:10001/devstoreaccount1",
        ] {
            let err = config(&sas(remote)).expect_err(remote);
            assert_eq!(err.variable, "AZURE_STORAGE_QUEUE_ENDPOINT", "{remote}");
            assert!(
                err.to_string().contains("AZURE_STORAGE_ALLOW_HTTP"),
                "{err}"
            );
            assert!(!err.to_string().contains("SECRETSIG"));
            let mut allowed = sas(remote);
            allowed.push(("AZURE_STORAGE_ALLOW_HTTP", "true"));
            assert!(config(&allowed).is_ok(), "{remote} with ALLOW_HTTP");
        }
        for local in [
            "http://127.0.0.1:10001/devstoreaccount1",
            "http://127.8.9.10:10001/devstoreaccount1",
            "http://localhost:10001/devstoreaccount1",
            "http://LOCALHOST./devstoreaccount1",
            "http://azurite.localhost:10001/devstoreaccount1",
            "http://[::1]:10001/devstoreaccount1",
            "https://storage.example.net/devstoreaccount1",
        ] {
            assert!(config(&sas(local)).is_ok(), "{local}");
        }
        let remote_key = base(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0",
        )]);
        assert_eq!(
            error_variable(&remote_key),
            "AZURE_STORAGE_CONNECTION_STRING"
        );
        let remote_endpoint = base(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=devstoreaccount1;AccountKey=c2VjcmV0;QueueEndpoint=http://azurite:10001/devstoreaccount1",
        )]);
        assert_eq!(
            error_variable(&remote_endpoint),
            "AZURE_STORAGE_CONNECTION_STRING"
        );
        assert!(
            config(&base(&[])).is_ok(),
            "UseDevelopmentStorage=true stays allowed"
        );
        assert_eq!(
            error_variable(&base(&[("AZURE_STORAGE_ALLOW_HTTP", "perhaps")])),
            "AZURE_STORAGE_ALLOW_HTTP"
        );
    }

    #[test]
    fn endpoint_errors_never_echo_credentials_or_queries() {
        for raw in [
            "ftp://user:hunter2@app/api?code=SECRET",
            "http://user:hunter2@bad host/?code=SECRET",
            "user:hunter2@app:80/?code=SECRET",
        ] {
            let err = config(&base(&[("ENDPOINT_URL", raw)])).expect_err(raw);
            let text = err.to_string();
            assert_eq!(err.variable, "ENDPOINT_URL");
            assert!(
                !text.contains("hunter2") && !text.contains("SECRET"),
                "{text}"
            );
        }
    }

    #[test]
    fn empty_values_count_as_unset() {
        let cfg = config(&base(&[("BATCH_SIZE", ""), ("CE_MODE", " ")])).expect("valid");
        assert_eq!(cfg.batch_size, 32);
    }
}
