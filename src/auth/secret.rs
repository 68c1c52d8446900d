//! Last-line redaction of secrets in text that may reach a log.
//!
//! Secrets are kept in [`azure_core::credentials::Secret`] wherever we control them, but some
//! text is produced by code we do not control: `reqwest` and `azure_core` errors quote the
//! request URL, and a SAS-authorized URL carries its signature in the `sig` query parameter; a
//! mistyped environment variable may echo a whole connection string. [`redact`] is the safety
//! net applied to such text before it is logged or printed. It errs on the side of hiding too
//! much: a redacted diagnostic is an inconvenience, a leaked key is an incident.

/// What replaces a secret value.
const REDACTED: &str = "REDACTED";

/// Returns `text` with every secret value it can recognise replaced by `REDACTED`:
///
/// - the value of a `sig=` query parameter (also in its percent-encoded form `sig%3D`), up to
///   `&`, whitespace, a quote or the end: the SAS signature is the part that grants access;
/// - the value of an `AccountKey=` or `SharedAccessSignature=` connection-string segment, up to
///   `;`, whitespace, a quote or the end. Neither a base64 key nor a URL-encoded SAS token can
///   contain whitespace or quotes, so stopping there loses nothing and keeps the rest of a log
///   line readable.
///
/// Names are matched case-insensitively, because both Azure query parameter names and
/// connection-string keys are case-insensitive to the service.
pub fn redact(text: &str) -> String {
    // Connection-string segments first: a SharedAccessSignature value contains `sig=`, and
    // hiding the whole token hides more (the permissions and expiry are not secret, but the
    // token as a whole is a credential).
    let text = redact_values(text, "accountkey", &["="], true, is_segment_end);
    let text = redact_values(&text, "sharedaccesssignature", &["="], true, is_segment_end);
    redact_values(&text, "sig", &["=", "%3d"], false, is_query_value_end)
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

/// The error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") hides the useful part ("connection refused").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::redact;

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
}
