//! How requests to the endpoint are authenticated, and whether they carry trace context:
//! `ENDPOINT_TOKEN_FILE`, `ENDPOINT_AUDIENCE`, Knative's sender identity and `TRACE_CONTEXT`.
//!
//! At most one source of the endpoint's bearer token:
//!
//! - `ENDPOINT_TOKEN_FILE`: a file holding the token (a projected service account token, a
//!   Secret's key). Read here once, so a missing or unreadable file stops the start with exit
//!   status 2; the endpoint client re-reads it as it rotates.
//! - `ENDPOINT_AUDIENCE`: a Microsoft Entra ID token for that audience from the queue's own
//!   identity (checked against the queue's credential by `auth::endpoint`, one layer up).
//! - Knative sender identity: when neither is set and `K_SINK` is (the sidecar is bound by a
//!   SinkBinding or ContainerSource), the token Knative mounts at [`KNATIVE_TOKEN_FILE`] is
//!   used if it exists. Knative mounts it only when the `authentication-oidc` feature is on
//!   and the sink has an audience (knative/eventing `pkg/apis/sources/v1/sinkbinding_lifecycle.go`,
//!   `SinkBinding.Do`: a projected volume of the `<binding>-oidc-token` Secret, key `token`, at
//!   `/oidc`; the reconciler renews the Secret before the token expires).
//!
//! Two sources at once is a mistake, refused at start: silently preferring one would hide a
//! stale manifest.

use super::values::{ConfigError, Env};
use std::path::{Path, PathBuf};

/// Where Knative's SinkBinding mounts the sender identity token (a Secret with key `token`,
/// projected at `/oidc`).
pub(crate) const KNATIVE_TOKEN_FILE: &str = "/oidc/token";

/// Where the endpoint's bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointAuthConfig {
    /// No `Authorization` header.
    None,
    /// A token file, re-read as it rotates.
    TokenFile { path: PathBuf, origin: TokenOrigin },
    /// A Microsoft Entra ID token for this scope (`<ENDPOINT_AUDIENCE>/.default`).
    Audience { audience: String, scope: String },
}

/// Who named the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenOrigin {
    /// `ENDPOINT_TOKEN_FILE`.
    Variable,
    /// Knative's sender identity ([`KNATIVE_TOKEN_FILE`]).
    Knative,
}

impl EndpointAuthConfig {
    /// The short, secret-free name for logs and `check`: `none`, `token-file`,
    /// `knative-oidc` or `entra-id`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            EndpointAuthConfig::None => "none",
            EndpointAuthConfig::TokenFile {
                origin: TokenOrigin::Variable,
                ..
            } => "token-file",
            EndpointAuthConfig::TokenFile {
                origin: TokenOrigin::Knative,
                ..
            } => "knative-oidc",
            EndpointAuthConfig::Audience { .. } => "entra-id",
        }
    }
}

/// Reads the endpoint authentication variables (Knative's token at [`KNATIVE_TOKEN_FILE`]).
pub(super) fn endpoint_auth(env: &Env) -> Result<EndpointAuthConfig, ConfigError> {
    select(env, Path::new(KNATIVE_TOKEN_FILE))
}

/// [`endpoint_auth`] with Knative's token file at `knative_token` (tests point it elsewhere).
fn select(env: &Env, knative_token: &Path) -> Result<EndpointAuthConfig, ConfigError> {
    let file = env.get("ENDPOINT_TOKEN_FILE");
    let audience = env.get("ENDPOINT_AUDIENCE");
    match (file, audience) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "ENDPOINT_TOKEN_FILE",
            "set together with ENDPOINT_AUDIENCE; expected at most one source of the endpoint's token",
        )),
        (Some(path), None) => {
            let path = PathBuf::from(path.trim());
            check_token_file("ENDPOINT_TOKEN_FILE", &path)?;
            Ok(EndpointAuthConfig::TokenFile {
                path,
                origin: TokenOrigin::Variable,
            })
        }
        (None, Some(audience)) => audience_scope(audience.trim()),
        (None, None) if env.get("K_SINK").is_some() && knative_token.exists() => {
            check_token_file("ENDPOINT_TOKEN_FILE", knative_token).map_err(|e| {
                ConfigError::new(
                    "ENDPOINT_TOKEN_FILE",
                    format!("unset, so Knative's sender identity token is used, but {}", e.expected),
                )
            })?;
            Ok(EndpointAuthConfig::TokenFile {
                path: knative_token.to_path_buf(),
                origin: TokenOrigin::Knative,
            })
        }
        (None, None) => Ok(EndpointAuthConfig::None),
    }
}

/// The token file can be read and holds a token. Its content never reaches the error.
fn check_token_file(variable: &'static str, path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            variable,
            format!(
                "cannot read {}: {e}; expected a file holding the endpoint's bearer token",
                path.display()
            ),
        )
    })?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            variable,
            format!(
                "{} is empty; expected a file holding the endpoint's bearer token",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `ENDPOINT_AUDIENCE` and the scope asked for: `<audience>/.default` (an audience given as a
/// scope already, ending in `/.default`, is taken as it is).
fn audience_scope(audience: &str) -> Result<EndpointAuthConfig, ConfigError> {
    let valid = !audience.is_empty()
        && audience
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
    if !valid {
        return Err(ConfigError::new(
            "ENDPOINT_AUDIENCE",
            format!("expected an application ID URI or client ID such as api://my-app, got {audience:?}"),
        ));
    }
    let audience = audience.strip_suffix("/.default").unwrap_or(audience);
    Ok(EndpointAuthConfig::Audience {
        scope: format!("{audience}/.default"),
        audience: audience.to_string(),
    })
}

/// `TRACE_CONTEXT`: `on` or `off`.
pub(super) fn trace_context(env: &Env) -> Result<bool, ConfigError> {
    let raw = env.value("TRACE_CONTEXT")?;
    match raw.trim().to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(ConfigError::new(
            "TRACE_CONTEXT",
            format!("expected on or off, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env(Box::new(move |name| map.get(name).cloned()))
    }

    fn token_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "endpoint-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, content).expect("write");
        path
    }

    #[test]
    fn one_source_at_most() {
        let path = token_file("abc");
        let both = env(&[
            ("ENDPOINT_TOKEN_FILE", path.to_str().expect("utf-8")),
            ("ENDPOINT_AUDIENCE", "api://app"),
        ]);
        let err = select(&both, Path::new("/nonexistent")).expect_err("two sources");
        assert_eq!(err.variable, "ENDPOINT_TOKEN_FILE");
        assert!(err.expected.contains("ENDPOINT_AUDIENCE"), "{err}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_token_file_must_be_readable_and_not_empty() {
        let missing = env(&[("ENDPOINT_TOKEN_FILE", "/nonexistent/token")]);
        let err = select(&missing, Path::new("/nonexistent")).expect_err("missing");
        assert_eq!(err.variable, "ENDPOINT_TOKEN_FILE");
        assert!(
            err.expected.contains("cannot read /nonexistent/token"),
            "{err}"
        );
        let empty = token_file(" \n");
        let vars = env(&[("ENDPOINT_TOKEN_FILE", empty.to_str().expect("utf-8"))]);
        let err = select(&vars, Path::new("/nonexistent")).expect_err("empty");
        assert!(err.expected.contains("is empty"), "{err}");
        let secret = token_file("s3cr3t-token-value");
        let vars = env(&[("ENDPOINT_TOKEN_FILE", secret.to_str().expect("utf-8"))]);
        let config = select(&vars, Path::new("/nonexistent")).expect("valid");
        assert_eq!(config.kind(), "token-file");
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(secret);
    }

    #[test]
    fn knatives_token_is_used_under_a_sink_binding_unless_auth_is_explicit() {
        let knative = token_file("knative-token");
        let bound = env(&[("K_SINK", "http://broker/")]);
        let config = select(&bound, &knative).expect("knative");
        assert_eq!(
            config,
            EndpointAuthConfig::TokenFile {
                path: knative.clone(),
                origin: TokenOrigin::Knative
            }
        );
        assert_eq!(config.kind(), "knative-oidc");
        // Without K_SINK, or with no token mounted (OIDC off, or a sink without audience):
        // no authorization.
        assert_eq!(
            select(&env(&[]), &knative).expect("no sink"),
            EndpointAuthConfig::None
        );
        assert_eq!(
            select(&bound, Path::new("/nonexistent/oidc/token")).expect("no token"),
            EndpointAuthConfig::None
        );
        let explicit = env(&[
            ("K_SINK", "http://broker/"),
            ("ENDPOINT_AUDIENCE", "api://x"),
        ]);
        assert_eq!(
            select(&explicit, &knative).expect("audience").kind(),
            "entra-id"
        );
        let _ = std::fs::remove_file(knative);
    }

    #[test]
    fn the_audience_becomes_a_default_scope() {
        for (given, scope) in [
            ("api://orders", "api://orders/.default"),
            ("api://orders/.default", "api://orders/.default"),
            (
                "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d",
                "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d/.default",
            ),
        ] {
            match audience_scope(given).expect("valid") {
                EndpointAuthConfig::Audience { scope: s, .. } => assert_eq!(s, scope),
                other => panic!("{other:?}"),
            }
        }
        let err = audience_scope("api://my app").expect_err("space");
        assert_eq!(err.variable, "ENDPOINT_AUDIENCE");
    }

    #[test]
    fn trace_context_is_on_or_off() {
        assert!(trace_context(&env(&[])).expect("default"));
        assert!(!trace_context(&env(&[("TRACE_CONTEXT", "off")])).expect("off"));
        assert!(trace_context(&env(&[("TRACE_CONTEXT", "ON")])).expect("on"));
        let err = trace_context(&env(&[("TRACE_CONTEXT", "maybe")])).expect_err("bad");
        assert_eq!(err.variable, "TRACE_CONTEXT");
    }
}
