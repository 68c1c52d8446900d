//! Microsoft Entra ID: bearer tokens for the queue from a workload identity or a managed identity.
//!
//! In AKS the recommended way to reach storage is workload identity: the pod's projected service
//! account token (`AZURE_FEDERATED_TOKEN_FILE`) is exchanged at the Entra token endpoint for an
//! access token, so no key lives in any Secret. On App Service, VMs and AKS nodes a managed
//! identity hands out tokens from a local endpoint. Both come from the official `azure_identity`
//! crate; the credential selection (`auth::select`) decides which one applies, this module builds it on our own
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

use crate::config::AuthMode;
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use url::Url;

/// An Entra ID identity and its validated inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
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
pub(crate) enum ManagedSource {
    /// `IDENTITY_ENDPOINT` with `IDENTITY_HEADER` (App Service, Container Apps, Functions).
    IdentityEndpoint(Url),
    /// The instance metadata service at 169.254.169.254 (VMs, VM scale sets, AKS nodes).
    Imds,
}

impl Identity {
    /// The short name used in logs, metrics and `AZURE_STORAGE_AUTH`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Identity::Workload { .. } => AuthMode::WorkloadIdentity.as_str(),
            Identity::Managed { .. } => AuthMode::ManagedIdentity.as_str(),
        }
    }
}

/// A token credential for the queue client, built once on the first queue client's transport
/// and shared by every queue client after it, so they share one token cache.
pub(crate) struct TokenAuth {
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
    pub(crate) fn new(identity: Identity) -> Self {
        Self {
            identity,
            built: Mutex::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.identity.kind()
    }

    /// The credential, built on `http` the first time (later calls return the same one).
    pub(crate) fn credential(
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
                FederatedTokenFile::new(token_file.clone()),
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
pub(crate) struct FederatedTokenFile {
    path: PathBuf,
}

impl FederatedTokenFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The current assertion. A small file on a local (tmpfs) volume: a blocking read is
    /// shorter than handing it to another thread.
    pub(crate) fn read(&self) -> azure_core::Result<String> {
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
        let result = super::policy::send_next("the token endpoint watch", ctx, request, next).await;
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
pub(super) mod tests {
    use super::*;

    /// A fresh token file holding `content` (for the unit tests here and in `select`).
    pub(crate) fn token_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "entra-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, content).expect("write token file");
        path
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
}
