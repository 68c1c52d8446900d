//! Operations: the admin server (`ADMIN_ADDR`), the queue-length poll
//! (`QUEUE_LENGTH_INTERVAL`) and logging (`LOG_FORMAT`, `LOG_LEVEL`).

use super::values::{ConfigError, Env};
use super::variables::DEFAULT_ADMIN_ADDR;
use std::net::SocketAddr;
use std::time::Duration;
use tracing_subscriber::filter::Targets;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

/// Logging setup.
#[derive(Debug, Clone)]
pub(crate) struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter, as the user wrote it.
    pub filter: String,
}

impl LogConfig {
    /// The filter directives to install: the libraries' defaults, then the user's filter
    /// (which wins where it names the same target).
    pub(crate) fn directives(&self) -> String {
        format!("{LIBRARY_DEFAULTS},{}", self.filter)
    }

    /// Whether log lines are JSON.
    pub(crate) fn json(&self) -> bool {
        self.format == LogFormat::Json
    }
}

/// Quiets the SDK's and HTTP stack's own per-request logs, which duplicate ours (we log once
/// per state change) and, at debug level, quote request details. A user's `LOG_LEVEL` may
/// still raise them explicitly, e.g. `info,azure_core=debug`.
const LIBRARY_DEFAULTS: &str = "typespec_client_core=warn,azure_core=warn,azure_storage_queue=warn,reqwest=warn,hyper=warn,hyper_util=warn,rustls=warn";

pub(super) fn log_config(env: &Env) -> Result<LogConfig, ConfigError> {
    let format = match env.value("LOG_FORMAT")?.trim() {
        f if f.eq_ignore_ascii_case("json") => LogFormat::Json,
        f if f.eq_ignore_ascii_case("text") => LogFormat::Text,
        f => {
            return Err(ConfigError::new(
                "LOG_FORMAT",
                format!("expected json or text, got {f:?}"),
            ))
        }
    };
    let filter = env.value("LOG_LEVEL")?;
    let config = LogConfig { format, filter };
    config.directives().parse::<Targets>().map_err(|e| {
        ConfigError::new(
            "LOG_LEVEL",
            format!("expected a filter such as info, debug or info,azure_core=debug ({e})"),
        )
    })?;
    Ok(config)
}

/// The shortest queue-length polling interval: the count is approximate and cached by the
/// service, and every call is billed.
const MIN_QUEUE_LENGTH_INTERVAL: Duration = Duration::from_secs(1);

/// Operability: the admin HTTP server and queue-length polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None` when `ADMIN_ADDR=off`.
    pub admin_addr: Option<SocketAddr>,
    /// How often the approximate message count is read; `None` when disabled.
    pub queue_length_interval: Option<Duration>,
}

pub(super) fn ops_config(env: &Env) -> Result<OpsConfig, ConfigError> {
    let admin_addr = parse_admin_addr(env.get("ADMIN_ADDR").as_deref())?;
    const QLI: &str = "QUEUE_LENGTH_INTERVAL";
    let queue_length_interval = match env.get(QLI).as_deref().map(str::trim) {
        // A bare `0` is accepted here (unlike other durations): "zero disables" is unambiguous.
        Some("0") => None,
        _ => match env.duration(QLI)? {
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
pub(crate) fn parse_admin_addr(raw: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
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
    use crate::config::Config;

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
