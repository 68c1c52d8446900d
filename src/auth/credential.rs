//! The credential queue requests are authorized with: a key, a SAS or an Entra ID identity.

use super::entra::{Identity, TokenAuth};
use super::sas::{InvalidSasToken, SasPolicy};
use super::shared_key::SharedKeyPolicy;
use crate::config::connection_string::InvalidAccountKey;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::policies::Policy;
use std::sync::Arc;

/// How requests to the queue service are authorized.
#[derive(Clone, Debug)]
pub(crate) enum Credential {
    /// An account key: every request is signed with HMAC-SHA256.
    SharedKey { policy: Arc<SharedKeyPolicy> },
    /// A shared access signature appended to every request's query.
    Sas(Arc<SasPolicy>),
    /// A Microsoft Entra ID identity (workload or managed): the queue client sends its bearer
    /// tokens. See [`entra`](super::entra).
    Token(Arc<TokenAuth>),
}

impl Credential {
    /// An account-key credential. Fails (without echoing the key) if the key is not base64.
    pub(crate) fn shared_key(account: String, key: Secret) -> Result<Self, InvalidAccountKey> {
        let policy = SharedKeyPolicy::new(account, key)?;
        Ok(Credential::SharedKey {
            policy: Arc::new(policy),
        })
    }

    /// A SAS credential, from a token with or without its leading `?`.
    pub(crate) fn sas(token: Secret) -> Result<Self, InvalidSasToken> {
        Ok(Credential::Sas(Arc::new(SasPolicy::new(token)?)))
    }

    /// An Entra ID identity credential.
    pub(crate) fn token(identity: Identity) -> Self {
        Credential::Token(Arc::new(TokenAuth::new(identity)))
    }

    /// A short, secret-free name for logs: `shared-key`, `sas`, `workload-identity` or
    /// `managed-identity`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Credential::SharedKey { .. } => "shared-key",
            Credential::Sas(_) => "sas",
            Credential::Token(auth) => auth.kind(),
        }
    }

    /// The token credential the queue client authorizes with, built on `http` (the same
    /// transport as the queue calls) the first time; `None` for keys and SAS, which are
    /// per-try policies instead.
    pub(crate) fn token_credential(
        &self,
        http: &reqwest::Client,
    ) -> azure_core::Result<Option<Arc<dyn TokenCredential>>> {
        match self {
            Credential::Token(auth) => auth.credential(http).map(Some),
            Credential::SharedKey { .. } | Credential::Sas(_) => Ok(None),
        }
    }

    /// The policies that authorize each try of a request.
    pub(crate) fn per_try_policies(&self) -> Vec<Arc<dyn Policy>> {
        match self {
            Credential::SharedKey { policy, .. } => vec![policy.clone() as Arc<dyn Policy>],
            Credential::Sas(policy) => vec![policy.clone() as Arc<dyn Policy>],
            Credential::Token(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_tokens_need_a_signature() {
        assert!(Credential::sas(Secret::new("?sv=2022-11-02&sp=p&sig=abc")).is_ok());
        assert!(Credential::sas(Secret::new("sv=2022-11-02&SIG=abc")).is_ok());
        assert_eq!(
            Credential::sas(Secret::new("sv=2022-11-02&sp=p")).err(),
            Some(InvalidSasToken)
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let credential = Credential::sas(Secret::new("sv=1&sig=TOPSECRET")).expect("valid");
        assert!(!format!("{credential:?}").contains("TOPSECRET"));
        assert_eq!(credential.kind(), "sas");
    }
}
