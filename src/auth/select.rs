//! Credential selection: from the storage variables as given (`config::StorageConfig`) to the
//! queue's URL and the [`Credential`] its requests are authorized with.
//!
//! The rules (README, *Authentication*): exactly one credential source — a connection string,
//! or the account variables with a key, a SAS or an identity; a key or SAS wins over the
//! ambient identity variables; with neither, an account or endpoint means a Microsoft Entra ID
//! identity (workload identity if `AZURE_FEDERATED_TOKEN_FILE` is set, a managed identity
//! otherwise); `AZURE_STORAGE_AUTH` forces one of the four and names whatever input it lacks.
//! A key or SAS goes over plain http only to loopback unless `AZURE_STORAGE_ALLOW_HTTP`; a
//! token never does. Every mistake is a [`ConfigError`] naming its variable, raised at start
//! like any other configuration error (exit status 2), before any network call.

use super::credential::Credential;
use super::entra::{Identity, ManagedSource};
use crate::config::connection_string::{self, ConnectionString};
use crate::config::storage::{parse_service_url, ALLOW_HTTP, AUTH_VARIABLE};
use crate::config::{AuthMode, ConfigError, IdentityVariables, StorageConfig};
use crate::redact;
use std::path::{Path, PathBuf};
use url::Url;

/// The storage account as the sidecar reaches it: the queues' URLs and the credential.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    /// The queue's URL, e.g. `https://acct.queue.core.windows.net/orders`. Never carries a SAS.
    pub queue_url: Url,
    /// The poison queue's URL (same account).
    pub poison_queue_url: Url,
    /// How requests are authorized.
    pub credential: Credential,
}

impl Storage {
    /// Whether the queue side may speak TLS: an `https` queue, or a token credential (its
    /// token endpoints are https even when the queue is Azurite over plain http).
    pub(crate) fn needs_tls(&self) -> bool {
        self.queue_url.scheme() != "http" || matches!(self.credential, Credential::Token(_))
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
pub(crate) fn select(
    config: &StorageConfig,
    poison_queue_name: &str,
) -> Result<Storage, ConfigError> {
    const CS: &str = "AZURE_STORAGE_CONNECTION_STRING";
    let mode = config.auth_mode;
    let connection_string = config.connection_string.as_ref();
    let account = config.account.clone();
    let key = config.key.clone();
    let sas = config.sas.clone();
    let endpoint_override = config.queue_endpoint.clone();

    // Where the service URL comes from, for the plain-http rule below.
    let endpoint_variable = match (&endpoint_override, &connection_string) {
        (Some(_), _) => "AZURE_STORAGE_QUEUE_ENDPOINT",
        (None, Some(_)) => CS,
        (None, None) => "AZURE_STORAGE_ACCOUNT",
    };
    let allow_http = config.allow_http;

    let no_secret = !config.has_secret();
    let identity_wanted = match mode {
        Some(mode) => mode.is_identity(),
        None => {
            no_secret
                && (account.is_some()
                    || endpoint_override.is_some()
                    || config.identity.federated_token_file.is_some())
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
                    AUTH_VARIABLE,
                    mode.map_or("", AuthMode::as_str)
                ),
            ));
        }
        let identity = identity(&config.identity, mode)?;
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
        let parsed: ConnectionString = connection_string::parse(raw.secret())
            .map_err(|e| ConfigError::new(CS, e.to_string()))?;
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
        check_forced_secret(mode, matches!(credential, Credential::Sas(_)), true)?;
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
                    Some(AuthMode::Key) => ConfigError::new(
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
        check_forced_secret(mode, matches!(credential, Credential::Sas(_)), false)?;
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

    Ok(Storage {
        queue_url: queue_url(&service_url, &config.queue_name),
        poison_queue_url: queue_url(&service_url, poison_queue_name),
        credential,
    })
}

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

/// `service/` + queue name, keeping any path prefix (Azurite's path-style `/devstoreaccount1`).
fn queue_url(service: &Url, queue_name: &str) -> Url {
    let mut url = service.clone();
    let path = format!("{}/{}", service.path().trim_end_matches('/'), queue_name);
    url.set_path(&path);
    url.set_fragment(None);
    url
}

/// With `AZURE_STORAGE_AUTH=key` or `sas`, the secret found must be of that kind (`is_sas`:
/// the one found is a SAS). The error names the input that should have held the one asked for.
fn check_forced_secret(
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
    Err(ConfigError::new(variable, expected))
}

/// Reads the identity variables: workload identity if `mode` says so, or (with no mode) if
/// `AZURE_FEDERATED_TOKEN_FILE` is set, as the AKS webhook does; a managed identity otherwise.
/// Every missing or malformed input is a [`ConfigError`] naming its variable.
fn identity(vars: &IdentityVariables, mode: Option<AuthMode>) -> Result<Identity, ConfigError> {
    let token_file = vars.federated_token_file.clone();
    let workload = match mode {
        Some(AuthMode::WorkloadIdentity) => true,
        Some(AuthMode::ManagedIdentity) => false,
        _ => token_file.is_some(),
    };
    let client_id = vars.client_id.as_ref().map(|id| id.trim().to_string());
    if workload {
        workload_identity(vars, token_file, client_id)
    } else {
        managed_identity(vars, client_id)
    }
}

fn workload_identity(
    vars: &IdentityVariables,
    token_file: Option<String>,
    client_id: Option<String>,
) -> Result<Identity, ConfigError> {
    const WHY: &str = "workload identity needs it (the AKS workload identity webhook sets it when the pod's service account is annotated with azure.workload.identity/client-id and the pod is labelled azure.workload.identity/use=true)";
    let token_file = token_file
        .ok_or_else(|| ConfigError::new("AZURE_FEDERATED_TOKEN_FILE", format!("not set; {WHY}")))?;
    let token_file = PathBuf::from(token_file.trim());
    check_token_file(&token_file)?;
    let client_id =
        client_id.ok_or_else(|| ConfigError::new("AZURE_CLIENT_ID", format!("not set; {WHY}")))?;
    let tenant_id = vars
        .tenant_id
        .as_ref()
        .map(|id| id.trim().to_string())
        .ok_or_else(|| ConfigError::new("AZURE_TENANT_ID", format!("not set; {WHY}")))?;
    // The same rule azure_identity applies, checked here so a typo fails at start.
    let tenant_valid = tenant_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !tenant_valid {
        return Err(ConfigError::new(
            "AZURE_TENANT_ID",
            format!("expected a tenant ID (a GUID) or domain, got {tenant_id:?}"),
        ));
    }
    let authority_host = vars
        .authority_host
        .as_ref()
        .map(|raw| parse_authority_host(raw))
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
        Ok(_) => Err(ConfigError::new(
            "AZURE_FEDERATED_TOKEN_FILE",
            format!(
                "{} is empty; expected the projected service account token",
                path.display()
            ),
        )),
        Err(e) => Err(ConfigError::new(
            "AZURE_FEDERATED_TOKEN_FILE",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn parse_authority_host(raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw.trim()) {
        Ok(url) if url.scheme() == "https" && url.host_str().is_some() => Ok(url),
        _ => Err(ConfigError::new(
            "AZURE_AUTHORITY_HOST",
            format!(
                "expected an https URL such as https://login.microsoftonline.com/, got {}",
                redact::url_text(raw)
            ),
        )),
    }
}

fn managed_identity(
    vars: &IdentityVariables,
    client_id: Option<String>,
) -> Result<Identity, ConfigError> {
    if vars.msi_endpoint {
        return Err(ConfigError::new(
            "MSI_ENDPOINT",
            "is set (Cloud Shell or Azure ML managed identity), which azure_identity 1.0 does not support; use workload identity, a key or a SAS",
        ));
    }
    let source = match &vars.identity_endpoint {
        None => ManagedSource::Imds,
        Some(raw) => {
            let endpoint = match Url::parse(raw.trim()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                    url
                }
                _ => {
                    return Err(ConfigError::new(
                        "IDENTITY_ENDPOINT",
                        format!(
                            "expected the managed identity endpoint URL, e.g. http://localhost:8081/msi/token, got {}",
                            redact::url_text(raw)
                        ),
                    ))
                }
            };
            if !vars.identity_header {
                return Err(ConfigError::new(
                    "IDENTITY_HEADER",
                    "not set; IDENTITY_ENDPOINT needs it (without it this is Azure Arc, which azure_identity 1.0 does not support)",
                ));
            }
            if vars.identity_server_thumbprint {
                return Err(ConfigError::new(
                    "IDENTITY_SERVER_THUMBPRINT",
                    "is set (Service Fabric managed identity), which azure_identity 1.0 does not support",
                ));
            }
            ManagedSource::IdentityEndpoint(endpoint)
        }
    };
    Ok(Identity::Managed { client_id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::entra::tests::token_file;
    use crate::config::ops::LogFormat;
    use crate::config::test_env::{base, lookup};
    use crate::config::variables::DEFAULT_CE_TYPE;
    use crate::config::{Config, ContentMode, VARIABLES};
    use std::time::Duration;

    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// The configuration and the storage it selects, as the binary reads them. Derefs to the
    /// configuration, so `cfg.batch_size` and `cfg.storage.credential` both read naturally.
    #[derive(Debug)]
    struct Settings {
        config: Config,
        storage: Storage,
    }

    impl std::ops::Deref for Settings {
        type Target = Config;
        fn deref(&self) -> &Config {
            &self.config
        }
    }

    fn settings(
        lookup: impl Fn(&str) -> Option<String> + 'static,
    ) -> Result<Settings, ConfigError> {
        let config = Config::from_lookup(lookup)?;
        let storage = select(&config.storage, &config.retry.poison_queue_name)?;
        Ok(Settings { config, storage })
    }

    fn config(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        settings(lookup(vars))
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
        assert_eq!(cfg.endpoint.timeout, Duration::from_secs(30));
        assert_eq!(cfg.event.ce_type, DEFAULT_CE_TYPE);
        assert_eq!(cfg.event.mode, ContentMode::Binary);
        assert!(!cfg.event.decode_base64);
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.retry.base_delay, Duration::from_secs(1));
        assert_eq!(cfg.retry.max_delay, Duration::from_secs(300));
        assert_eq!(cfg.retry.max_dequeue_count, 5);
        assert_eq!(cfg.retry.poison_queue_name, "orders-poison");
        assert_eq!(
            cfg.storage.poison_queue_url.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/orders-poison"
        );
        assert!(!cfg.retry.create_poison_queue);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(
            cfg.storage.queue_url.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/orders"
        );
        assert_eq!(
            cfg.event.source_or(&cfg.storage.queue_url),
            "http://127.0.0.1:10001/devstoreaccount1/orders"
        );
        for doc in VARIABLES {
            assert!(!doc.help.is_empty(), "{} is documented", doc.name);
        }
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

    /// The identity the variables of `lookup` describe, read as the configuration reads them.
    fn identity_from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
        mode: Option<AuthMode>,
    ) -> Result<Identity, ConfigError> {
        identity(&IdentityVariables::from_lookup(lookup), mode)
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

    /// The whole selection, through the configuration as the binary reads it.
    mod selection {
        use super::super::select;
        use crate::auth::Credential;
        use crate::config::{Config, ConfigError};
        use std::collections::HashMap;

        const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

        fn config(vars: &[(&str, &str)]) -> Result<super::super::Storage, ConfigError> {
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
            let config = Config::from_lookup(move |name| map.get(name).cloned())?;
            select(&config.storage, &config.retry.poison_queue_name)
        }

        fn kind(vars: &[(&str, &str)]) -> &'static str {
            config(vars).expect("valid config").credential.kind()
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
            assert_eq!(cfg.credential.kind(), "managed-identity");
            assert_eq!(
                cfg.queue_url.as_str(),
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
            let Credential::Token(token) = &cfg.credential else {
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
