//! The storage account side, as given: which queue, the service URL if one was named, and
//! which credential variables are set.
//!
//! This is plain data. Which credential those variables add up to — a key, a SAS, a workload
//! or managed identity — and whether they contradict each other is decided one layer up, by
//! the credential selection in `auth::select`, which also works out the queue's URL. Only
//! what is pure syntax is checked here: the forced mode (`AZURE_STORAGE_AUTH`), the endpoint
//! URL and the plain-http permission.

use super::values::{ConfigError, Env};
use azure_core::credentials::Secret;
use url::Url;

/// The variable that forces one kind of authentication.
pub(crate) const AUTH_VARIABLE: &str = "AZURE_STORAGE_AUTH";
/// The variable that lets a key or SAS travel over plain http to a remote host.
pub(crate) const ALLOW_HTTP: &str = "AZURE_STORAGE_ALLOW_HTTP";

/// What `AZURE_STORAGE_AUTH` may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMode {
    Key,
    Sas,
    WorkloadIdentity,
    ManagedIdentity,
}

impl AuthMode {
    /// Parses the value of `AZURE_STORAGE_AUTH` (case-insensitive).
    pub(crate) fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "key" => Ok(AuthMode::Key),
            "sas" => Ok(AuthMode::Sas),
            "workload-identity" => Ok(AuthMode::WorkloadIdentity),
            "managed-identity" => Ok(AuthMode::ManagedIdentity),
            _ => Err(ConfigError::new(
                AUTH_VARIABLE,
                format!(
                    "expected key, sas, workload-identity or managed-identity, got {:?}",
                    raw.trim()
                ),
            )),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "key",
            AuthMode::Sas => "sas",
            AuthMode::WorkloadIdentity => "workload-identity",
            AuthMode::ManagedIdentity => "managed-identity",
        }
    }

    /// Whether this mode uses an Entra ID identity rather than a shared secret.
    pub(crate) fn is_identity(self) -> bool {
        matches!(self, AuthMode::WorkloadIdentity | AuthMode::ManagedIdentity)
    }
}

/// The Microsoft Entra ID variables, as given (the AKS webhook and Azure's hosts set them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdentityVariables {
    /// `AZURE_FEDERATED_TOKEN_FILE`: the projected service account token's path.
    pub federated_token_file: Option<String>,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_AUTHORITY_HOST`, unparsed: only workload identity uses it.
    pub authority_host: Option<String>,
    /// `IDENTITY_ENDPOINT`, unparsed: only a managed identity uses it.
    pub identity_endpoint: Option<String>,
    /// Whether `IDENTITY_HEADER` is set (its value is a secret azure_identity reads itself).
    pub identity_header: bool,
    /// Whether `MSI_ENDPOINT` is set (Cloud Shell, Azure ML: not supported).
    pub msi_endpoint: bool,
    /// Whether `IDENTITY_SERVER_THUMBPRINT` is set (Service Fabric: not supported).
    pub identity_server_thumbprint: bool,
}

impl IdentityVariables {
    /// Reads the identity variables from `lookup` (empty values already count as unset).
    pub(crate) fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            federated_token_file: lookup("AZURE_FEDERATED_TOKEN_FILE"),
            client_id: lookup("AZURE_CLIENT_ID"),
            tenant_id: lookup("AZURE_TENANT_ID"),
            authority_host: lookup("AZURE_AUTHORITY_HOST"),
            identity_endpoint: lookup("IDENTITY_ENDPOINT"),
            identity_header: lookup("IDENTITY_HEADER").is_some(),
            msi_endpoint: lookup("MSI_ENDPOINT").is_some(),
            identity_server_thumbprint: lookup("IDENTITY_SERVER_THUMBPRINT").is_some(),
        }
    }
}

/// Which queue, and the storage account's variables as given.
#[derive(Debug, Clone)]
pub(crate) struct StorageConfig {
    /// The queue's name.
    pub queue_name: String,
    /// `AZURE_STORAGE_AUTH`, if it forces a kind of authentication.
    pub auth_mode: Option<AuthMode>,
    /// `AZURE_STORAGE_CONNECTION_STRING`, unparsed (see `config::connection_string`): whether
    /// it is used at all depends on the other variables.
    pub connection_string: Option<Secret>,
    /// `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    /// `AZURE_STORAGE_KEY`.
    pub key: Option<Secret>,
    /// `AZURE_STORAGE_SAS_TOKEN`.
    pub sas: Option<Secret>,
    /// `AZURE_STORAGE_QUEUE_ENDPOINT`: the queue service's URL, never with a query.
    pub queue_endpoint: Option<Url>,
    /// `AZURE_STORAGE_ALLOW_HTTP`.
    pub allow_http: bool,
    pub identity: IdentityVariables,
}

impl StorageConfig {
    /// Whether a key or SAS (in the variables or the connection string) was given.
    pub(crate) fn has_secret(&self) -> bool {
        self.connection_string.is_some() || self.key.is_some() || self.sas.is_some()
    }
}

pub(super) fn storage_config(env: &Env, queue_name: String) -> Result<StorageConfig, ConfigError> {
    let auth_mode = env
        .get(AUTH_VARIABLE)
        .map(|raw| AuthMode::parse(&raw))
        .transpose()?;
    let queue_endpoint = env
        .get("AZURE_STORAGE_QUEUE_ENDPOINT")
        .map(|raw| parse_service_url(&raw))
        .transpose()?;
    Ok(StorageConfig {
        queue_name,
        auth_mode,
        connection_string: env.get("AZURE_STORAGE_CONNECTION_STRING").map(Secret::new),
        account: env
            .get("AZURE_STORAGE_ACCOUNT")
            .map(|a| a.trim().to_string()),
        key: env.secret("AZURE_STORAGE_KEY"),
        sas: env.secret("AZURE_STORAGE_SAS_TOKEN"),
        queue_endpoint,
        allow_http: env.flag(ALLOW_HTTP)?,
        identity: IdentityVariables::from_lookup(&|name| env.get(name)),
    })
}

/// Parses a queue service URL. A query string is refused: a SAS pasted into the endpoint would
/// end up in logs and in the CloudEvent `source`.
pub(crate) fn parse_service_url(raw: &str) -> Result<Url, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
