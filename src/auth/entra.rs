//! Microsoft Entra ID: bearer tokens for the queue from a workload identity or a managed identity.
//!
//! In AKS the recommended way to reach storage is workload identity: the pod's projected service
//! account token (`AZURE_FEDERATED_TOKEN_FILE`) is exchanged at the Entra token endpoint for an
//! access token, so no key lives in any Secret. On App Service, VMs and AKS nodes a managed
//! identity hands out tokens from a local endpoint. Both come from the official `azure_identity`
//! crate; this module decides which one applies ([`identity_from_env`]), builds it on our own
//! reqwest transport ([`TokenAuth::credential`]) and makes what it does observable.
//!
//! Who does what:
//!
//! - The queue client (`azure_storage_queue`) asks for `https://storage.azure.com/.default`
//!   through azure_core's `BearerTokenAuthorizationPolicy`, which caches the token, refreshes it
//!   five minutes before it expires, and keeps using the cached token if a refresh fails while
//!   it is still valid. Each azure_identity credential has a second cache with the same window.
//! - Token endpoint calls go through an azure_core pipeline with our retry options
//!   ([`token_retry`]): 5xx, 408, 429 and transport errors are retried with exponential backoff.
//!   [`TokenEndpointWatch`] reports each failed attempt; [`ObservedCredential`] reports every
//!   request's outcome; the events log once per change of state (failing / recovered) and
//!   count every request in the metrics.
//! - Workload identity uses azure_identity's `ClientAssertionCredential` with our own
//!   [`FederatedTokenFile`] assertion, which reads the token file at every token request (about
//!   once an hour). azure_identity's `WorkloadIdentityCredential` is the same credential with an
//!   assertion cached for ten minutes; reading the file each time follows kubelet's rotation
//!   exactly and lets the tests prove it without waiting ten minutes.
//!
//! Nothing here logs a token, an assertion or the managed identity header: event text passes
//! through [`redact::secrets`], which also removes anything shaped like a JWT.

use crate::config::ConfigError;
use crate::error_text;
use crate::redact;
use crate::telemetry::events::{
    InternalEvent, TokenAcquired, TokenEndpointAttemptFailed, TokenRequestFailed,
};
use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult, RetryPolicyCount};
use azure_core::http::{
    ClientMethodOptions, ClientOptions, Context, ExponentialRetryOptions, Request, RetryOptions,
    Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use url::Url;

/// The scope every storage token is requested for. The queue client asks for exactly this
/// (it is fixed in `azure_storage_queue`); kept here for documentation and the tests.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// The variable that forces one kind of authentication.
pub const AUTH_VARIABLE: &str = "AZURE_STORAGE_AUTH";

/// What `AZURE_STORAGE_AUTH` may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Key,
    Sas,
    WorkloadIdentity,
    ManagedIdentity,
}

impl AuthMode {
    /// Parses the value of `AZURE_STORAGE_AUTH` (case-insensitive).
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "key" => Ok(AuthMode::Key),
            "sas" => Ok(AuthMode::Sas),
            "workload-identity" => Ok(AuthMode::WorkloadIdentity),
            "managed-identity" => Ok(AuthMode::ManagedIdentity),
            _ => Err(config_error(
                AUTH_VARIABLE,
                format!(
                    "expected key, sas, workload-identity or managed-identity, got {:?}",
                    raw.trim()
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "key",
            AuthMode::Sas => "sas",
            AuthMode::WorkloadIdentity => "workload-identity",
            AuthMode::ManagedIdentity => "managed-identity",
        }
    }

    /// Whether this mode uses an Entra ID identity rather than a shared secret.
    pub fn is_identity(self) -> bool {
        matches!(self, AuthMode::WorkloadIdentity | AuthMode::ManagedIdentity)
    }
}

/// With `AZURE_STORAGE_AUTH=key` or `sas`, the secret found must be of that kind (`is_sas`:
/// the one found is a SAS). The error names the input that should have held the one asked for.
pub fn check_forced_secret(
    mode: Option<AuthMode>,
    is_sas: bool,
    from_connection_string: bool,
) -> Result<(), ConfigError> {
    let (variable, expected) = match (mode, is_sas, from_connection_string) {
        (Some(AuthMode::Key), true, true) => (
            "AZURE_STORAGE_CONNECTION_STRING",
            "holds a SharedAccessSignature, but AZURE_STORAGE_AUTH=key needs AccountName and AccountKey",
        ),
        (Some(AuthMode::Key), true, false) => (
            "AZURE_STORAGE_KEY",
            "not set; AZURE_STORAGE_AUTH=key needs it, with AZURE_STORAGE_ACCOUNT (AZURE_STORAGE_SAS_TOKEN is set instead)",
        ),
        (Some(AuthMode::Sas), false, true) => (
            "AZURE_STORAGE_CONNECTION_STRING",
            "holds an AccountKey, but AZURE_STORAGE_AUTH=sas needs a SharedAccessSignature",
        ),
        (Some(AuthMode::Sas), false, false) => (
            "AZURE_STORAGE_SAS_TOKEN",
            "not set; AZURE_STORAGE_AUTH=sas needs it (AZURE_STORAGE_KEY is set instead)",
        ),
        _ => return Ok(()),
    };
    Err(config_error(variable, expected))
}

/// An Entra ID identity and its validated inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Kubernetes workload identity: a federated service account token exchanged for an
    /// access token at `<authority>/<tenant>/oauth2/v2.0/token`.
    Workload {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
        /// `AZURE_AUTHORITY_HOST`; the public cloud's `https://login.microsoftonline.com` if
        /// unset.
        authority_host: Option<Url>,
    },
    /// A managed identity: system-assigned, or user-assigned when `client_id` is given.
    Managed {
        client_id: Option<String>,
        source: ManagedSource,
    },
}

/// Where a managed identity's tokens come from. azure_identity picks the source itself from
/// the same variables; we mirror its choice for the start log and to refuse the sources it
/// does not support before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedSource {
    /// `IDENTITY_ENDPOINT` with `IDENTITY_HEADER` (App Service, Container Apps, Functions).
    IdentityEndpoint(Url),
    /// The instance metadata service at 169.254.169.254 (VMs, VM scale sets, AKS nodes).
    Imds,
}

impl Identity {
    /// The short name used in logs, metrics and `AZURE_STORAGE_AUTH`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Workload { .. } => AuthMode::WorkloadIdentity.as_str(),
            Identity::Managed { .. } => AuthMode::ManagedIdentity.as_str(),
        }
    }
}

fn config_error(variable: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        expected: expected.into(),
    }
}

/// Reads the identity variables: workload identity if `mode` says so, or (with no mode) if
/// `AZURE_FEDERATED_TOKEN_FILE` is set, as the AKS webhook does; a managed identity otherwise.
/// Every missing or malformed input is a [`ConfigError`] naming its variable.
pub fn identity_from_env(
    lookup: &dyn Fn(&str) -> Option<String>,
    mode: Option<AuthMode>,
) -> Result<Identity, ConfigError> {
    let token_file = lookup("AZURE_FEDERATED_TOKEN_FILE");
    let workload = match mode {
        Some(AuthMode::WorkloadIdentity) => true,
        Some(AuthMode::ManagedIdentity) => false,
        _ => token_file.is_some(),
    };
    let client_id = lookup("AZURE_CLIENT_ID").map(|id| id.trim().to_string());
    if workload {
        workload_identity(lookup, token_file, client_id)
    } else {
        managed_identity(lookup, client_id)
    }
}

fn workload_identity(
    lookup: &dyn Fn(&str) -> Option<String>,
    token_file: Option<String>,
    client_id: Option<String>,
) -> Result<Identity, ConfigError> {
    const WHY: &str = "workload identity needs it (the AKS workload identity webhook sets it when the pod's service account is annotated with azure.workload.identity/client-id and the pod is labelled azure.workload.identity/use=true)";
    let token_file = token_file
        .ok_or_else(|| config_error("AZURE_FEDERATED_TOKEN_FILE", format!("not set; {WHY}")))?;
    let token_file = PathBuf::from(token_file.trim());
    check_token_file(&token_file)?;
    let client_id =
        client_id.ok_or_else(|| config_error("AZURE_CLIENT_ID", format!("not set; {WHY}")))?;
    let tenant_id = lookup("AZURE_TENANT_ID")
        .map(|id| id.trim().to_string())
        .ok_or_else(|| config_error("AZURE_TENANT_ID", format!("not set; {WHY}")))?;
    // The same rule azure_identity applies, checked here so a typo fails at start.
    let tenant_valid = tenant_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !tenant_valid {
        return Err(config_error(
            "AZURE_TENANT_ID",
            format!("expected a tenant ID (a GUID) or domain, got {tenant_id:?}"),
        ));
    }
    let authority_host = lookup("AZURE_AUTHORITY_HOST")
        .map(|raw| parse_authority_host(&raw))
        .transpose()?;
    Ok(Identity::Workload {
        tenant_id,
        client_id,
        token_file,
        authority_host,
    })
}

/// The token file must be there at start (the kubelet writes it before the container starts);
/// its content is a credential and never echoed.
fn check_token_file(path: &Path) -> Result<(), ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().any(|b| !b.is_ascii_whitespace()) => Ok(()),
        Ok(_) => Err(config_error(
            "AZURE_FEDERATED_TOKEN_FILE",
            format!(
                "{} is empty; expected the projected service account token",
                path.display()
            ),
        )),
        Err(e) => Err(config_error(
            "AZURE_FEDERATED_TOKEN_FILE",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn parse_authority_host(raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw.trim()) {
        Ok(url) if url.scheme() == "https" && url.host_str().is_some() => Ok(url),
        _ => Err(config_error(
            "AZURE_AUTHORITY_HOST",
            format!(
                "expected an https URL such as https://login.microsoftonline.com/, got {}",
                redact::url_text(raw)
            ),
        )),
    }
}

fn managed_identity(
    lookup: &dyn Fn(&str) -> Option<String>,
    client_id: Option<String>,
) -> Result<Identity, ConfigError> {
    if lookup("MSI_ENDPOINT").is_some() {
        return Err(config_error(
            "MSI_ENDPOINT",
            "is set (Cloud Shell or Azure ML managed identity), which azure_identity 1.0 does not support; use workload identity, a key or a SAS",
        ));
    }
    let source = match lookup("IDENTITY_ENDPOINT") {
        None => ManagedSource::Imds,
        Some(raw) => {
            let endpoint = match Url::parse(raw.trim()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                    url
                }
                _ => {
                    return Err(config_error(
                        "IDENTITY_ENDPOINT",
                        format!(
                            "expected the managed identity endpoint URL, e.g. http://localhost:8081/msi/token, got {}",
                            redact::url_text(&raw)
                        ),
                    ))
                }
            };
            if lookup("IDENTITY_HEADER").is_none() {
                return Err(config_error(
                    "IDENTITY_HEADER",
                    "not set; IDENTITY_ENDPOINT needs it (without it this is Azure Arc, which azure_identity 1.0 does not support)",
                ));
            }
            if lookup("IDENTITY_SERVER_THUMBPRINT").is_some() {
                return Err(config_error(
                    "IDENTITY_SERVER_THUMBPRINT",
                    "is set (Service Fabric managed identity), which azure_identity 1.0 does not support",
                ));
            }
            ManagedSource::IdentityEndpoint(endpoint)
        }
    };
    Ok(Identity::Managed { client_id, source })
}

/// A token credential for the queue client, built once on the first queue client's transport
/// and shared by every queue client after it, so they share one token cache.
pub struct TokenAuth {
    identity: Identity,
    built: Mutex<Option<Arc<dyn TokenCredential>>>,
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TokenAuth {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            built: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn kind(&self) -> &'static str {
        self.identity.kind()
    }

    /// The credential, built on `http` the first time (later calls return the same one).
    pub fn credential(
        &self,
        http: &reqwest::Client,
    ) -> azure_core::Result<Arc<dyn TokenCredential>> {
        // A poisoned lock only means another thread panicked while building; the slot is
        // still either empty or a complete credential.
        let mut slot = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(credential) = slot.as_ref() {
            return Ok(credential.clone());
        }
        let credential = build(&self.identity, http)?;
        *slot = Some(credential.clone());
        Ok(credential)
    }
}

/// Token endpoint retries: a few attempts over up to half a minute. The receive loop backs off
/// further on top (and the queue client keeps a cached token while it is valid), so these only
/// need to ride out a blip. IMDS overrides them with Microsoft's own guidance (up to 72 s).
fn token_retry() -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(500),
        max_retries: 4,
        max_total_elapsed: azure_core::time::Duration::seconds(30),
        max_delay: azure_core::time::Duration::seconds(8),
    })
}

fn build(
    identity: &Identity,
    http: &reqwest::Client,
) -> azure_core::Result<Arc<dyn TokenCredential>> {
    let kind = identity.kind();
    let mut client_options = ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        per_try_policies: vec![Arc::new(TokenEndpointWatch { identity: kind })],
        retry: token_retry(),
        ..Default::default()
    };
    let inner: Arc<dyn TokenCredential> = match identity {
        Identity::Workload {
            tenant_id,
            client_id,
            token_file,
            authority_host,
        } => {
            // Passed explicitly rather than left to azure_identity's own reading of
            // AZURE_AUTHORITY_HOST, so what was validated is what is used.
            let cloud = match authority_host {
                Some(host) => {
                    let mut custom = CustomConfiguration::default();
                    custom.authority_host = host.to_string();
                    CloudConfiguration::Custom(custom)
                }
                None => CloudConfiguration::AzurePublic,
            };
            client_options.cloud = Some(Arc::new(cloud));
            let options = ClientAssertionCredentialOptions { client_options };
            ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                FederatedTokenFile {
                    path: token_file.clone(),
                },
                Some(options),
            )?
        }
        Identity::Managed { client_id, .. } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            };
            ManagedIdentityCredential::new(Some(options))?
        }
    };
    Ok(Arc::new(ObservedCredential {
        inner,
        identity: kind,
    }))
}

/// The projected service account token, read from its file at every token request: the
/// kubelet replaces it well before it expires, and a request happens about once an hour, so
/// reading it each time costs nothing and never sends a stale assertion.
#[derive(Debug)]
pub struct FederatedTokenFile {
    path: PathBuf,
}

impl FederatedTokenFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The current assertion. A small file on a local (tmpfs) volume: a blocking read is
    /// shorter than handing it to another thread.
    pub fn read(&self) -> azure_core::Result<String> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!(
                    "cannot read the federated token file {}: {e}",
                    self.path.display()
                ),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("the federated token file {} is empty", self.path.display()),
            ));
        }
        Ok(token.to_string())
    }
}

#[async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.read()
    }
}

/// Reports every failed token endpoint attempt (status or transport error, never the body);
/// the event logs it while the identity works, and only counts it once it is failing.
#[derive(Debug)]
struct TokenEndpointWatch {
    identity: &'static str,
}

#[async_trait]
impl Policy for TokenEndpointWatch {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let attempt = ctx.value::<RetryPolicyCount>().map_or(0, |n| **n) + 1;
        let result = super::send_next("the token endpoint watch", ctx, request, next).await;
        let failure = match &result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some((Some(u16::from(response.status())), String::new())),
            Err(error) => Some((None, redact::secrets(&error_text::one_line(error)))),
        };
        if let Some((status, error)) = failure {
            TokenEndpointAttemptFailed {
                identity: self.identity,
                attempt,
                status,
                error: &error,
            }
            .emit();
        }
        result
    }
}

/// Wraps the azure_identity credential: reports every token request's outcome (the events
/// log when tokens start failing, when they come back, and each token acquired, about
/// hourly); error text made single-line and scrubbed.
struct ObservedCredential {
    inner: Arc<dyn TokenCredential>,
    identity: &'static str,
}

impl fmt::Debug for ObservedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedCredential")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenCredential for ObservedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        match self.inner.get_token(scopes, options).await {
            Ok(token) => {
                TokenAcquired {
                    identity: self.identity,
                    expires_in: (token.expires_on - OffsetDateTime::now_utc())
                        .try_into()
                        .unwrap_or_default(),
                }
                .emit();
                Ok(token)
            }
            Err(error) => {
                let message = redact::secrets(&error_text::one_line(&error));
                TokenRequestFailed {
                    identity: self.identity,
                    error: &message,
                }
                .emit();
                Err(azure_core::Error::with_message(
                    ErrorKind::Credential,
                    message,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn token_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "entra-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, content).expect("write token file");
        path
    }

    #[test]
    fn modes_parse_case_insensitively_and_name_the_variable() {
        assert_eq!(
            AuthMode::parse("Workload-Identity"),
            Ok(AuthMode::WorkloadIdentity)
        );
        assert_eq!(AuthMode::parse(" key "), Ok(AuthMode::Key));
        assert_eq!(AuthMode::parse("sas"), Ok(AuthMode::Sas));
        assert_eq!(
            AuthMode::parse("managed-identity"),
            Ok(AuthMode::ManagedIdentity)
        );
        let err = AuthMode::parse("aad").expect_err("unknown mode");
        assert_eq!(err.variable, AUTH_VARIABLE);
        assert!(err.expected.contains("workload-identity"));
    }

    #[test]
    fn the_token_file_selects_workload_identity() {
        let file = token_file("eyJhbGciOi.eyJzdWIiOi.sig");
        let path = file.to_string_lossy().into_owned();
        let env = lookup(&[
            ("AZURE_FEDERATED_TOKEN_FILE", &path),
            ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
        ]);
        let identity = identity_from_env(&env, None).expect("workload identity");
        assert_eq!(identity.kind(), "workload-identity");
        let Identity::Workload {
            authority_host,
            token_file: read_path,
            ..
        } = identity
        else {
            panic!("expected workload identity");
        };
        assert_eq!(
            authority_host.map(|u| u.to_string()),
            Some("https://login.microsoftonline.us/".to_string())
        );
        assert_eq!(read_path, file);
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn workload_identity_names_each_missing_input() {
        let file = token_file("assertion");
        let path = file.to_string_lossy().into_owned();
        let forced = Some(AuthMode::WorkloadIdentity);
        let err = |vars: &[(&str, &str)], mode| {
            identity_from_env(&lookup(vars), mode)
                .expect_err("invalid")
                .variable
        };
        assert_eq!(err(&[], forced), "AZURE_FEDERATED_TOKEN_FILE");
        assert_eq!(
            err(&[("AZURE_FEDERATED_TOKEN_FILE", &path)], None),
            "AZURE_CLIENT_ID"
        );
        assert_eq!(
            err(
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", &path),
                    ("AZURE_CLIENT_ID", "c")
                ],
                None
            ),
            "AZURE_TENANT_ID"
        );
        let base = [
            ("AZURE_FEDERATED_TOKEN_FILE", path.as_str()),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut vars = base.to_vec();
            vars.push(extra);
            err(&vars, None)
        };
        assert_eq!(with(("AZURE_TENANT_ID", "bad/tenant")), "AZURE_TENANT_ID");
        assert_eq!(
            with(("AZURE_AUTHORITY_HOST", "http://login.local/")),
            "AZURE_AUTHORITY_HOST"
        );
        assert_eq!(
            err(
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token"),
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_TENANT_ID", "t"),
                ],
                None
            ),
            "AZURE_FEDERATED_TOKEN_FILE"
        );
        let empty = token_file(" \n");
        let empty_path = empty.to_string_lossy().into_owned();
        assert_eq!(
            err(
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", &empty_path),
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_TENANT_ID", "t"),
                ],
                None
            ),
            "AZURE_FEDERATED_TOKEN_FILE"
        );
        let _ = std::fs::remove_file(file);
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn managed_identity_sources_are_checked() {
        let identity = identity_from_env(&lookup(&[("AZURE_CLIENT_ID", "uami")]), None)
            .expect("managed identity");
        assert_eq!(
            identity,
            Identity::Managed {
                client_id: Some("uami".into()),
                source: ManagedSource::Imds
            }
        );
        let app_service = identity_from_env(
            &lookup(&[
                ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
                ("IDENTITY_HEADER", "h"),
            ]),
            Some(AuthMode::ManagedIdentity),
        )
        .expect("app service");
        assert!(matches!(
            app_service,
            Identity::Managed {
                client_id: None,
                source: ManagedSource::IdentityEndpoint(_)
            }
        ));
        let err = |vars: &[(&str, &str)]| {
            identity_from_env(&lookup(vars), None)
                .expect_err("invalid")
                .variable
        };
        assert_eq!(
            err(&[("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token")]),
            "IDENTITY_HEADER"
        );
        assert_eq!(
            err(&[("IDENTITY_ENDPOINT", "not a url"), ("IDENTITY_HEADER", "h")]),
            "IDENTITY_ENDPOINT"
        );
        assert_eq!(
            err(&[
                (
                    "IDENTITY_ENDPOINT",
                    "https://localhost:2377/metadata/identity/oauth2/token"
                ),
                ("IDENTITY_HEADER", "h"),
                ("IDENTITY_SERVER_THUMBPRINT", "abc"),
            ]),
            "IDENTITY_SERVER_THUMBPRINT"
        );
        assert_eq!(
            err(&[("MSI_ENDPOINT", "http://localhost:50342/oauth2/token")]),
            "MSI_ENDPOINT"
        );
    }

    #[test]
    fn forcing_managed_identity_ignores_the_token_file() {
        let identity = identity_from_env(
            &lookup(&[("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/token")]),
            Some(AuthMode::ManagedIdentity),
        )
        .expect("managed identity");
        assert_eq!(identity.kind(), "managed-identity");
    }

    #[test]
    fn the_token_file_is_read_at_every_request() {
        let path = token_file("first\n");
        let assertion = FederatedTokenFile::new(path.clone());
        assert_eq!(assertion.read().expect("read"), "first");
        std::fs::write(&path, "second").expect("rotate");
        assert_eq!(assertion.read().expect("read"), "second");
        std::fs::write(&path, "").expect("truncate");
        let err = assertion.read().expect_err("empty");
        assert!(err.to_string().contains("is empty"));
        let _ = std::fs::remove_file(&path);
        let err = assertion.read().expect_err("gone");
        assert!(err
            .to_string()
            .contains("cannot read the federated token file"));
    }

    /// The whole selection, through the configuration as the binary reads it.
    mod selection {
        use crate::auth::Credential;
        use crate::config::{Config, ConfigError};
        use std::collections::HashMap;

        const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

        fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
            let mut map: HashMap<String, String> = [
                ("QUEUE_NAME", "orders"),
                ("ENDPOINT_URL", "http://127.0.0.1:8080/"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            for (k, v) in vars {
                map.insert(k.to_string(), v.to_string());
            }
            Config::from_lookup(move |name| map.get(name).cloned())
        }

        fn kind(vars: &[(&str, &str)]) -> &'static str {
            config(vars)
                .expect("valid config")
                .storage
                .credential
                .kind()
        }

        fn variable(vars: &[(&str, &str)]) -> &'static str {
            config(vars).expect_err("invalid config").variable
        }

        fn wi_vars(file: &str) -> Vec<(&str, &str)> {
            vec![
                ("AZURE_FEDERATED_TOKEN_FILE", file),
                ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
                ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ]
        }

        #[test]
        fn automatic_selection() {
            let file = super::token_file("assertion");
            let path = file.to_string_lossy().into_owned();
            // An account alone: managed identity, on the public endpoint, over https.
            let cfg = config(&[("AZURE_STORAGE_ACCOUNT", "acct")]).expect("valid");
            assert_eq!(cfg.storage.credential.kind(), "managed-identity");
            assert_eq!(
                cfg.storage.queue_url.as_str(),
                "https://acct.queue.core.windows.net/orders"
            );
            assert_eq!(
                kind(&[(
                    "AZURE_STORAGE_QUEUE_ENDPOINT",
                    "https://acct.queue.core.windows.net"
                )]),
                "managed-identity"
            );
            // The webhook's variables: workload identity.
            let mut vars = wi_vars(&path);
            vars.push(("AZURE_STORAGE_ACCOUNT", "acct"));
            assert_eq!(kind(&vars), "workload-identity");
            // A key or SAS given explicitly wins over the ambient identity variables.
            let mut with_key = vars.clone();
            with_key.push(("AZURE_STORAGE_KEY", KEY));
            assert_eq!(kind(&with_key), "shared-key");
            let mut with_sas = vars.clone();
            with_sas.push(("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=abc"));
            assert_eq!(kind(&with_sas), "sas");
            // Identity variables without an account or endpoint: say which one is missing.
            assert_eq!(variable(&wi_vars(&path)), "AZURE_STORAGE_ACCOUNT");
            // Nothing at all: the connection string is the first thing to set.
            assert_eq!(variable(&[]), "AZURE_STORAGE_CONNECTION_STRING");
            let _ = std::fs::remove_file(file);
        }

        #[test]
        fn forced_modes_name_what_they_lack() {
            let file = super::token_file("assertion");
            let path = file.to_string_lossy().into_owned();
            fn auth<'a>(mode: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
                let mut vars = vec![("AZURE_STORAGE_AUTH", mode)];
                vars.extend_from_slice(extra);
                vars
            }
            let account = ("AZURE_STORAGE_ACCOUNT", "acct");

            assert_eq!(variable(&auth("oauth", &[account])), "AZURE_STORAGE_AUTH");
            assert_eq!(variable(&auth("key", &[account])), "AZURE_STORAGE_KEY");
            assert_eq!(
                variable(&auth("sas", &[account])),
                "AZURE_STORAGE_SAS_TOKEN"
            );
            assert_eq!(
                variable(&auth(
                    "key",
                    &[account, ("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=a")]
                )),
                "AZURE_STORAGE_KEY"
            );
            assert_eq!(
                variable(&auth("sas", &[account, ("AZURE_STORAGE_KEY", KEY)])),
                "AZURE_STORAGE_SAS_TOKEN"
            );
            assert_eq!(
                variable(&auth(
                    "sas",
                    &[(
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "UseDevelopmentStorage=true"
                    )]
                )),
                "AZURE_STORAGE_CONNECTION_STRING"
            );
            assert_eq!(
                kind(&auth(
                    "key",
                    &[(
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "UseDevelopmentStorage=true"
                    )]
                )),
                "shared-key"
            );
            assert_eq!(
                variable(&auth("workload-identity", &[account])),
                "AZURE_FEDERATED_TOKEN_FILE"
            );
            assert_eq!(
                variable(&auth(
                    "workload-identity",
                    &[account, ("AZURE_FEDERATED_TOKEN_FILE", path.as_str())]
                )),
                "AZURE_CLIENT_ID"
            );
            let mut wi = auth("workload-identity", &[account]);
            wi.extend(wi_vars(&path));
            assert_eq!(kind(&wi), "workload-identity");
            // A forced identity refuses a leftover secret, and never sends tokens over http.
            let mut stale = wi.clone();
            stale.push(("AZURE_STORAGE_KEY", KEY));
            let err = config(&stale).expect_err("stale key");
            assert_eq!(err.variable, "AZURE_STORAGE_KEY");
            assert!(!err.to_string().contains(KEY));
            let mut plain = auth("managed-identity", &[]);
            plain.push((
                "AZURE_STORAGE_QUEUE_ENDPOINT",
                "http://127.0.0.1:10001/devstoreaccount1",
            ));
            assert_eq!(variable(&plain), "AZURE_STORAGE_QUEUE_ENDPOINT");
            // Forcing managed identity with the webhook's variables present uses the managed one.
            let mut mi = auth("managed-identity", &[account]);
            mi.extend(wi_vars(&path));
            let cfg = config(&mi).expect("valid");
            let Credential::Token(token) = &cfg.storage.credential else {
                panic!("expected a token credential");
            };
            assert_eq!(
                token.identity(),
                &super::Identity::Managed {
                    client_id: Some("11111111-2222-3333-4444-555555555555".into()),
                    source: super::ManagedSource::Imds
                }
            );
            let _ = std::fs::remove_file(file);
        }
    }
}
