//! Shared access signatures: the token added to every request's query at send time.

use super::policy::send_next;
use async_trait::async_trait;
use azure_core::credentials::Secret;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use std::fmt;
use std::sync::Arc;

/// The SAS token given is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a SAS token such as sv=...&sp=raup&sig=... (the signature part 'sig=' is missing)"
)]
pub(crate) struct InvalidSasToken;

/// Adds a SAS token to each request's query at send time.
///
/// Keeping the token out of the client's base URL means nothing that formats the queue URL
/// (logs, the CloudEvent `source`, error messages) can ever carry the signature.
///
/// Idempotent: a per-try policy may see the same `Request` more than once (azure_core's retry
/// policy hands the same one to every try), so the token's own parameters are removed before
/// the token is added. Appending blindly would send `sig=` twice on a retry, which the service
/// refuses as an authentication failure.
pub(crate) struct SasPolicy {
    token: Secret,
    /// The token's parameter names (`sv`, `sp`, `sig`, ...).
    names: Vec<String>,
}

impl SasPolicy {
    pub(crate) fn new(token: Secret) -> Result<Self, InvalidSasToken> {
        let trimmed = token.secret().trim().trim_start_matches('?');
        let names: Vec<String> = trimmed
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| parameter_name(pair).to_ascii_lowercase())
            .collect();
        if !names.iter().any(|name| name == "sig") {
            return Err(InvalidSasToken);
        }
        Ok(Self {
            token: Secret::new(trimmed.to_string()),
            names,
        })
    }

    /// `query` without any parameter of the token, with the token appended.
    fn authorized_query(&self, query: Option<&str>) -> String {
        let mut out =
            String::with_capacity(query.map_or(0, str::len) + self.token.secret().len() + 1);
        let kept = query.unwrap_or("").split('&').filter(|pair| {
            let name = parameter_name(pair);
            !pair.is_empty() && !self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
        });
        for pair in kept {
            out.push_str(pair);
            out.push('&');
        }
        out.push_str(self.token.secret());
        out
    }
}

/// The name part of a `name=value` query pair.
fn parameter_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

impl fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasPolicy").finish_non_exhaustive()
    }
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let url = request.url_mut();
        let query = self.authorized_query(url.query());
        url.set_query(Some(&query));
        // Transport errors quote the request URL, which now carries the signature: scrub
        // them here, before any caller (or the SDK's own logging) can see them.
        send_next("the SAS policy", ctx, request, next)
            .await
            .map_err(scrub_error)
    }
}

/// The same error with any secret removed from its message.
fn scrub_error(error: azure_core::Error) -> azure_core::Error {
    let text = crate::error_text::chain(&error);
    let clean = crate::redact::secrets(&text);
    if clean == text {
        return error;
    }
    azure_core::Error::with_message(error.kind().clone(), clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the transport: records the URL of every try.
    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl Policy for Recorder {
        async fn send(
            &self,
            _ctx: &Context,
            request: &mut Request,
            _next: &[Arc<dyn Policy>],
        ) -> PolicyResult {
            self.0
                .lock()
                .expect("not poisoned")
                .push(request.url().to_string());
            Ok(azure_core::http::AsyncRawResponse::from_bytes(
                azure_core::http::StatusCode::Ok,
                azure_core::http::headers::Headers::new(),
                Vec::new(),
            ))
        }
    }

    /// azure_core's retry policy hands the same `Request` to every try: the SAS must be set,
    /// not appended again.
    #[tokio::test]
    async fn the_sas_is_set_once_however_often_a_request_is_tried() {
        let policy =
            SasPolicy::new(Secret::new("?sv=2020-12-06&sp=raup&sig=c2ln%3D")).expect("valid token");
        let recorder = Arc::new(Recorder::default());
        let next: Vec<Arc<dyn Policy>> = vec![recorder.clone()];
        let url = azure_core::http::Url::parse(
            "http://127.0.0.1:10001/devstoreaccount1/q/messages/id?popreceipt=AgA%3D&timeout=30",
        )
        .expect("url");
        let mut request = Request::new(url, azure_core::http::Method::Delete);
        for _ in 0..3 {
            policy
                .send(&Context::new(), &mut request, &next)
                .await
                .expect("recorder answers");
        }
        let tries = recorder.0.lock().expect("not poisoned").clone();
        assert_eq!(tries.len(), 3);
        for url in &tries {
            assert_eq!(url, &tries[0], "every try sends the same URL");
        }
        assert_eq!(
            tries[0],
            "http://127.0.0.1:10001/devstoreaccount1/q/messages/id?popreceipt=AgA%3D&timeout=30&sv=2020-12-06&sp=raup&sig=c2ln%3D"
        );
        let mut bare = Request::new(
            azure_core::http::Url::parse("http://127.0.0.1:10001/devstoreaccount1/q").expect("url"),
            azure_core::http::Method::Get,
        );
        for _ in 0..2 {
            policy
                .send(&Context::new(), &mut bare, &next)
                .await
                .expect("recorder answers");
        }
        assert_eq!(
            bare.url().query(),
            Some("sv=2020-12-06&sp=raup&sig=c2ln%3D")
        );
    }
}
