//! Parsing of Azure Storage connection strings (`AZURE_STORAGE_CONNECTION_STRING`) and of
//! account keys: pure parsing, which the credential selection (`auth::select`) calls.
//!
//! A connection string is the one value most users already have: the portal, `az storage
//! account show-connection-string` and Azurite's documentation all hand one out. It is a list of
//! `Key=Value` segments separated by `;`. Only the settings that matter to a queue client are
//! understood (`DefaultEndpointsProtocol`, `AccountName`, `AccountKey`, `EndpointSuffix`,
//! `QueueEndpoint`, `SharedAccessSignature`, `UseDevelopmentStorage`); the others
//! (`BlobEndpoint`, `TableEndpoint`, ...) are ignored, so a string copied from the portal works
//! unchanged.
//!
//! Errors are meant to be printed after the variable name, on one line, and say what is
//! expected. They never quote a value: the string holds a key or a SAS token, and error messages
//! end up in logs.

use azure_core::credentials::Secret;
use base64::Engine as _;
use std::str::FromStr;
use url::Url;

/// Azurite's well-known development account. Public by design: it is the same for every
/// Azurite installation and grants nothing outside the local emulator.
const DEV_ACCOUNT_NAME: &str = "devstoreaccount1";
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";

const DEFAULT_PROTOCOL: &str = "https";
const DEFAULT_ENDPOINT_SUFFIX: &str = "core.windows.net";

/// The account key is not valid base64. Deliberately carries no part of the key: the message
/// is printed after the name of the variable the key came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the account key is not valid base64; expected the key as shown under Access keys in the portal")]
pub struct InvalidAccountKey;

/// Checks that an account key decodes as base64, as Shared Key signing needs it to, so that a
/// mistyped key fails at startup rather than on every request.
///
/// # Errors
///
/// [`InvalidAccountKey`] if the key (ignoring surrounding blanks) is empty or not base64.
pub(crate) fn validate_account_key(key: &Secret) -> Result<(), InvalidAccountKey> {
    match base64::engine::general_purpose::STANDARD.decode(key.secret().trim()) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err(InvalidAccountKey),
    }
}

/// The queue-relevant content of a connection string.
///
/// `Debug` is derived: [`Secret`]'s `Debug` prints only `Secret`, and `queue_endpoint` can hold
/// no credential because [`parse`] rejects endpoints with a query string or user info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionString {
    /// `AccountName`; always present together with `account_key`.
    pub account_name: Option<String>,
    /// `AccountKey`, known to be valid base64.
    pub account_key: Option<Secret>,
    /// `SharedAccessSignature`, without a leading `?`.
    pub shared_access_signature: Option<Secret>,
    /// The queue service endpoint: `QueueEndpoint` if given, otherwise
    /// `{DefaultEndpointsProtocol}://{AccountName}.queue.{EndpointSuffix}/`.
    pub queue_endpoint: Url,
}

/// Why a connection string was rejected. Messages never contain the key or the SAS token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionStringError {
    /// Nothing but blanks and separators.
    #[error(
        "is empty; expected Key=Value pairs separated by ';', e.g. AccountName=...;AccountKey=..."
    )]
    Empty,
    /// A URL was given where the connection string belongs.
    #[error("looks like a URL; expected Key=Value pairs separated by ';' (put a queue URL in QueueEndpoint=...)")]
    LooksLikeUrl,
    /// A segment without `=` or with nothing before it. Counted from 1, empty segments included.
    #[error("segment {index} is not Key=Value; expected Key=Value pairs separated by ';'")]
    NotKeyValue {
        /// 1-based position of the segment.
        index: usize,
    },
    /// A recognised setting appears twice, which would make the choice between them arbitrary.
    #[error("{key} is set more than once")]
    DuplicateKey {
        /// The setting's canonical name.
        key: &'static str,
    },
    /// A recognised setting with nothing after `=`.
    #[error("{key} is empty")]
    EmptyValue {
        /// The setting's canonical name.
        key: &'static str,
    },
    /// `DefaultEndpointsProtocol` is neither `http` nor `https`.
    #[error("DefaultEndpointsProtocol must be http or https")]
    InvalidProtocol,
    /// `UseDevelopmentStorage` is neither `true` nor `false`.
    #[error("UseDevelopmentStorage must be true or false")]
    InvalidUseDevelopmentStorage,
    /// `UseDevelopmentStorage=true` fixes account, key and endpoint; other settings would
    /// silently contradict it.
    #[error("UseDevelopmentStorage=true cannot be combined with {key}; for Azurite on another address use AccountName=devstoreaccount1;AccountKey=...;QueueEndpoint=http://HOST:10001/devstoreaccount1")]
    DevelopmentStorageCombined {
        /// The conflicting setting's canonical name.
        key: &'static str,
    },
    /// `AccountName` has characters that cannot be part of a host name or a signature.
    #[error("AccountName must contain only letters and digits")]
    InvalidAccountName,
    /// `AccountKey` does not decode as base64.
    #[error(
        "AccountKey is not valid base64; expected the key as shown under Access keys in the portal"
    )]
    InvalidAccountKey,
    /// `SharedAccessSignature` has no `sig` parameter, so it cannot authorize anything.
    #[error("SharedAccessSignature is not a SAS token: expected sv=...&sig=... (no sig= parameter found)")]
    InvalidSharedAccessSignature,
    /// `QueueEndpoint` is not an absolute `http`/`https` URL with a host.
    #[error("QueueEndpoint is not a valid http(s) URL; expected e.g. https://ACCOUNT.queue.core.windows.net")]
    InvalidQueueEndpoint,
    /// `QueueEndpoint` has a query string, fragment or user info.
    #[error("QueueEndpoint must not contain a query string, fragment or user info; put a SAS token in SharedAccessSignature=...")]
    QueueEndpointNotPlain,
    /// `{protocol}://{account}.queue.{suffix}` is not a valid URL.
    #[error("EndpointSuffix does not form a valid queue URL; expected e.g. core.windows.net")]
    InvalidEndpointSuffix,
    /// Two credentials: using one and ignoring the other would hide a mistake.
    #[error("AccountKey and SharedAccessSignature are both set; use one")]
    BothCredentials,
    /// No credential at all.
    #[error("no credential: expected AccountKey or SharedAccessSignature")]
    NoCredential,
    /// A Shared Key signature names the account, so the key is useless without it.
    #[error(
        "AccountKey requires AccountName (the account name is part of the Shared Key signature)"
    )]
    AccountKeyWithoutAccountName,
    /// Without a name there is no default endpoint to build.
    #[error("AccountName is required unless QueueEndpoint is set")]
    MissingAccountName,
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// The settings this parser understands, by canonical name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setting {
    DefaultEndpointsProtocol,
    AccountName,
    AccountKey,
    EndpointSuffix,
    QueueEndpoint,
    SharedAccessSignature,
    UseDevelopmentStorage,
}

impl Setting {
    const ALL: [Setting; 7] = [
        Setting::DefaultEndpointsProtocol,
        Setting::AccountName,
        Setting::AccountKey,
        Setting::EndpointSuffix,
        Setting::QueueEndpoint,
        Setting::SharedAccessSignature,
        Setting::UseDevelopmentStorage,
    ];

    fn name(self) -> &'static str {
        match self {
            Setting::DefaultEndpointsProtocol => "DefaultEndpointsProtocol",
            Setting::AccountName => "AccountName",
            Setting::AccountKey => "AccountKey",
            Setting::EndpointSuffix => "EndpointSuffix",
            Setting::QueueEndpoint => "QueueEndpoint",
            Setting::SharedAccessSignature => "SharedAccessSignature",
            Setting::UseDevelopmentStorage => "UseDevelopmentStorage",
        }
    }

    /// Keys are case-insensitive, as in every Azure SDK.
    fn from_key(key: &str) -> Option<Setting> {
        Setting::ALL
            .into_iter()
            .find(|setting| setting.name().eq_ignore_ascii_case(key))
    }
}

/// The raw values of the recognised settings, in [`Setting::ALL`] order.
#[derive(Default)]
struct Values<'a>([Option<&'a str>; Setting::ALL.len()]);

impl<'a> Values<'a> {
    fn slot(&mut self, setting: Setting) -> &mut Option<&'a str> {
        &mut self.0[setting as usize]
    }

    fn get(&self, setting: Setting) -> Option<&'a str> {
        self.0[setting as usize]
    }
}

/// Parses a connection string, resolving the queue endpoint and checking that it carries
/// exactly one usable credential.
///
/// Rules, beyond the `Key=Value;...` syntax (blanks around segments, keys and values are
/// ignored, as is a trailing `;`; values may contain `=`):
/// - keys are case-insensitive; unknown keys are ignored; a known key may appear only once and
///   not with an empty value;
/// - `UseDevelopmentStorage=true` means Azurite's well-known account on
///   `http://127.0.0.1:10001/devstoreaccount1` and excludes all other recognised settings
///   (`DevelopmentStorageProxyUri` is ignored); `UseDevelopmentStorage=false` is as if absent;
/// - exactly one of `AccountKey` and `SharedAccessSignature`; `AccountKey` must be base64 and
///   needs `AccountName`; a SAS token must contain `sig=` and loses any leading `?`;
/// - `QueueEndpoint` wins over `DefaultEndpointsProtocol`/`AccountName`/`EndpointSuffix`, must
///   be an `http(s)` URL without query, fragment or user info, and is kept as given;
///   otherwise `AccountName` is required and the endpoint is
///   `{DefaultEndpointsProtocol:-https}://{AccountName}.queue.{EndpointSuffix:-core.windows.net}`.
///
/// # Errors
///
/// A [`ConnectionStringError`] naming the first rule broken; it never quotes a value.
pub fn parse(s: &str) -> Result<ConnectionString, ConnectionStringError> {
    let values = split_settings(s)?;

    if let Some(flag) = values.get(Setting::UseDevelopmentStorage) {
        if flag.eq_ignore_ascii_case("true") {
            return development_storage(&values);
        }
        if !flag.eq_ignore_ascii_case("false") {
            return Err(ConnectionStringError::InvalidUseDevelopmentStorage);
        }
    }

    // Syntax of each value first, so that the first error names the setting that is wrong.
    let protocol = match values.get(Setting::DefaultEndpointsProtocol) {
        None => DEFAULT_PROTOCOL,
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(_) => return Err(ConnectionStringError::InvalidProtocol),
    };
    let account_name = values.get(Setting::AccountName);
    if account_name.is_some_and(|name| !name.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(ConnectionStringError::InvalidAccountName);
    }
    let account_key = values
        .get(Setting::AccountKey)
        .map(|key| Secret::new(key.to_owned()));
    if let Some(key) = &account_key {
        validate_account_key(key).map_err(|_| ConnectionStringError::InvalidAccountKey)?;
    }
    let shared_access_signature = values
        .get(Setting::SharedAccessSignature)
        .map(parse_sas)
        .transpose()?;
    let explicit_endpoint = values
        .get(Setting::QueueEndpoint)
        .map(parse_queue_endpoint)
        .transpose()?;

    // Then how the settings fit together.
    match (&account_key, &shared_access_signature) {
        (Some(_), Some(_)) => return Err(ConnectionStringError::BothCredentials),
        (None, None) => return Err(ConnectionStringError::NoCredential),
        (Some(_), None) if account_name.is_none() => {
            return Err(ConnectionStringError::AccountKeyWithoutAccountName)
        }
        _ => {}
    }
    let queue_endpoint = match (explicit_endpoint, account_name) {
        (Some(endpoint), _) => endpoint,
        (None, Some(account)) => {
            let suffix = values
                .get(Setting::EndpointSuffix)
                .unwrap_or(DEFAULT_ENDPOINT_SUFFIX)
                .trim_matches('.');
            Url::parse(&format!("{protocol}://{account}.queue.{suffix}"))
                .ok()
                .filter(|url| {
                    url.path() == "/" && url.query().is_none() && url.fragment().is_none()
                })
                .ok_or(ConnectionStringError::InvalidEndpointSuffix)?
        }
        (None, None) => return Err(ConnectionStringError::MissingAccountName),
    };

    Ok(ConnectionString {
        account_name: account_name.map(str::to_owned),
        account_key,
        shared_access_signature,
        queue_endpoint,
    })
}

/// Splits the `Key=Value;...` syntax and collects the recognised settings.
fn split_settings(s: &str) -> Result<Values<'_>, ConnectionStringError> {
    let trimmed = s.trim();
    if ["http://", "https://"].iter().any(|scheme| {
        trimmed
            .get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    }) {
        return Err(ConnectionStringError::LooksLikeUrl);
    }

    let mut values = Values::default();
    let mut any_segment = false;
    for (index, segment) in s.split(';').enumerate() {
        let segment = segment.trim();
        if segment.is_empty() {
            continue;
        }
        any_segment = true;
        let (key, value) = segment
            .split_once('=')
            .map(|(key, value)| (key.trim(), value.trim()))
            .filter(|(key, _)| !key.is_empty())
            .ok_or(ConnectionStringError::NotKeyValue { index: index + 1 })?;
        let Some(setting) = Setting::from_key(key) else {
            continue;
        };
        if value.is_empty() {
            return Err(ConnectionStringError::EmptyValue {
                key: setting.name(),
            });
        }
        let slot = values.slot(setting);
        if slot.is_some() {
            return Err(ConnectionStringError::DuplicateKey {
                key: setting.name(),
            });
        }
        *slot = Some(value);
    }
    if any_segment {
        Ok(values)
    } else {
        Err(ConnectionStringError::Empty)
    }
}

/// `UseDevelopmentStorage=true`: Azurite's fixed account on its default queue port.
fn development_storage(values: &Values<'_>) -> Result<ConnectionString, ConnectionStringError> {
    if let Some(conflict) = Setting::ALL
        .into_iter()
        .find(|&s| s != Setting::UseDevelopmentStorage && values.get(s).is_some())
    {
        return Err(ConnectionStringError::DevelopmentStorageCombined {
            key: conflict.name(),
        });
    }
    let queue_endpoint =
        Url::parse(DEV_QUEUE_ENDPOINT).map_err(|_| ConnectionStringError::InvalidQueueEndpoint)?;
    Ok(ConnectionString {
        account_name: Some(DEV_ACCOUNT_NAME.to_owned()),
        account_key: Some(Secret::new(DEV_ACCOUNT_KEY)),
        shared_access_signature: None,
        queue_endpoint,
    })
}

/// A SAS token without its optional leading `?`; rejected early if it has no signature, which
/// would otherwise surface only as a 403 from the service.
fn parse_sas(value: &str) -> Result<Secret, ConnectionStringError> {
    let token = value.trim_start_matches('?');
    let signed = token.split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(name, value)| name.eq_ignore_ascii_case("sig") && !value.is_empty())
    });
    if signed {
        Ok(Secret::new(token.to_owned()))
    } else {
        Err(ConnectionStringError::InvalidSharedAccessSignature)
    }
}

fn parse_queue_endpoint(value: &str) -> Result<Url, ConnectionStringError> {
    let url = Url::parse(value).map_err(|_| ConnectionStringError::InvalidQueueEndpoint)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(ConnectionStringError::InvalidQueueEndpoint);
    }
    // A query could be a SAS token, and user info a password: either would then be printed
    // wherever the endpoint is, and neither is how Azure expects credentials here.
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(ConnectionStringError::QueueEndpointNotPlain);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcA==";
    const SAS: &str = "sv=2022-11-02&ss=q&srt=sco&sp=raup&se=2030-01-01T00%3A00%3A00Z&sig=U0FTc2lnbmF0dXJlU0VDUkVU%3D";

    fn ok(s: &str) -> ConnectionString {
        match parse(s) {
            Ok(cs) => cs,
            Err(e) => panic!("{s:?} should parse, got: {e}"),
        }
    }

    fn err(s: &str) -> ConnectionStringError {
        let e = parse(s).expect_err("should be rejected");
        let message = e.to_string();
        assert!(!message.contains(KEY), "{message}");
        assert!(!message.contains(SAS), "{message}");
        assert!(!message.contains("U0FTc2lnbmF0dXJl"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        e
    }

    #[test]
    fn portal_connection_string_with_account_key() {
        let cs = ok(&format!(
            "DefaultEndpointsProtocol=https;AccountName=myaccount;AccountKey={KEY};EndpointSuffix=core.windows.net"
        ));
        assert_eq!(cs.account_name.as_deref(), Some("myaccount"));
        assert_eq!(cs.account_key.as_ref().map(Secret::secret), Some(KEY));
        assert_eq!(cs.shared_access_signature, None);
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://myaccount.queue.core.windows.net/"
        );
    }

    #[test]
    fn defaults_are_https_and_core_windows_net() {
        let cs = ok(&format!("AccountName=acct;AccountKey={KEY}"));
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://acct.queue.core.windows.net/"
        );
    }

    #[test]
    fn protocol_and_suffix_are_honoured() {
        let cs = ok(&format!(
            "DefaultEndpointsProtocol=HTTP;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        ));
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "http://acct.queue.core.chinacloudapi.cn/"
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_blanks_and_trailing_separator_are_allowed() {
        let cs = ok(&format!(
            "  accountname = acct ;\n ACCOUNTKEY={KEY} ; endpointsuffix=core.windows.net;  "
        ));
        assert_eq!(cs.account_name.as_deref(), Some("acct"));
        assert_eq!(cs.account_key.as_ref().map(Secret::secret), Some(KEY));
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let cs = ok(&format!(
            "QueueEndpoint=https://acct.queue.core.windows.net;SharedAccessSignature={SAS}"
        ));
        assert_eq!(
            cs.shared_access_signature.as_ref().map(Secret::secret),
            Some(SAS)
        );
    }

    #[test]
    fn unknown_and_other_service_settings_are_ignored() {
        let cs = ok(&format!(
            "BlobEndpoint=https://acct.blob.core.windows.net/;TableEndpoint=https://x;FileEndpoint=https://y;AccountName=acct;AccountKey={KEY};Whatever=1;Whatever=2"
        ));
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://acct.queue.core.windows.net/"
        );
    }

    #[test]
    fn explicit_queue_endpoint_wins_and_is_kept_as_given() {
        let cs = ok(&format!(
            "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey={KEY};QueueEndpoint=http://azurite:10001/devstoreaccount1"
        ));
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "http://azurite:10001/devstoreaccount1"
        );
        assert_eq!(cs.account_name.as_deref(), Some("devstoreaccount1"));
    }

    #[test]
    fn sas_with_queue_endpoint_needs_no_account_name() {
        let cs = ok(&format!(
            "QueueEndpoint=https://acct.queue.core.windows.net/;SharedAccessSignature=?{SAS}"
        ));
        assert_eq!(cs.account_name, None);
        assert_eq!(cs.account_key, None);
        // The leading '?' is dropped.
        assert_eq!(
            cs.shared_access_signature.as_ref().map(Secret::secret),
            Some(SAS)
        );
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://acct.queue.core.windows.net/"
        );
    }

    #[test]
    fn sas_with_account_name_builds_the_default_endpoint() {
        let cs = ok(&format!("AccountName=acct;SharedAccessSignature={SAS}"));
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://acct.queue.core.windows.net/"
        );
    }

    #[test]
    fn use_development_storage_means_azurite() {
        for s in [
            "UseDevelopmentStorage=true",
            "UseDevelopmentStorage=TRUE;",
            "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://127.0.0.1",
        ] {
            let cs = ok(s);
            assert_eq!(cs.account_name.as_deref(), Some(DEV_ACCOUNT_NAME));
            assert_eq!(
                cs.account_key.as_ref().map(Secret::secret),
                Some(DEV_ACCOUNT_KEY)
            );
            assert_eq!(cs.shared_access_signature, None);
            assert_eq!(
                cs.queue_endpoint.as_str(),
                "http://127.0.0.1:10001/devstoreaccount1"
            );
        }
    }

    #[test]
    fn use_development_storage_false_is_as_if_absent() {
        let cs = ok(&format!(
            "UseDevelopmentStorage=false;AccountName=acct;AccountKey={KEY}"
        ));
        assert_eq!(cs.account_name.as_deref(), Some("acct"));
        assert_eq!(
            err("UseDevelopmentStorage=false"),
            ConnectionStringError::NoCredential
        );
    }

    #[test]
    fn use_development_storage_excludes_other_settings() {
        assert_eq!(
            err("UseDevelopmentStorage=true;QueueEndpoint=http://azurite:10001/devstoreaccount1"),
            ConnectionStringError::DevelopmentStorageCombined {
                key: "QueueEndpoint"
            }
        );
        assert_eq!(
            err(&format!("AccountKey={KEY};UseDevelopmentStorage=true")),
            ConnectionStringError::DevelopmentStorageCombined { key: "AccountKey" }
        );
        assert_eq!(
            err("UseDevelopmentStorage=yes"),
            ConnectionStringError::InvalidUseDevelopmentStorage
        );
    }

    #[test]
    fn empty_input_is_rejected() {
        assert_eq!(err(""), ConnectionStringError::Empty);
        assert_eq!(err(" ; ;; "), ConnectionStringError::Empty);
    }

    #[test]
    fn a_url_is_not_a_connection_string() {
        assert_eq!(
            err(&format!("https://acct.queue.core.windows.net/q?{SAS}")),
            ConnectionStringError::LooksLikeUrl
        );
    }

    #[test]
    fn segments_must_be_key_value() {
        // An unpadded key pasted without its name: the message must point at the segment, not
        // quote it.
        let e = err("AccountName=acct;c2VjcmV0LWtleS1ieXRlcw");
        assert_eq!(e, ConnectionStringError::NotKeyValue { index: 2 });
        assert!(!e.to_string().contains("c2VjcmV0"));
        assert_eq!(
            e.to_string(),
            "segment 2 is not Key=Value; expected Key=Value pairs separated by ';'"
        );
        assert_eq!(
            err("AccountName=acct;;=value"),
            ConnectionStringError::NotKeyValue { index: 3 }
        );
    }

    #[test]
    fn known_settings_may_not_repeat_or_be_empty() {
        assert_eq!(
            err(&format!("AccountName=a;AccountName=b;AccountKey={KEY}")),
            ConnectionStringError::DuplicateKey { key: "AccountName" }
        );
        assert_eq!(
            err(&format!("AccountName=a;accountkey={KEY};AccountKey={KEY}")),
            ConnectionStringError::DuplicateKey { key: "AccountKey" }
        );
        assert_eq!(
            err("AccountName=a;AccountKey="),
            ConnectionStringError::EmptyValue { key: "AccountKey" }
        );
    }

    #[test]
    fn protocol_must_be_http_or_https() {
        let e = err(&format!(
            "DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey={KEY}"
        ));
        assert_eq!(e, ConnectionStringError::InvalidProtocol);
        assert_eq!(
            e.to_string(),
            "DefaultEndpointsProtocol must be http or https"
        );
    }

    #[test]
    fn account_name_must_be_alphanumeric() {
        assert_eq!(
            err(&format!("AccountName=my.account;AccountKey={KEY}")),
            ConnectionStringError::InvalidAccountName
        );
        assert_eq!(
            err(&format!("AccountName=a/b;AccountKey={KEY}")),
            ConnectionStringError::InvalidAccountName
        );
    }

    #[test]
    fn account_key_must_be_base64() {
        let bad = "not*base64*at*all==";
        let e = parse(&format!("AccountName=a;AccountKey={bad}")).expect_err("invalid key");
        assert_eq!(e, ConnectionStringError::InvalidAccountKey);
        assert!(!e.to_string().contains(bad));
        assert!(!format!("{e:?}").contains(bad));
    }

    #[test]
    fn sas_must_carry_a_signature() {
        let unsigned = "sv=2022-11-02&sp=raup";
        let e = parse(&format!(
            "QueueEndpoint=https://a.queue.core.windows.net;SharedAccessSignature={unsigned}"
        ))
        .expect_err("unsigned SAS");
        assert_eq!(e, ConnectionStringError::InvalidSharedAccessSignature);
        assert!(!e.to_string().contains(unsigned));
        assert_eq!(
            err("AccountName=a;SharedAccessSignature=sv=1&sig="),
            ConnectionStringError::InvalidSharedAccessSignature
        );
    }

    #[test]
    fn one_credential_exactly() {
        let e = err(&format!(
            "AccountName=a;AccountKey={KEY};SharedAccessSignature={SAS}"
        ));
        assert_eq!(e, ConnectionStringError::BothCredentials);
        assert_eq!(
            e.to_string(),
            "AccountKey and SharedAccessSignature are both set; use one"
        );
        let e = err("AccountName=a;EndpointSuffix=core.windows.net");
        assert_eq!(e, ConnectionStringError::NoCredential);
        assert_eq!(
            e.to_string(),
            "no credential: expected AccountKey or SharedAccessSignature"
        );
    }

    #[test]
    fn account_key_needs_account_name_even_with_an_endpoint() {
        assert_eq!(
            err(&format!(
                "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;AccountKey={KEY}"
            )),
            ConnectionStringError::AccountKeyWithoutAccountName
        );
    }

    #[test]
    fn account_name_is_required_without_endpoint() {
        let e = err(&format!("SharedAccessSignature={SAS}"));
        assert_eq!(e, ConnectionStringError::MissingAccountName);
        assert_eq!(
            e.to_string(),
            "AccountName is required unless QueueEndpoint is set"
        );
    }

    #[test]
    fn queue_endpoint_must_be_a_plain_http_url() {
        for bad in [
            "not a url",
            "ftp://acct.queue.core.windows.net",
            "acct.queue.core.windows.net",
            "file:///tmp/x",
        ] {
            assert_eq!(
                err(&format!("QueueEndpoint={bad};SharedAccessSignature={SAS}")),
                ConnectionStringError::InvalidQueueEndpoint,
                "{bad}"
            );
        }
        for bad in [
            format!("https://acct.queue.core.windows.net/?{SAS}"),
            "https://acct.queue.core.windows.net/#x".to_owned(),
            "https://user:pass@acct.queue.core.windows.net/".to_owned(),
        ] {
            assert_eq!(
                err(&format!("QueueEndpoint={bad};SharedAccessSignature={SAS}")),
                ConnectionStringError::QueueEndpointNotPlain,
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoint_suffix_must_form_a_host() {
        assert_eq!(
            err(&format!(
                "AccountName=a;AccountKey={KEY};EndpointSuffix=bad/suffix"
            )),
            ConnectionStringError::InvalidEndpointSuffix
        );
        assert_eq!(
            err(&format!(
                "AccountName=a;AccountKey={KEY};EndpointSuffix=has space"
            )),
            ConnectionStringError::InvalidEndpointSuffix
        );
    }

    #[test]
    fn debug_output_hides_key_and_sas() {
        let cs = ok(&format!("AccountName=acct;AccountKey={KEY}"));
        let debug = format!("{cs:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(debug.contains("acct"), "{debug}");

        let cs = ok(&format!("AccountName=acct;SharedAccessSignature={SAS}"));
        let debug = format!("{cs:#?}");
        assert!(!debug.contains("sig="), "{debug}");
        assert!(!debug.contains("U0FTc2lnbmF0dXJl"), "{debug}");
    }

    #[test]
    fn from_str_is_parse() {
        let cs: ConnectionString = "UseDevelopmentStorage=true".parse().expect("valid");
        assert_eq!(cs.account_name.as_deref(), Some(DEV_ACCOUNT_NAME));
    }
}
