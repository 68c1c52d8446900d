//! Authorization of requests to the endpoint: the bearer token every POST and probe carries.
//!
//! [`EndpointAuth`] is the one place a request to the endpoint gets its `Authorization`
//! header (`pipeline::endpoint` asks it for every request). Its sources, as the
//! configuration chose (`config::endpoint_auth`):
//!
//! - **A token file** (`ENDPOINT_TOKEN_FILE`, or Knative's `/oidc/token`): the token is read
//!   from the file and kept for [`REREAD_INTERVAL`]; the next request after that reads the
//!   file again, so a rotated token is in use within that interval of the change — whether
//!   the file was rewritten, replaced by rename, or swapped by the kubelet's `..data` symlink
//!   (a projected volume or a Secret). After a 401 the token is read again at once
//!   ([`EndpointAuth::unauthorized`]). A file that cannot be read later on (it was checked at
//!   start) keeps the last token in use and is reported once.
//! - **An Entra ID audience** (`ENDPOINT_AUDIENCE`): a token for `<audience>/.default` from the
//!   queue's own credential — the same azure_identity credential, so the same token cache and
//!   token endpoint plumbing (`auth::entra`). The token is kept until five minutes before it
//!   expires, then requested again; a 401 drops it so the next request asks the credential
//!   (whose own cache may hand back the same token until it nears expiry).
//!
//! A token never reaches a log, an error or `Debug` output: header values are marked
//! sensitive, errors name the file or the identity, never the content.

use super::credential::Credential;
use crate::config::{ConfigError, EndpointAuthConfig};
use crate::error_text;
use crate::redact;
use crate::telemetry::events::{EndpointTokenChanged, EndpointTokenFailed, InternalEvent};
use azure_core::credentials::TokenCredential;
use reqwest::header::HeaderValue;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long a token read from a file is used before the file is read again. The issue's
/// bound is 15 s; reading a small tmpfs file every 10 s costs nothing.
pub(crate) const REREAD_INTERVAL: Duration = Duration::from_secs(10);
/// An Entra ID token is requested again this long before it expires (azure_core's window).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Why no token could be had for a request (secret-free).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TokenUnavailable(pub(crate) String);

/// `ENDPOINT_AUDIENCE` needs an Entra ID identity for the queue: checked at start with the
/// other configuration (exit status 2).
pub(crate) fn check(config: &EndpointAuthConfig, queue: &Credential) -> Result<(), ConfigError> {
    match (config, queue) {
        (EndpointAuthConfig::Audience { .. }, Credential::Token(_)) => Ok(()),
        (EndpointAuthConfig::Audience { .. }, other) => Err(ConfigError::new(
            "ENDPOINT_AUDIENCE",
            format!(
                "needs a Microsoft Entra ID identity (workload or managed identity) for the queue, which is authorized with {}; expected AZURE_STORAGE_AUTH=workload-identity or managed-identity, or ENDPOINT_TOKEN_FILE instead",
                other.kind()
            ),
        )),
        _ => Ok(()),
    }
}

/// The endpoint's bearer token source. Cheap to clone (shared state).
#[derive(Clone)]
pub(crate) struct EndpointAuth {
    source: Arc<Source>,
}

enum Source {
    None,
    File(TokenFile),
    Entra(EntraToken),
}

impl fmt::Debug for EndpointAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointAuth")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl EndpointAuth {
    /// No `Authorization` header.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self {
            source: Arc::new(Source::None),
        }
    }

    /// The source `config` names. `queue` is the queue's credential and `http` the client
    /// its token requests go over (the queue's), so an audience token shares the queue
    /// credential's cache.
    pub(crate) fn new(
        config: &EndpointAuthConfig,
        queue: &Credential,
        http: &reqwest::Client,
    ) -> Result<Self, TokenUnavailable> {
        let source = match config {
            EndpointAuthConfig::None => Source::None,
            EndpointAuthConfig::TokenFile { path, .. } => Source::File(TokenFile {
                path: path.clone(),
                kind: config.kind(),
                cached: Mutex::new(None),
            }),
            EndpointAuthConfig::Audience { scope, .. } => {
                let credential = queue
                    .token_credential(http)
                    .map_err(|e| TokenUnavailable(redact::secrets(&error_text::one_line(&e))))?
                    .ok_or_else(|| {
                        TokenUnavailable("ENDPOINT_AUDIENCE needs an Entra ID identity".into())
                    })?;
                Source::Entra(EntraToken {
                    credential,
                    scope: scope.clone(),
                    cached: Mutex::new(None),
                    refreshing: tokio::sync::Mutex::new(()),
                })
            }
        };
        Ok(Self {
            source: Arc::new(source),
        })
    }

    /// `none`, `token-file`, `knative-oidc` or `entra-id`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.source.as_ref() {
            Source::None => "none",
            Source::File(file) => file.kind,
            Source::Entra(_) => "entra-id",
        }
    }

    /// Whether the token can change (a file, an Entra ID token): a 401 is then worth a retry
    /// with the token read again, not a verdict on the message.
    pub(crate) fn renewable(&self) -> bool {
        !matches!(self.source.as_ref(), Source::None)
    }

    /// The `Authorization` header value for the next request, `None` without a source.
    pub(crate) async fn header(&self) -> Result<Option<HeaderValue>, TokenUnavailable> {
        match self.source.as_ref() {
            Source::None => Ok(None),
            Source::File(file) => file.header(false).map(Some),
            Source::Entra(entra) => entra.header().await.map(Some),
        }
    }

    /// The endpoint answered 401: read or request the token again before the next request.
    pub(crate) fn unauthorized(&self) {
        match self.source.as_ref() {
            Source::None => {}
            Source::File(file) => {
                // Read at once: a rotated token is then logged as changed after a 401.
                let _ = file.header(true);
            }
            Source::Entra(entra) => {
                if let Ok(mut cached) = entra.cached.lock() {
                    *cached = None;
                }
            }
        }
    }
}

/// A token from a file, and when it was read.
struct TokenFile {
    path: PathBuf,
    kind: &'static str,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    header: HeaderValue,
    read_at: Instant,
    /// The last read failed (reported once; the previous token is still used).
    failing: bool,
}

impl TokenFile {
    /// The header, read from the file again if the last read is [`REREAD_INTERVAL`] old (or
    /// `force`). A small file on a local volume: a blocking read is shorter than handing it
    /// to another thread.
    fn header(&self, force: bool) -> Result<HeaderValue, TokenUnavailable> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = cached.as_ref() {
            if !force && current.read_at.elapsed() < REREAD_INTERVAL {
                return Ok(current.header.clone());
            }
        }
        match self.read() {
            Ok(header) => {
                let changed = cached
                    .as_ref()
                    .is_none_or(|c| c.header != header || c.failing);
                // The first read is the start, not a change; a recovery is always said.
                if changed && (cached.is_some() || force) {
                    EndpointTokenChanged {
                        source: self.kind,
                        after_unauthorized: force,
                    }
                    .emit();
                }
                *cached = Some(Cached {
                    header: header.clone(),
                    read_at: Instant::now(),
                    failing: false,
                });
                Ok(header)
            }
            Err(error) => {
                EndpointTokenFailed {
                    source: self.kind,
                    error: &error.0,
                    using_previous: cached.is_some(),
                }
                .emit();
                match cached.as_mut() {
                    Some(previous) => {
                        previous.read_at = Instant::now();
                        previous.failing = true;
                        Ok(previous.header.clone())
                    }
                    None => Err(error),
                }
            }
        }
    }

    fn read(&self) -> Result<HeaderValue, TokenUnavailable> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            TokenUnavailable(format!(
                "cannot read the endpoint token file {}: {e}",
                self.path.display()
            ))
        })?;
        bearer(text.trim()).map_err(|why| {
            TokenUnavailable(format!(
                "the endpoint token file {} {why}",
                self.path.display()
            ))
        })
    }
}

/// An Entra ID token for the endpoint's audience, from the queue's credential.
struct EntraToken {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    cached: Mutex<Option<(HeaderValue, OffsetDateTime)>>,
    /// One token request at a time: concurrent deliveries wait for it instead of each asking.
    refreshing: tokio::sync::Mutex<()>,
}

impl EntraToken {
    fn fresh(&self) -> Option<HeaderValue> {
        let cached = self.cached.lock().ok()?;
        let (header, expires_on) = cached.as_ref()?;
        let left = *expires_on - OffsetDateTime::now_utc();
        (left > REFRESH_BEFORE_EXPIRY).then(|| header.clone())
    }

    async fn header(&self) -> Result<HeaderValue, TokenUnavailable> {
        if let Some(header) = self.fresh() {
            return Ok(header);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(header) = self.fresh() {
            return Ok(header);
        }
        let result = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await;
        let token = match result {
            Ok(token) => token,
            Err(error) => {
                // Already scrubbed and reported by the credential (`auth::entra`).
                let error = redact::secrets(&error_text::one_line(&error));
                let previous = self.cached.lock().ok().and_then(|c| c.clone());
                let usable =
                    previous.filter(|(_, expires_on)| *expires_on > OffsetDateTime::now_utc());
                EndpointTokenFailed {
                    source: "entra-id",
                    error: &error,
                    using_previous: usable.is_some(),
                }
                .emit();
                return usable
                    .map(|(header, _)| header)
                    .ok_or(TokenUnavailable(error));
            }
        };
        let header = bearer(token.token.secret())
            .map_err(|why| TokenUnavailable(format!("the Entra ID access token {why}")))?;
        if let Ok(mut cached) = self.cached.lock() {
            let changed = cached.as_ref().is_some_and(|(h, _)| *h != header);
            if changed {
                EndpointTokenChanged {
                    source: "entra-id",
                    after_unauthorized: false,
                }
                .emit();
            }
            *cached = Some((header.clone(), token.expires_on));
        }
        Ok(header)
    }
}

/// `Bearer <token>` as a sensitive header value (never shown in `Debug`). The reason it cannot
/// be, if the token is empty or has characters a header cannot carry; never the token.
fn bearer(token: &str) -> Result<HeaderValue, &'static str> {
    if token.is_empty() {
        return Err("is empty");
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "holds characters an HTTP header cannot carry")?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenOrigin;

    fn file_auth(path: &std::path::Path) -> EndpointAuth {
        let config = EndpointAuthConfig::TokenFile {
            path: path.to_path_buf(),
            origin: TokenOrigin::Variable,
        };
        let queue =
            Credential::sas(azure_core::credentials::Secret::new("sv=1&sig=x")).expect("sas");
        crate::transport::install_crypto_provider();
        let http = crate::transport::queue_client(false).expect("client");
        EndpointAuth::new(&config, &queue, &http).expect("auth")
    }

    fn value(header: Option<HeaderValue>) -> String {
        header
            .expect("a header")
            .to_str()
            .expect("text")
            .to_string()
    }

    #[tokio::test]
    async fn a_token_file_is_kept_for_the_interval_and_read_at_once_after_a_401() {
        let dir = std::env::temp_dir().join(format!("endpoint-auth-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "first\n").expect("write");
        let auth = file_auth(&path);
        assert!(auth.renewable());
        assert_eq!(value(auth.header().await.expect("token")), "Bearer first");
        std::fs::write(&path, "second").expect("rotate");
        assert_eq!(
            value(auth.header().await.expect("token")),
            "Bearer first",
            "kept within the interval"
        );
        auth.unauthorized();
        assert_eq!(value(auth.header().await.expect("token")), "Bearer second");
        // Gone: the previous token stays in use.
        std::fs::remove_file(&path).expect("remove");
        auth.unauthorized();
        assert_eq!(value(auth.header().await.expect("token")), "Bearer second");
        assert!(!format!("{auth:?}").contains("second"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_header_is_sensitive_and_refuses_what_a_header_cannot_carry() {
        let header = bearer("abc").expect("valid");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("abc"));
        assert_eq!(bearer(""), Err("is empty"));
        assert!(bearer("a\nb").is_err());
    }
}
