//! Typed configuration, read once from the environment at start.
//!
//! Every knob is an environment variable (the sidecar runs in a pod, where env is the native
//! way to configure a container). [`Config::from_env`] validates everything before any network
//! call, so a broken deployment fails at once with exit status 2 and a single line naming the
//! variable and what it expects, instead of crash-looping on the first request.
//!
//! The rooms:
//!
//! - [`variables`]: the variable table (name, default, help, README text), the single source
//!   of the parser's defaults, `--help` and the README's tables.
//! - [`storage`]: which queue, where, and which credential variables were given — plain data.
//!   Choosing the credential from them is `auth`'s job (`auth::select`), one layer up.
//! - [`connection_string`]: parsing connection strings and account keys (pure parsing).
//! - [`event`]: how messages become CloudEvents (`CE_*`, `K_CE_OVERRIDES`, ...).
//! - [`tls`]: the CA variables, checked here so a wrong path fails at start.
//! - [`endpoint_auth`]: the endpoint's bearer token source (a token file, an Entra ID
//!   audience, Knative's sender identity) and `TRACE_CONTEXT`.
//! - [`ops`]: the admin server, the queue-length poll, logging.
//!
//! The configuration is the bottom of the house: it names no other module of the crate but
//! the leaf `redact` (to keep a mistyped URL's secrets out of an error message), so anything
//! may read it. Secrets (account keys, SAS tokens, connection strings) are held in [`Secret`]s
//! and never appear in errors or in the `Debug` output of this module's types.

pub mod connection_string;
pub(crate) mod endpoint_auth;
pub(crate) mod event;
pub(crate) mod ops;
pub(crate) mod storage;
pub(crate) mod tls;
mod values;
pub(crate) mod variables;

pub(crate) use endpoint_auth::EndpointAuthConfig;
#[cfg(test)]
pub(crate) use endpoint_auth::TokenOrigin;
pub use event::{BatchConfig, ContentMode, EventConfig, EventGridSchema};
pub(crate) use ops::{parse_admin_addr, LogConfig, OpsConfig};
pub(crate) use storage::{AuthMode, IdentityVariables, StorageConfig};
pub use values::{format_duration, parse_duration, ConfigError};
pub use variables::{Variable, VARIABLES};

use values::Env;

use std::time::Duration;
use url::Url;

/// Service limits that bound the configuration (Azure Queue Storage REST reference).
const MAX_BATCH_SIZE: u32 = 32;
const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest delay before a retry: the smallest `RETRY_BASE_DELAY` accepted, and the floor
/// of every retry delay (an endpoint's `Retry-After: 0` included).
pub(crate) const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_IN_FLIGHT_LIMIT: usize = 4096;

/// Idle polling bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollConfig {
    pub min_interval: Duration,
    pub max_interval: Duration,
}

/// Where events go, and how.
#[derive(Debug, Clone)]
pub(crate) struct EndpointConfig {
    /// The URL events are POSTed to.
    pub url: Url,
    /// Per-POST timeout.
    pub timeout: Duration,
    /// Knative's `K_CA_CERTS`: PEM CA certificates trusted for the endpoint only, checked.
    pub ca_certs: Option<String>,
    /// Where the endpoint's bearer token comes from (`ENDPOINT_TOKEN_FILE`,
    /// `ENDPOINT_AUDIENCE`, Knative's sender identity), if anywhere.
    pub auth: EndpointAuthConfig,
    /// `TRACE_CONTEXT`: whether every POST carries W3C `traceparent`.
    pub trace_context: bool,
}

/// What happens to a message whose delivery failed.
#[derive(Debug, Clone)]
pub(crate) struct RetryConfig {
    /// Delay before the first retry; doubles with every attempt.
    pub base_delay: Duration,
    /// The longest retry delay (also the cap on an endpoint's `Retry-After`).
    pub max_delay: Duration,
    /// Attempts before a message goes to the poison queue; 0 never poisons.
    pub max_dequeue_count: u32,
    /// Where poisoned messages go (a queue of the same account).
    pub poison_queue_name: String,
    /// Whether the sidecar may create the poison queue if it is missing.
    pub create_poison_queue: bool,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub storage: StorageConfig,
    pub endpoint: EndpointConfig,
    pub event: EventConfig,
    /// Messages asked for per Get Messages call (1..=32).
    pub batch_size: u32,
    /// Deliveries running at once.
    pub max_in_flight: usize,
    /// The lease taken on each received message.
    pub visibility_timeout: Duration,
    pub poll: PollConfig,
    pub retry: RetryConfig,
    /// How long deliveries in progress may run on after SIGTERM.
    pub shutdown_timeout: Duration,
    /// `EXIT_WHEN_IDLE`: with no message received for this long and nothing in flight, drain
    /// and exit 0 (run to completion, for Jobs); `None` runs until a signal.
    pub exit_when_idle: Option<Duration>,
    pub log: LogConfig,
    /// The admin server (probes, metrics) and queue-length polling.
    pub ops: OpsConfig,
}

impl Config {
    /// Reads and validates the process environment.
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates a configuration from any variable source (tests pass a map).
    ///
    /// Variables set to the empty string count as unset: Kubernetes manifests and shells make
    /// empty values easy to produce by accident, and treating them as values gives baffling
    /// errors.
    pub(crate) fn from_lookup(
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
        check_queue_name("QUEUE_NAME", &queue_name)?;
        let storage = storage::storage_config(&env, queue_name)?;
        let endpoint_url = endpoint_url(&env)?;
        let ca_certs = tls::check(&env)?;
        let endpoint_auth = endpoint_auth::endpoint_auth(&env)?;
        let url_has_credentials =
            !endpoint_url.username().is_empty() || endpoint_url.password().is_some();
        if url_has_credentials && endpoint_auth != EndpointAuthConfig::None {
            // Two Authorization headers would reach the endpoint; say which to drop.
            return Err(ConfigError::new(
                "ENDPOINT_URL",
                format!(
                    "carries user:password credentials while the endpoint's bearer token comes from {}; expected one of them",
                    endpoint_auth.kind()
                ),
            ));
        }
        let trace_context = endpoint_auth::trace_context(&env)?;
        let event = event::event_config(&env)?;

        let batch_size = env.parse_range("BATCH_SIZE", 1, MAX_BATCH_SIZE)?;
        let max_in_flight = env.parse_range("MAX_IN_FLIGHT", 1, MAX_IN_FLIGHT_LIMIT)?;

        let visibility_timeout = env.duration("VISIBILITY_TIMEOUT")?;
        if visibility_timeout < Duration::from_secs(1)
            || visibility_timeout > MAX_VISIBILITY_TIMEOUT
        {
            return Err(ConfigError::new(
                "VISIBILITY_TIMEOUT",
                "expected a duration from 1s to 7d (the queue service's limits)",
            ));
        }

        let poll = PollConfig {
            min_interval: env.duration("POLL_MIN_INTERVAL")?,
            max_interval: env.duration("POLL_MAX_INTERVAL")?,
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

        let http_timeout = env.duration("HTTP_TIMEOUT")?;
        if http_timeout.is_zero() {
            return Err(ConfigError::new(
                "HTTP_TIMEOUT",
                "expected a duration above zero, e.g. 30s",
            ));
        }

        let retry = retry_config(&env, &storage.queue_name)?;
        let shutdown_timeout = env.duration("SHUTDOWN_TIMEOUT")?;
        let exit_when_idle = exit_when_idle(&env)?;

        let log = ops::log_config(&env)?;
        let ops = ops::ops_config(&env)?;

        Ok(Config {
            storage,
            endpoint: EndpointConfig {
                url: endpoint_url,
                timeout: http_timeout,
                ca_certs,
                auth: endpoint_auth,
                trace_context,
            },
            event,
            batch_size,
            max_in_flight,
            visibility_timeout,
            poll,
            retry,
            shutdown_timeout,
            exit_when_idle,
            log,
            ops,
        })
    }
}

/// `EXIT_WHEN_IDLE`: unset (or `0`) runs until a signal; otherwise a duration above zero.
fn exit_when_idle(env: &Env) -> Result<Option<Duration>, ConfigError> {
    const NAME: &str = "EXIT_WHEN_IDLE";
    match env.get(NAME).as_deref().map(str::trim) {
        None | Some("0") => Ok(None),
        Some(_) => match env.duration(NAME)? {
            idle if idle.is_zero() => Ok(None),
            idle => Ok(Some(idle)),
        },
    }
}

/// Queue names: 3-63 characters, lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit (Azure's naming rules). Checked here so a typo fails at start.
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

fn retry_config(env: &Env, queue_name: &str) -> Result<RetryConfig, ConfigError> {
    let base_delay = env.duration("RETRY_BASE_DELAY")?;
    if base_delay < MIN_RETRY_DELAY {
        // A shorter delay would let MAX_DEQUEUE_COUNT=0 spin on a failing message.
        return Err(ConfigError::new(
            "RETRY_BASE_DELAY",
            "expected a duration of at least 100ms (retry delays are whole seconds at the queue: anything under 1s waits 1s)",
        ));
    }
    let max_delay = env.duration("RETRY_MAX_DELAY")?;
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
    let max_dequeue_count = env.parse_range("MAX_DEQUEUE_COUNT", 0, 1_000_000)?;
    let poison_queue_name = match env.get("POISON_QUEUE_NAME") {
        Some(name) => {
            let name = name.trim().to_string();
            check_queue_name("POISON_QUEUE_NAME", &name)?;
            name
        }
        None => {
            let name = format!("{queue_name}-poison");
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
    if poison_queue_name == queue_name {
        return Err(ConfigError::new(
            "POISON_QUEUE_NAME",
            "must differ from QUEUE_NAME",
        ));
    }
    Ok(RetryConfig {
        base_delay,
        max_delay,
        max_dequeue_count,
        poison_queue_name,
        create_poison_queue: env.flag("CREATE_POISON_QUEUE")?,
    })
}

fn endpoint_url(env: &Env) -> Result<Url, ConfigError> {
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

/// Environments for the unit tests of what reads the configuration (here and in `auth`).
#[cfg(test)]
pub(crate) mod test_env {
    use std::collections::HashMap;

    /// A lookup that answers from `vars`, as the process environment would.
    pub(crate) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'static {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// The smallest valid environment, with `extra` added (or replacing what it names).
    pub(crate) fn base<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
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
}

#[cfg(test)]
mod tests {
    use super::test_env::{base, lookup};
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(lookup(vars))
    }

    fn error_variable(vars: &[(&str, &str)]) -> &'static str {
        config(vars)
            .expect_err("expected a configuration error")
            .variable
    }

    #[test]
    fn exit_when_idle_is_off_unless_given_a_duration() {
        let idle = |value: Option<&str>| {
            let mut vars = base(&[]);
            vars.extend(value.map(|v| ("EXIT_WHEN_IDLE", v)));
            config(&vars).map(|c| c.exit_when_idle)
        };
        assert_eq!(idle(None).expect("valid"), None);
        assert_eq!(idle(Some("0")).expect("valid"), None);
        assert_eq!(idle(Some("0s")).expect("valid"), None);
        assert_eq!(
            idle(Some("30s")).expect("valid"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            idle(Some("1500ms")).expect("valid"),
            Some(Duration::from_millis(1500))
        );
        for bad in ["30", "soon", "-1s"] {
            let mut vars = base(&[]);
            vars.push(("EXIT_WHEN_IDLE", bad));
            assert_eq!(error_variable(&vars), "EXIT_WHEN_IDLE", "{bad}");
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
    fn k_sink_is_the_fallback_endpoint() {
        let mut vars = base(&[("K_SINK", "http://broker.default.svc/")]);
        vars.retain(|(k, _)| *k != "ENDPOINT_URL");
        assert_eq!(
            config(&vars).expect("valid").endpoint.url.as_str(),
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
        assert_eq!(error_variable(&base(&[("CE_MODE", "batch")])), "CE_MODE");
        assert_eq!(
            error_variable(&base(&[("CE_BATCH_SIZE", "0")])),
            "CE_BATCH_SIZE"
        );
        assert_eq!(
            error_variable(&base(&[("CE_BATCH_SIZE", "33")])),
            "CE_BATCH_SIZE"
        );
        assert_eq!(
            error_variable(&base(&[("CE_BATCH_MAX_BYTES", "1MiB")])),
            "CE_BATCH_MAX_BYTES"
        );
        assert_eq!(
            error_variable(&base(&[("CE_BATCH_MAX_BYTES", "100")])),
            "CE_BATCH_MAX_BYTES"
        );
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
        assert_eq!(cfg.event.source.as_deref(), Some("/orders"));
        assert_eq!(
            cfg.event.batch,
            BatchConfig {
                max_events: 32,
                max_bytes: 1024 * 1024
            }
        );
        let batched = config(&base(&[
            ("CE_MODE", "Batched"),
            ("CE_BATCH_SIZE", "8"),
            ("CE_BATCH_MAX_BYTES", "65536"),
        ]))
        .expect("valid");
        assert_eq!(batched.event.mode, ContentMode::Batched);
        assert_eq!(
            batched.event.batch,
            BatchConfig {
                max_events: 8,
                max_bytes: 65536
            }
        );
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
