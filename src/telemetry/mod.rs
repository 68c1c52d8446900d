//! Telemetry: log setup, metrics, and the typed events that feed both.
//!
//! Every observable happening in the sidecar is one type in [`events`]; emitting it writes the
//! log line and bumps the metric together, so logs and metrics cannot disagree (the pattern of
//! vector's `internal_events`). [`metrics`] holds the Prometheus registry, [`health`] the state
//! behind the liveness and readiness probes.

pub mod events;
pub mod health;
pub mod metrics;

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;
use url::Url;

/// A URL fit for logs and `check` output: the user info and every query value are replaced,
/// because an endpoint URL may carry basic-auth credentials (a token is often the user name
/// alone) or a key (Azure Functions' `?code=`). Query names stay, so the shape of the URL can
/// still be checked.
pub fn loggable_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have credentials, which have none to hide.
    if !shown.username().is_empty() {
        let _ = shown.set_username("REDACTED");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("REDACTED"));
    }
    if shown.query().is_some() {
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| name.into_owned())
            .collect();
        let mut query = shown.query_pairs_mut();
        query.clear();
        for name in &names {
            query.append_pair(name, "REDACTED");
        }
    }
    shown.to_string()
}

/// A URL as a user typed it, fit for a configuration error: [`loggable_url`] if it parses;
/// otherwise the text with anything that could be user info (before an `@`) or a query or
/// fragment (from `?` or `#`) replaced, so a mistyped URL never echoes its secrets.
pub fn loggable_url_text(raw: &str) -> String {
    let raw = raw.trim();
    if let Ok(url) = Url::parse(raw) {
        if url.has_host() {
            return format!("{:?}", loggable_url(&url));
        }
    }
    let (before_query, query) = match raw.find(['?', '#']) {
        Some(at) => (&raw[..at], "?REDACTED"),
        None => (raw, ""),
    };
    let (scheme, rest) = match before_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("REDACTED@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    format!("{:?}", format!("{scheme}{rest}{query}"))
}

/// Quiets the SDK's and HTTP stack's own per-request logs, which duplicate ours (we log once
/// per state change) and, at debug level, quote request details. A user's `LOG_LEVEL` may
/// still raise them explicitly, e.g. `info,azure_core=debug`.
const LIBRARY_DEFAULTS: &str = "typespec_client_core=warn,azure_core=warn,azure_storage_queue=warn,reqwest=warn,hyper=warn,hyper_util=warn,rustls=warn";

fn build_filter(user: &str) -> Result<EnvFilter, String> {
    let directives = format!("{LIBRARY_DEFAULTS},{user}");
    EnvFilter::builder().parse(directives).map_err(|e| {
        format!("expected a filter such as info, debug or info,azure_core=debug ({e})")
    })
}

/// Checks a `LOG_LEVEL` value without installing anything.
pub fn validate_filter(user: &str) -> Result<(), String> {
    build_filter(user).map(drop)
}

/// Installs the global subscriber: JSON lines or plain text on stdout.
pub fn init(config: &LogConfig) {
    // The filter was validated with the configuration; fall back to `info` rather than panic.
    let filter = build_filter(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    // Already installed (tests run several sidecars in one process): keep the first.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::loggable_url;
    use url::Url;

    #[test]
    fn urls_lose_passwords_and_query_values() {
        let url =
            Url::parse("https://user:hunter2@app.example/api/events?code=SECRET&x=1").expect("url");
        let shown = loggable_url(&url);
        assert_eq!(
            shown,
            "https://REDACTED:REDACTED@app.example/api/events?code=REDACTED&x=REDACTED"
        );
        let token_as_user = Url::parse("https://TOKEN@app.example/").expect("url");
        assert_eq!(
            loggable_url(&token_as_user),
            "https://REDACTED@app.example/"
        );
        let plain = Url::parse("http://127.0.0.1:8080/events").expect("url");
        assert_eq!(loggable_url(&plain), "http://127.0.0.1:8080/events");
    }

    #[test]
    fn typed_urls_lose_credentials_and_queries_even_when_they_do_not_parse() {
        use super::loggable_url_text;
        for (raw, shown) in [
            (
                "ftp://u:hunter2@h/p?code=S",
                r#""ftp://REDACTED:REDACTED@h/p?code=REDACTED""#,
            ),
            (
                "http://u:hunter2@bad host/p?code=S",
                r#""http://REDACTED@bad host/p?REDACTED""#,
            ),
            ("u:hunter2@host:80/x", r#""REDACTED@host:80/x""#),
            ("localhost:8080", r#""localhost:8080""#),
            ("not a url#frag", r#""not a url?REDACTED""#),
            ("http://a@b@c/", r#""http://REDACTED@c/""#),
        ] {
            assert_eq!(loggable_url_text(raw), shown, "{raw}");
        }
    }
}
