//! Redaction: text and URLs made fit for logs, errors and `check` output. A leaf: it names no
//! other module, so every layer may use it.
//!
//! Secrets are kept in [`azure_core::credentials::Secret`] wherever we control them, but some
//! text is produced by code we do not control: `reqwest` and `azure_core` errors quote the
//! request URL, and a SAS-authorized URL carries its signature in the `sig` query parameter; a
//! mistyped environment variable may echo a whole connection string; identity flows carry
//! JWTs. [`secrets`] is the one safety net applied to such text before it is logged or
//! printed. It errs on the side of hiding too much: a redacted diagnostic is an inconvenience,
//! a leaked key is an incident.
//!
//! URLs we hold as values (the endpoint, the queue) are shown with [`url`] instead, which knows
//! their structure: user info and query values go, the shape stays. [`url_text`] does the same
//! for a URL as a user typed it, parseable or not.

use url::Url;

/// What replaces a secret value.
const REDACTED: &str = "REDACTED";

/// Returns `text` with every secret value it can recognise replaced by `REDACTED`:
///
/// - a JWT (access tokens and Kubernetes service account tokens both start with `eyJ`, the
///   base64url of `{"`) and the value of a `client_assertion=` form field;
/// - the value of a `sig=` query parameter (also in its percent-encoded form `sig%3D`), up to
///   `&`, whitespace, a quote or the end: the SAS signature is the part that grants access;
/// - the value of an `AccountKey=` or `SharedAccessSignature=` connection-string segment, up to
///   `;`, whitespace, a quote or the end. Neither a base64 key nor a URL-encoded SAS token can
///   contain whitespace or quotes, so stopping there loses nothing and keeps the rest of a log
///   line readable.
///
/// Names are matched case-insensitively, because both Azure query parameter names and
/// connection-string keys are case-insensitive to the service.
pub(crate) fn secrets(text: &str) -> String {
    // Connection-string segments first: a SharedAccessSignature value contains `sig=`, and
    // hiding the whole token hides more (the permissions and expiry are not secret, but the
    // token as a whole is a credential).
    let text = redact_values(text, "accountkey", &["="], true, is_segment_end);
    let text = redact_values(&text, "sharedaccesssignature", &["="], true, is_segment_end);
    let text = redact_values(&text, "sig", &["=", "%3d"], false, is_query_value_end);
    redact_tokens(&text)
}

/// Ends a connection-string value.
fn is_segment_end(rest: &str) -> bool {
    rest.starts_with(|c: char| c == ';' || c == '"' || c == '\'' || c == '`' || c.is_whitespace())
}

/// Ends a query parameter value, including the percent-encoded `&` that a URL nested inside
/// another URL's query would use.
fn is_query_value_end(rest: &str) -> bool {
    rest.starts_with(|c: char| c == '&' || c == '"' || c == '\'' || c == '`' || c.is_whitespace())
        || rest.get(..3).is_some_and(|s| s.eq_ignore_ascii_case("%26"))
}

/// Replaces the value after every occurrence of `name` (lowercase ASCII) followed by one of
/// `separators` (lowercase ASCII). With `spaces_around_separator`, blanks between the name,
/// the separator and the value are skipped, as a lenient connection-string parser accepts them.
fn redact_values(
    text: &str,
    name: &str,
    separators: &[&str],
    spaces_around_separator: bool,
    is_end: fn(&str) -> bool,
) -> String {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let skip_blanks = |mut i: usize| {
        if spaces_around_separator {
            while lower[i..].starts_with([' ', '\t']) {
                i += 1;
            }
        }
        i
    };

    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(name) {
        let name_start = search + found;
        // `name` is ASCII, so one past its first byte is a char boundary.
        search = name_start + 1;

        let after_name = skip_blanks(name_start + name.len());
        let Some(separator) = separators
            .iter()
            .find(|s| lower[after_name..].starts_with(**s))
        else {
            continue;
        };
        let value_start = skip_blanks(after_name + separator.len());
        let value_end = text[value_start..]
            .char_indices()
            .find(|&(i, _)| is_end(&text[value_start + i..]))
            .map_or(text.len(), |(i, _)| value_start + i);
        if value_end == value_start {
            continue;
        }

        out.push_str(&text[copied..value_start]);
        out.push_str(REDACTED);
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces JWTs and `client_assertion=` values.
fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let jwt = rest.find("eyJ");
        let form = rest.find("client_assertion=");
        let (start, skip) = match (jwt, form) {
            (Some(j), Some(f)) if f < j => (f, "client_assertion=".len()),
            (Some(j), _) => (j, 0),
            (None, Some(f)) => (f, "client_assertion=".len()),
            (None, None) => break,
        };
        out.push_str(&rest[..start + skip]);
        let value = &rest[start + skip..];
        let end = value
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%' | '='))
            })
            .unwrap_or(value.len());
        out.push_str(REDACTED);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// A URL fit for logs and `check` output: the user info and every query value are replaced,
/// because an endpoint URL may carry basic-auth credentials (a token is often the user name
/// alone) or a key (Azure Functions' `?code=`). Query names stay, so the shape of the URL can
/// still be checked.
pub(crate) fn url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have credentials, which have none to hide.
    if !shown.username().is_empty() {
        let _ = shown.set_username(REDACTED);
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some(REDACTED));
    }
    if shown.query().is_some() {
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| name.into_owned())
            .collect();
        let mut query = shown.query_pairs_mut();
        query.clear();
        for name in &names {
            query.append_pair(name, REDACTED);
        }
    }
    shown.to_string()
}

/// A URL as a user typed it, fit for a configuration error: [`url`] if it parses;
/// otherwise the text with anything that could be user info (before an `@`) or a query or
/// fragment (from `?` or `#`) replaced, so a mistyped URL never echoes its secrets.
pub(crate) fn url_text(raw: &str) -> String {
    let raw = raw.trim();
    if let Ok(url) = Url::parse(raw) {
        if url.has_host() {
            return format!("{:?}", self::url(&url));
        }
    }
    let (before_query, query) = match raw.find(['?', '#']) {
        Some(at) => (&raw[..at], "?REDACTED"),
        None => (raw, ""),
    };
    let (scheme, rest) = match before_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("REDACTED@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    format!("{:?}", format!("{scheme}{rest}{query}"))
}

#[cfg(test)]
mod tests {
    use super::{secrets as redact, url as loggable_url, url_text as loggable_url_text};
    use url::Url;

    #[test]
    fn hides_the_sas_signature_in_a_url() {
        let text = "error sending request for url (https://acct.queue.core.windows.net/q/messages?sv=2022-11-02&sp=raup&sig=abc%2Bdef%3D&se=2030-01-01)";
        assert_eq!(
            redact(text),
            "error sending request for url (https://acct.queue.core.windows.net/q/messages?sv=2022-11-02&sp=raup&sig=REDACTED&se=2030-01-01)"
        );
    }

    #[test]
    fn signature_at_the_end_of_the_text_or_before_a_quote_or_blank() {
        assert_eq!(redact("?sig=abc"), "?sig=REDACTED");
        assert_eq!(
            redact("url=\"https://h/q?sig=abc\" x"),
            "url=\"https://h/q?sig=REDACTED\" x"
        );
        assert_eq!(
            redact("'https://h/q?a=1&sig=abc' x"),
            "'https://h/q?a=1&sig=REDACTED' x"
        );
        assert_eq!(
            redact("https://h/q?sig=abc next"),
            "https://h/q?sig=REDACTED next"
        );
        assert_eq!(
            redact("https://h/q?sig=abc\nnext"),
            "https://h/q?sig=REDACTED\nnext"
        );
    }

    #[test]
    fn signature_name_is_case_insensitive_and_may_be_percent_encoded() {
        assert_eq!(redact("?SIG=abc&x=1"), "?SIG=REDACTED&x=1");
        assert_eq!(redact("?Sig=abc"), "?Sig=REDACTED");
        assert_eq!(
            redact("redirect=https%3A%2F%2Fh%2Fq%3Fsig%3Dabc%2B%26sp%3Dr"),
            "redirect=https%3A%2F%2Fh%2Fq%3Fsig%3DREDACTED%26sp%3Dr"
        );
    }

    #[test]
    fn every_signature_is_hidden() {
        assert_eq!(
            redact("first ?sig=aaa then &sig=bbb"),
            "first ?sig=REDACTED then &sig=REDACTED"
        );
    }

    #[test]
    fn empty_signature_and_lookalikes_are_left_alone() {
        assert_eq!(redact("?sig=&a=1"), "?sig=&a=1");
        assert_eq!(
            redact("signal=3 and sig nothing"),
            "signal=3 and sig nothing"
        );
        assert_eq!(redact(""), "");
    }

    #[test]
    fn hides_the_account_key_of_a_connection_string() {
        let text = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5IQ==;EndpointSuffix=core.windows.net";
        assert_eq!(
            redact(text),
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=REDACTED;EndpointSuffix=core.windows.net"
        );
        assert_eq!(redact("AccountKey=c2VjcmV0"), "AccountKey=REDACTED");
        assert_eq!(
            redact("accountkey = c2VjcmV0 ;x=1"),
            "accountkey = REDACTED ;x=1"
        );
    }

    #[test]
    fn hides_the_whole_shared_access_signature_segment() {
        let text = "QueueEndpoint=https://acct.queue.core.windows.net;SharedAccessSignature=sv=2022-11-02&ss=q&sig=abc%3D;";
        assert_eq!(
            redact(text),
            "QueueEndpoint=https://acct.queue.core.windows.net;SharedAccessSignature=REDACTED;"
        );
        assert_eq!(
            redact("sharedaccesssignature=?sv=1&sig=abc"),
            "sharedaccesssignature=REDACTED"
        );
    }

    #[test]
    fn connection_string_inside_a_quoted_log_message() {
        let text = "invalid value \"AccountName=a;AccountKey=c2VjcmV0\" for AZURE_STORAGE_CONNECTION_STRING";
        assert_eq!(
            redact(text),
            "invalid value \"AccountName=a;AccountKey=REDACTED\" for AZURE_STORAGE_CONNECTION_STRING"
        );
    }

    #[test]
    fn redaction_is_idempotent_and_keeps_non_ascii_text() {
        let text = "é ?sig=abc ü AccountKey=xyz; ß";
        let once = redact(text);
        assert_eq!(once, "é ?sig=REDACTED ü AccountKey=REDACTED; ß");
        assert_eq!(redact(&once), once);
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        let text = "GET https://acct.queue.core.windows.net/q/messages?numofmessages=32&visibilitytimeout=30 failed: 503";
        assert_eq!(redact(text), text);
    }

    #[test]
    fn jwts_and_assertions_are_removed() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl";
        let text = format!("failed: token {jwt} and body client_assertion=abc.def&client_id=x");
        let clean = redact(&text);
        assert!(!clean.contains("eyJhbGci"), "{clean}");
        assert!(!clean.contains("abc.def"), "{clean}");
        assert!(clean.contains("client_id=x"), "{clean}");
        assert!(clean.contains("token REDACTED and"), "{clean}");
        assert_eq!(redact("no secrets here"), "no secrets here");
        assert!(!redact("https://a/?sig=SECRET").contains("SECRET"));
    }

    #[test]
    fn urls_lose_passwords_and_query_values() {
        let url =
            Url::parse("https://user:hunter2@app.example/api/events?code=SECRET&x=1").expect("url");
        let shown = loggable_url(&url);
        assert_eq!(
            shown,
            "https://REDACTED:REDACTED@app.example/api/events?code=REDACTED&x=REDACTED"
        );
        let token_as_user = Url::parse("https://TOKEN@app.example/").expect("url");
        assert_eq!(
            loggable_url(&token_as_user),
            "https://REDACTED@app.example/"
        );
        let plain = Url::parse("http://127.0.0.1:8080/events").expect("url");
        assert_eq!(loggable_url(&plain), "http://127.0.0.1:8080/events");
    }

    #[test]
    fn typed_urls_lose_credentials_and_queries_even_when_they_do_not_parse() {
        for (raw, shown) in [
            (
                "ftp://u:hunter2@h/p?code=S",
                r#""ftp://REDACTED:REDACTED@h/p?code=REDACTED""#,
            ),
            (
                "http://u:hunter2@bad host/p?code=S",
                r#""http://REDACTED@bad host/p?REDACTED""#,
            ),
            ("u:hunter2@host:80/x", r#""REDACTED@host:80/x""#),
            ("localhost:8080", r#""localhost:8080""#),
            ("not a url#frag", r#""not a url?REDACTED""#),
            ("http://a@b@c/", r#""http://REDACTED@c/""#),
        ] {
            assert_eq!(loggable_url_text(raw), shown, "{raw}");
        }
    }
}
