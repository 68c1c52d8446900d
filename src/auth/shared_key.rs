//! Shared Key (account key) authorization as an `azure_core` pipeline policy.
//!
//! The official `azure_storage_queue` client authorizes only with Microsoft Entra tokens, but
//! connection strings with `AccountKey`, the `AZURE_STORAGE_KEY` variable and Azurite all need
//! Shared Key. [`SharedKeyPolicy`] signs each request as described in Azure's "Authorize with
//! Shared Key" (the string-to-sign of version 2015-02-21 and later for the Blob, Queue and File
//! services). It is installed as the last per-try policy, so it runs on every retry right before
//! the transport: each try gets a fresh `x-ms-date` (the service rejects dates more than 15
//! minutes old) and a signature over the request exactly as it is about to be sent.
//!
//! The string-to-sign is built by pure functions so it can be tested line by line against the
//! documented format. The HMAC is `ring`'s (already linked for TLS; assembly SHA-256), keyed
//! once when the policy is built: `azure_core::hmac::hmac_sha256` (its `hmac_rust` feature)
//! decoded the base64 key and hashed it in software on every request, about 10 % of the
//! sidecar's instructions per message.

use crate::config::connection_string::InvalidAccountKey;
use async_trait::async_trait;
use azure_core::{
    credentials::Secret,
    http::{
        headers::{HeaderName, Headers, AUTHORIZATION, MS_DATE},
        policies::{Policy, PolicyResult},
        Context, Method, Request, Url,
    },
    time::{to_rfc7231, OffsetDateTime},
};
use base64::Engine as _;
use ring::hmac;
use std::{borrow::Cow, fmt, sync::Arc};

/// Signs every request with the storage account's key (`Authorization: SharedKey ...`).
///
/// Install it as the last entry of `ClientOptions::per_try_policies`: nothing after it may
/// change a signed header, the URL or the body.
#[derive(Clone)]
pub(crate) struct SharedKeyPolicy {
    account: String,
    /// The decoded account key, ready to sign (ring keeps the inner and outer padded states).
    key: hmac::Key,
}

impl SharedKeyPolicy {
    /// A policy signing as `account` with `key` (base64, as shown in the portal).
    ///
    /// Blanks around the key are ignored: keys copied from a terminal or a file often carry a
    /// trailing newline.
    ///
    /// # Errors
    ///
    /// [`InvalidAccountKey`], which does not echo the key, if the key is not valid base64.
    pub(crate) fn new(account: impl Into<String>, key: Secret) -> Result<Self, InvalidAccountKey> {
        Ok(Self {
            account: account.into(),
            key: signing_key(&key)?,
        })
    }

    /// Sets `x-ms-date` and `Authorization` on `request`.
    fn authorize(&self, request: &mut Request) -> azure_core::Result<()> {
        request.insert_header(MS_DATE, to_rfc7231(&OffsetDateTime::now_utc()));
        let to_sign = string_to_sign(
            &self.account,
            request.method(),
            request.url(),
            request.headers(),
            content_length(request),
        );
        let signature = sign(&to_sign, &self.key);
        request.insert_header(
            AUTHORIZATION,
            format!("SharedKey {}:{signature}", self.account),
        );
        Ok(())
    }
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.authorize(request)?;
        super::policy::send_next("the Shared Key policy", ctx, request, next).await
    }
}

/// The number of body bytes the transport will send.
///
/// The transport adds `Content-Length` only after the pipeline has run, so the header is
/// usually absent at signing time and the body is the source of truth. A stream of unknown
/// length falls back to an explicit header, else to 0 (it would be sent chunked, without
/// `Content-Length`).
fn content_length(request: &Request) -> u64 {
    request.body().len().unwrap_or_else(|| {
        request
            .headers()
            .get_optional_str(&HeaderName::from_static("content-length"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// The HMAC-SHA256 key of a base64 account key (blanks around it ignored).
///
/// # Errors
///
/// [`InvalidAccountKey`] (which carries nothing of the key) if the key is empty or not base64.
fn signing_key(key: &Secret) -> Result<hmac::Key, InvalidAccountKey> {
    match base64::engine::general_purpose::STANDARD.decode(key.secret().trim()) {
        Ok(bytes) if !bytes.is_empty() => Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
        _ => Err(InvalidAccountKey),
    }
}

/// Base64 HMAC-SHA256 of `string_to_sign`.
fn sign(string_to_sign: &str, key: &hmac::Key) -> String {
    let tag = hmac::sign(key, string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The Shared Key string-to-sign for Blob, Queue and File services, version 2015-02-21 and
/// later.
///
/// `Date` is always empty: the policy sets `x-ms-date`, which then takes precedence, and the
/// transport adds no `Date` header. `Content-Length` is the empty string when zero, as that
/// version requires.
fn string_to_sign(
    account: &str,
    method: Method,
    url: &Url,
    headers: &Headers,
    content_length: u64,
) -> String {
    // One pass over the headers (names are stored lowercase) instead of a hashed lookup per
    // field: this runs for every queue request.
    let mut standard = [""; STANDARD_HEADERS.len()];
    for (name, value) in headers.iter() {
        if let Some(i) = STANDARD_HEADERS.iter().position(|h| *h == name.as_str()) {
            standard[i] = value.as_str();
        }
    }
    let mut out = String::with_capacity(256);
    out.push_str(method.as_str());
    out.push('\n');
    for (i, value) in standard.iter().enumerate() {
        if i == CONTENT_LENGTH_SLOT {
            if content_length != 0 {
                out.push_str(&content_length.to_string());
            }
            out.push('\n');
        }
        if i == DATE_SLOT {
            out.push('\n'); // Date
        }
        out.push_str(value);
        out.push('\n');
    }
    out.push_str(&canonicalized_headers(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ));
    out.push_str(&canonicalized_resource(account, url));
    out
}

/// The standard headers of the string-to-sign, in order, with `Content-Length` and `Date`
/// (which are not read from the headers) written before the slots named below.
const STANDARD_HEADERS: [&str; 9] = [
    "content-encoding",
    "content-language",
    "content-md5", // Content-Length before this one
    "content-type",
    "if-modified-since", // Date before this one
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];
const CONTENT_LENGTH_SLOT: usize = 2;
const DATE_SLOT: usize = 4;

/// All `x-ms-*` headers as `name:value\n`, names lowercased and sorted by byte value, values
/// trimmed; values of repeated names are joined with commas, in order of appearance.
///
/// Values are trimmed but blank runs inside them are kept: the REST doc's "replace linear
/// whitespace with a single space" is not what the service checks. Azurite (which signs
/// `value.trimLeft()`) rejects a folded `x-ms-meta-*: one  two`, and Microsoft's JS and Python
/// storage SDKs sign the value unfolded. Trimming both ends matches what a server sees, since
/// HTTP parsers drop the blanks around a header value.
///
/// Sorting is ordinal, as in the Python SDK. The JS SDK imitates .NET culture-aware ordering
/// instead; the two differ only for names that differ at a `-` or `_`, which the headers the
/// queue client sends (`x-ms-client-request-id`, `x-ms-date`, `x-ms-version`) do not.
///
/// Takes name/value pairs rather than [`Headers`] because `Headers` cannot hold a repeated name,
/// while the canonical form must handle one.
fn canonicalized_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    // A handful of headers per request: a stably sorted vector (repeated names keep their
    // order) costs less than a map of owned names.
    let mut selected: Vec<(Cow<'a, str>, &'a str)> = headers
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.trim();
            let is_ms = name
                .as_bytes()
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"x-ms-"));
            is_ms.then(|| (ascii_lowercase(name), value.trim()))
        })
        .collect();
    selected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(128);
    let mut entries = selected.iter().peekable();
    while let Some((name, value)) = entries.next() {
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        while let Some((_, value)) = entries.next_if(|(next, _)| next == name) {
            out.push(',');
            out.push_str(value);
        }
        out.push('\n');
    }
    out
}

/// `/{account}{encoded path}` then, per query parameter sorted by lowercased name,
/// `\n{name}:{values}` with the values URL-decoded, sorted and comma-separated.
///
/// The path is used exactly as sent, so for Azurite's path-style URLs the account appears
/// twice: `http://127.0.0.1:10001/devstoreaccount1/q` gives `/devstoreaccount1/devstoreaccount1/q`
/// (Azurite's `QueueSharedKeyAuthenticator` signs `/${account}${req.path}`).
///
/// Query names and values are percent-decoded but `+` is kept as is, as Azurite's
/// `decodeURIComponent` and .NET's `Uri.UnescapeDataString` do. The SDK form-encodes query
/// values, so a literal `+` only ever stands for a space, which no queue operation sends.
fn canonicalized_resource(account: &str, url: &Url) -> String {
    let path = url.path();
    let mut out = String::with_capacity(1 + account.len() + path.len() + 64);
    out.push('/');
    out.push_str(account);
    out.push_str(path);

    // Sorting (name, value) pairs groups each name's values, themselves sorted.
    let mut params: Vec<(Cow<'_, str>, Cow<'_, str>)> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (lowercase(percent_decode(name)), percent_decode(value))
        })
        .collect();
    params.sort();
    let mut entries = params.iter().peekable();
    while let Some((name, value)) = entries.next() {
        out.push('\n');
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        while let Some((_, value)) = entries.next_if(|(next, _)| next == name) {
            out.push(',');
            out.push_str(value);
        }
    }
    out
}

/// `s` in ASCII lowercase, borrowed when it already is.
fn ascii_lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` in lowercase (Unicode), borrowed when it is ASCII without capitals.
fn lowercase(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.is_ascii() && !s.bytes().any(|b| b.is_ascii_uppercase()) {
        s
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

/// Decodes `%XX` escapes (leaving malformed ones and `+` untouched); invalid UTF-8 becomes
/// U+FFFD, which cannot occur for the ASCII values the SDK sends.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if let (b'%', [hi, lo, after @ ..]) = (byte, tail) {
            if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
                out.push(hi << 4 | lo);
                rest = after;
                continue;
            }
        }
        out.push(byte);
        rest = tail;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{AsyncRawResponse, Body, StatusCode};
    use azure_core::stream::BytesStream;
    use std::sync::Mutex;

    /// Azurite's well-known development key (public; valid only against the emulator).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const DATE: &str = "Fri, 28 Nov 2025 01:07:00 GMT";
    const REQUEST_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn queue_headers() -> Headers {
        let mut headers = Headers::new();
        headers.insert("x-ms-version", "2026-04-06");
        headers.insert("x-ms-date", DATE);
        headers.insert("x-ms-client-request-id", REQUEST_ID);
        headers
    }

    #[test]
    fn canonicalized_headers_are_lowercased_sorted_and_only_x_ms() {
        let headers = [
            ("X-MS-Version", "2026-04-06"),
            ("Content-Type", "application/xml"),
            ("x-ms-date", DATE),
            ("x-ms-client-request-id", REQUEST_ID),
            ("x-ms-meta-b", "2"),
            ("X-Ms-Meta-A", "1"),
            ("accept", "application/xml"),
        ];
        assert_eq!(
            canonicalized_headers(headers),
            concat!(
                "x-ms-client-request-id:0f8fad5b-d9cb-469f-a165-70867728950e\n",
                "x-ms-date:Fri, 28 Nov 2025 01:07:00 GMT\n",
                "x-ms-meta-a:1\n",
                "x-ms-meta-b:2\n",
                "x-ms-version:2026-04-06\n",
            )
        );
    }

    #[test]
    fn canonicalized_header_values_are_trimmed_but_inner_blanks_kept() {
        let headers = [
            ("x-ms-meta-spaces", "  a \t b   c  "),
            ("x-ms-meta-quoted", r#" x  "keep   these"   y "#),
            ("x-ms-meta-empty", "   "),
        ];
        assert_eq!(
            canonicalized_headers(headers),
            concat!(
                "x-ms-meta-empty:\n",
                "x-ms-meta-quoted:x  \"keep   these\"   y\n",
                "x-ms-meta-spaces:a \t b   c\n",
            )
        );
    }

    #[test]
    fn repeated_canonicalized_headers_are_joined_with_commas() {
        let headers = [
            ("x-ms-meta-list", "first"),
            ("x-ms-date", DATE),
            ("X-MS-META-LIST", " second "),
        ];
        assert_eq!(
            canonicalized_headers(headers),
            concat!(
                "x-ms-date:Fri, 28 Nov 2025 01:07:00 GMT\n",
                "x-ms-meta-list:first,second\n",
            )
        );
    }

    #[test]
    fn canonicalized_resource_without_query() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.queue.core.windows.net/myqueue")
            ),
            "/myaccount/myqueue"
        );
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.queue.core.windows.net")
            ),
            "/myaccount/"
        );
    }

    #[test]
    fn canonicalized_resource_sorts_parameters_by_lowercased_name() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.queue.core.windows.net/myqueue/messages?VisibilityTimeout=30&numofmessages=32&comp=x")
            ),
            "/myaccount/myqueue/messages\ncomp:x\nnumofmessages:32\nvisibilitytimeout:30"
        );
    }

    #[test]
    fn canonicalized_resource_joins_sorted_values_of_repeated_parameters() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.blob.core.windows.net/c?include=snapshots&comp=list&Include=metadata&restype=container&flag")
            ),
            "/myaccount/c\ncomp:list\nflag:\ninclude:metadata,snapshots\nrestype:container"
        );
    }

    #[test]
    fn canonicalized_resource_decodes_values_but_not_plus() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.queue.core.windows.net/q/messages/id?popreceipt=AgAAAAMAAAAAAAAA%2BkK%2F2Q%3D%3D&x=a+b%20c&bad=%zz%4")
            ),
            "/myaccount/q/messages/id\nbad:%zz%4\npopreceipt:AgAAAAMAAAAAAAAA+kK/2Q==\nx:a+b c"
        );
    }

    #[test]
    fn canonicalized_resource_keeps_the_encoded_path() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                &url("https://myaccount.blob.core.windows.net/c/a%20b%2Fc")
            ),
            "/myaccount/c/a%20b%2Fc"
        );
    }

    #[test]
    fn canonicalized_resource_of_azurite_path_style_urls_repeats_the_account() {
        assert_eq!(
            canonicalized_resource(
                "devstoreaccount1",
                &url("http://127.0.0.1:10001/devstoreaccount1/q/messages?numofmessages=1")
            ),
            "/devstoreaccount1/devstoreaccount1/q/messages\nnumofmessages:1"
        );
        assert_eq!(
            canonicalized_resource(
                "devstoreaccount1",
                &url("http://127.0.0.1:10001/devstoreaccount1?comp=list")
            ),
            "/devstoreaccount1/devstoreaccount1\ncomp:list"
        );
    }

    #[test]
    fn zero_content_length_is_an_empty_field() {
        let headers = queue_headers();
        let u = url("https://myaccount.queue.core.windows.net/myqueue");
        let zero = string_to_sign("myaccount", Method::Put, &u, &headers, 0);
        assert!(zero.starts_with("PUT\n\n\n\n"), "{zero:?}");
        let some = string_to_sign("myaccount", Method::Put, &u, &headers, 42);
        assert!(some.starts_with("PUT\n\n\n42\n"), "{some:?}");
    }

    #[test]
    fn string_to_sign_for_get_messages() {
        let mut headers = queue_headers();
        headers.insert("accept", "application/xml");
        let to_sign = string_to_sign(
            "myaccount",
            Method::Get,
            &url("https://myaccount.queue.core.windows.net/myqueue/messages?numofmessages=32&visibilitytimeout=30"),
            &headers,
            0,
        );
        assert_eq!(
            to_sign,
            concat!(
                "GET\n", // VERB
                "\n",    // Content-Encoding
                "\n",    // Content-Language
                "\n",    // Content-Length (empty for zero)
                "\n",    // Content-MD5
                "\n",    // Content-Type
                "\n",    // Date (x-ms-date is used)
                "\n",    // If-Modified-Since
                "\n",    // If-Match
                "\n",    // If-None-Match
                "\n",    // If-Unmodified-Since
                "\n",    // Range
                "x-ms-client-request-id:0f8fad5b-d9cb-469f-a165-70867728950e\n",
                "x-ms-date:Fri, 28 Nov 2025 01:07:00 GMT\n",
                "x-ms-version:2026-04-06\n",
                "/myaccount/myqueue/messages\n",
                "numofmessages:32\n",
                "visibilitytimeout:30",
            )
        );
    }

    #[test]
    fn string_to_sign_for_delete_message() {
        let to_sign = string_to_sign(
            "myaccount",
            Method::Delete,
            &url("https://myaccount.queue.core.windows.net/myqueue/messages/7d35e47d-f58e-42da-ba4a-9e6ac7e1214d?popreceipt=AgAAAAMAAAAAAAAA%2BkK%2F2Q%3D%3D"),
            &queue_headers(),
            0,
        );
        assert_eq!(
            to_sign,
            concat!(
                "DELETE\n", // VERB
                "\n",       // Content-Encoding
                "\n",       // Content-Language
                "\n",       // Content-Length
                "\n",       // Content-MD5
                "\n",       // Content-Type
                "\n",       // Date
                "\n",       // If-Modified-Since
                "\n",       // If-Match
                "\n",       // If-None-Match
                "\n",       // If-Unmodified-Since
                "\n",       // Range
                "x-ms-client-request-id:0f8fad5b-d9cb-469f-a165-70867728950e\n",
                "x-ms-date:Fri, 28 Nov 2025 01:07:00 GMT\n",
                "x-ms-version:2026-04-06\n",
                "/myaccount/myqueue/messages/7d35e47d-f58e-42da-ba4a-9e6ac7e1214d\n",
                "popreceipt:AgAAAAMAAAAAAAAA+kK/2Q==",
            )
        );
    }

    #[test]
    fn string_to_sign_for_put_message_with_standard_headers() {
        let mut headers = queue_headers();
        headers.insert("content-type", "application/xml");
        headers.insert("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==");
        headers.insert("if-match", "\"0x8D\"");
        headers.insert("range", "bytes=0-9");
        let to_sign = string_to_sign(
            "myaccount",
            Method::Post,
            &url("https://myaccount.queue.core.windows.net/myqueue/messages?messagettl=-1"),
            &headers,
            78,
        );
        assert_eq!(
            to_sign,
            concat!(
                "POST\n",                     // VERB
                "\n",                         // Content-Encoding
                "\n",                         // Content-Language
                "78\n",                       // Content-Length
                "Q2hlY2sgSW50ZWdyaXR5IQ==\n", // Content-MD5
                "application/xml\n",          // Content-Type
                "\n",                         // Date
                "\n",                         // If-Modified-Since
                "\"0x8D\"\n",                 // If-Match
                "\n",                         // If-None-Match
                "\n",                         // If-Unmodified-Since
                "bytes=0-9\n",                // Range
                "x-ms-client-request-id:0f8fad5b-d9cb-469f-a165-70867728950e\n",
                "x-ms-date:Fri, 28 Nov 2025 01:07:00 GMT\n",
                "x-ms-version:2026-04-06\n",
                "/myaccount/myqueue/messages\n",
                "messagettl:-1",
            )
        );
    }

    /// The Get Messages string-to-sign above, signed with Azurite's key by an independent
    /// implementation:
    /// `printf '%s' "$STRING_TO_SIGN" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(echo -n "$DEV_KEY" | base64 -d | xxd -p -c 256) -binary | base64`
    const GET_MESSAGES_SIGNATURE: &str = "qEl1APoUFK4quKqJWlhNCU7OQN7pO9k/rSwUTI1DdWE=";

    #[test]
    fn known_answer_signature() {
        let mut headers = queue_headers();
        headers.insert("accept", "application/xml");
        let to_sign = string_to_sign(
            "myaccount",
            Method::Get,
            &url("https://myaccount.queue.core.windows.net/myqueue/messages?numofmessages=32&visibilitytimeout=30"),
            &headers,
            0,
        );
        let signature = sign(
            &to_sign,
            &signing_key(&Secret::new(DEV_KEY)).expect("valid key"),
        );
        assert_eq!(signature, GET_MESSAGES_SIGNATURE);
    }

    #[test]
    fn invalid_keys_are_rejected_without_being_echoed() {
        for bad in ["not base64 at all!", "", "   ", "YWJj*ZGVm"] {
            let e = SharedKeyPolicy::new("acct", Secret::new(bad)).expect_err("invalid");
            assert_eq!(e, InvalidAccountKey);
            if !bad.trim().is_empty() {
                assert!(!e.to_string().contains(bad));
                assert!(!format!("{e:?}").contains(bad));
            }
        }
        // A trailing newline from a pasted key is tolerated.
        assert!(SharedKeyPolicy::new("acct", Secret::new(format!("{DEV_KEY}\n"))).is_ok());
    }

    #[test]
    fn debug_output_does_not_reveal_the_key() {
        let policy = SharedKeyPolicy::new("devstoreaccount1", Secret::new(DEV_KEY)).expect("valid");
        let debug = format!("{policy:?} {policy:#?}");
        assert!(!debug.contains(DEV_KEY), "{debug}");
        assert!(!debug.contains("Eby8vdM02x"), "{debug}");
        assert!(debug.contains("devstoreaccount1"), "{debug}");
    }

    /// Stands in for the transport: records what it was sent.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<Request>>);

    #[async_trait]
    impl Policy for Recorder {
        async fn send(
            &self,
            _ctx: &Context,
            request: &mut Request,
            _next: &[Arc<dyn Policy>],
        ) -> PolicyResult {
            self.0.lock().expect("not poisoned").push(request.clone());
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::Ok,
                Headers::new(),
                Vec::new(),
            ))
        }
    }

    async fn send_through_policy(request: &mut Request) -> Request {
        let policy = SharedKeyPolicy::new("devstoreaccount1", Secret::new(DEV_KEY)).expect("valid");
        let recorder = Arc::new(Recorder::default());
        let next: Vec<Arc<dyn Policy>> = vec![recorder.clone()];
        policy
            .send(&Context::new(), request, &next)
            .await
            .expect("recorder answers");
        let mut sent = recorder.0.lock().expect("not poisoned");
        assert_eq!(sent.len(), 1);
        sent.remove(0)
    }

    fn expected_authorization(sent: &Request, content_length: u64) -> String {
        let to_sign = string_to_sign(
            "devstoreaccount1",
            sent.method(),
            sent.url(),
            sent.headers(),
            content_length,
        );
        let signature = sign(
            &to_sign,
            &signing_key(&Secret::new(DEV_KEY)).expect("valid key"),
        );
        format!("SharedKey devstoreaccount1:{signature}")
    }

    #[tokio::test]
    async fn policy_sets_date_and_signature_then_calls_next() {
        let mut request = Request::new(
            url("http://127.0.0.1:10001/devstoreaccount1/q/messages"),
            Method::Post,
        );
        request.insert_header("x-ms-version", "2026-04-06");
        request.insert_header("content-type", "application/xml");
        request.insert_header("x-ms-date", "Mon, 01 Jan 2001 00:00:00 GMT");
        request.set_body("<QueueMessage><MessageText>hi</MessageText></QueueMessage>");

        let sent = send_through_policy(&mut request).await;

        let date = sent
            .headers()
            .get_optional_str(&MS_DATE)
            .expect("x-ms-date set");
        assert_ne!(
            date, "Mon, 01 Jan 2001 00:00:00 GMT",
            "a stale date is replaced"
        );
        assert!(date.ends_with(" GMT") && date.len() == DATE.len(), "{date}");
        let authorization = sent
            .headers()
            .get_optional_str(&AUTHORIZATION)
            .expect("authorization set");
        assert_eq!(authorization, expected_authorization(&sent, 58));
        assert!(authorization.starts_with("SharedKey devstoreaccount1:"));
    }

    #[tokio::test]
    async fn policy_takes_content_length_from_a_streaming_body() {
        let mut request = Request::new(
            url("http://127.0.0.1:10001/devstoreaccount1/q/messages"),
            Method::Post,
        );
        request.set_body(Body::SeekableStream(Box::new(BytesStream::new(
            b"0123456789".to_vec(),
        ))));
        let sent = send_through_policy(&mut request).await;
        let authorization = sent
            .headers()
            .get_optional_str(&AUTHORIZATION)
            .expect("authorization set");
        assert_eq!(authorization, expected_authorization(&sent, 10));
    }

    /// azure_core hands the same `Request` to every try: signing it again must replace the
    /// date and the signature, not add a second of either.
    #[tokio::test]
    async fn signing_the_same_request_twice_replaces_date_and_signature() {
        let mut request = Request::new(
            url("http://127.0.0.1:10001/devstoreaccount1/q/messages/id?popreceipt=abc"),
            Method::Delete,
        );
        request.insert_header("x-ms-version", "2026-04-06");
        let first = send_through_policy(&mut request).await;
        let second = send_through_policy(&mut request).await;
        for sent in [&first, &second] {
            let values =
                |name: &HeaderName| sent.headers().iter().filter(|(n, _)| *n == name).count();
            assert_eq!(values(&AUTHORIZATION), 1);
            assert_eq!(values(&MS_DATE), 1);
        }
        assert_eq!(first.url(), second.url());
        let authorization = second
            .headers()
            .get_optional_str(&AUTHORIZATION)
            .expect("authorization set");
        assert_eq!(authorization, expected_authorization(&second, 0));
    }

    #[tokio::test]
    async fn policy_without_a_next_policy_fails_instead_of_panicking() {
        let policy = SharedKeyPolicy::new("acct", Secret::new(DEV_KEY)).expect("valid");
        let mut request = Request::new(url("https://acct.queue.core.windows.net/q"), Method::Get);
        assert!(policy
            .send(&Context::new(), &mut request, &[])
            .await
            .is_err());
    }
}

/// Properties of the canonical forms, for any headers and URLs (proptest, 256 cases each).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[xX]-[mM][sS]-[a-zA-Z0-9-]{1,10}",
            "(content-type|Content-MD5|range|if-match|accept|user-agent)",
        ]
    }

    fn header_value() -> impl Strategy<Value = String> {
        "[ \t]{0,2}[!-~]{0,12}([ \t]{1,3}[!-~]{1,8})?[ \t]{0,2}"
    }

    /// The case the property leaves out: a parameter name that decodes to ':' is sorted by its
    /// decoded bytes (':' after '0'), like any other name.
    #[test]
    fn a_name_that_decodes_to_a_colon_sorts_by_its_decoded_bytes() {
        let mut url = Url::parse("https://acct.queue.core.windows.net/q").expect("url");
        url.set_query(Some("%3a=&0="));
        assert_eq!(canonicalized_resource("acct", &url), "/acct/q\n0:\n::");
    }

    /// The other case the property leaves out: a name that decodes to a line feed is sorted by
    /// its decoded bytes too (before '0').
    #[test]
    fn a_name_that_decodes_to_a_line_feed_sorts_by_its_decoded_bytes() {
        let mut url = Url::parse("https://acct.queue.core.windows.net/q").expect("url");
        url.set_query(Some("0=&%0a="));
        assert_eq!(canonicalized_resource("acct", &url), "/acct/q\n\n:\n0:");
    }

    proptest! {
        #[test]
        fn canonical_headers_are_the_x_ms_ones_lowercased_sorted_and_trimmed(
            headers in prop::collection::vec((header_name(), header_value()), 0..10),
        ) {
            let pairs: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let canonical = canonicalized_headers(pairs.iter().copied());
            let lines: Vec<&str> = canonical.lines().collect();
            let names: Vec<&str> = lines
                .iter()
                .map(|line| line.split_once(':').map_or(*line, |(n, _)| n))
                .collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&names, &sorted, "sorted, each name once");
            let expected: std::collections::BTreeSet<String> = headers
                .iter()
                .map(|(n, _)| n.to_ascii_lowercase())
                .filter(|n| n.starts_with("x-ms-"))
                .collect();
            let got: std::collections::BTreeSet<String> =
                names.iter().map(|n| n.to_string()).collect();
            prop_assert_eq!(got, expected);
            // Each line: the name's values in order of appearance, trimmed, comma-joined.
            for line in &lines {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let values: Vec<&str> = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim())
                    .collect();
                prop_assert_eq!(value, values.join(","));
            }
            prop_assert!(canonical.is_empty() || canonical.ends_with('\n'));
        }

        #[test]
        fn canonical_headers_do_not_depend_on_the_order_of_distinct_names(
            headers in prop::collection::btree_map("x-ms-[a-z]{1,8}", header_value(), 0..8),
            seed in any::<u64>(),
        ) {
            let forward: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let mut shuffled = forward.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            prop_assert_eq!(
                canonicalized_headers(forward.iter().copied()),
                canonicalized_headers(shuffled.iter().copied())
            );
        }

        #[test]
        fn canonical_resources_sort_and_decode_any_query(
            path in "(/[a-zA-Z0-9%._~-]{0,10}){0,4}",
            params in prop::collection::vec(("[a-zA-Z%0-9]{1,6}", "[a-zA-Z0-9%+=,._~-]{0,8}"), 0..6),
        ) {
            // The check below splits lines at '\n' and reads each line's name up to its first
            // ':', so a name that decodes to either (the generator can write `%3a` and `%0a`)
            // would be misread by the test itself; Azure's query parameter names contain
            // neither. Both cases are unit tests above.
            prop_assume!(params.iter().all(|(k, _)| {
                let k = k.to_ascii_lowercase();
                !k.contains("%3a") && !k.contains("%0a")
            }));
            let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut url = Url::parse("https://acct.queue.core.windows.net/").expect("url");
            url.set_path(&path);
            if !query.is_empty() {
                url.set_query(Some(&query.join("&")));
            }
            let resource = canonicalized_resource("acct", &url);
            let mut lines = resource.split('\n');
            let first = format!("/acct{}", url.path());
            prop_assert_eq!(lines.next(), Some(first.as_str()));
            let names: Vec<String> = lines
                .map(|line| line.split_once(':').map_or(line, |(n, _)| n).to_string())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&names, &sorted, "sorted, each name once");
            prop_assert!(names.iter().all(|n| *n == n.to_lowercase()));
            // The order of the parameters in the URL does not matter.
            let mut reversed = url.clone();
            if !query.is_empty() {
                let mut back = query.clone();
                back.reverse();
                reversed.set_query(Some(&back.join("&")));
            }
            prop_assert_eq!(canonicalized_resource("acct", &reversed), resource);
        }

        #[test]
        fn any_request_gets_a_string_to_sign_without_panic(
            path in "[ -~]{0,30}",
            query in "[ -~]{0,30}",
            headers in prop::collection::vec((header_name(), header_value()), 0..6),
            length in any::<u64>(),
        ) {
            let mut url = Url::parse("http://127.0.0.1:10001/devstoreaccount1").expect("url");
            url.set_path(&path);
            url.set_query(Some(&query));
            let mut map = Headers::new();
            for (name, value) in &headers {
                map.insert(name.to_ascii_lowercase(), value.clone());
            }
            let text = string_to_sign("devstoreaccount1", Method::Put, &url, &map, length);
            prop_assert!(text.starts_with("PUT\n"));
            prop_assert_eq!(text.matches('\n').count() >= 12, true);
        }
    }
}
