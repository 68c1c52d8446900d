//! The service's own reason when it refuses a credential.
//!
//! A 401/403 from Azure Storage says only `AuthenticationFailed` in its error code; the useful
//! part ("Audience validation failed", "Signature not valid in the specified time frame",
//! Azurite's "Invalid token audience.") is in the `<AuthenticationErrorDetail>` element of the
//! XML body. We pass it on so a refused token or key explains itself in the log line, after
//! removing what could be sensitive: quoted segments (the service quotes the request's MAC
//! signature and string-to-sign there) and anything [`redact::secrets`] recognises.

use crate::redact;
use azure_core::error::ErrorKind;

/// Longest detail we keep; the service's sentences are short, anything longer is noise.
const MAX_DETAIL: usize = 200;

/// The `AuthenticationErrorDetail` of a refused request, if the error carries one.
pub(crate) fn authentication_detail(error: &azure_core::Error) -> Option<String> {
    let ErrorKind::HttpResponse {
        raw_response: Some(response),
        ..
    } = error.kind()
    else {
        return None;
    };
    detail_from_body(response.body())
}

/// Extracts and cleans the element's text from an XML error body.
pub(crate) fn detail_from_body(body: &[u8]) -> Option<String> {
    const OPEN: &str = "<AuthenticationErrorDetail>";
    const CLOSE: &str = "</AuthenticationErrorDetail>";
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(OPEN)? + OPEN.len();
    let end = start + text[start..].find(CLOSE)?;
    let detail = unquote(xml_unescape(text[start..end].trim()).as_str());
    let detail = redact::secrets(&detail);
    let detail = match detail.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}...", &detail[..cut]),
        None => detail,
    };
    (!detail.is_empty()).then_some(detail)
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Replaces every `'...'` segment with `'...'` elided.
fn unquote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '\'' {
            if !inside {
                out.push_str("'...'");
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azurite_and_azure_details_are_extracted() {
        let azurite = br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.</Message><AuthenticationErrorDetail>Invalid token audience.</AuthenticationErrorDetail></Error>"#;
        assert_eq!(
            detail_from_body(azurite).as_deref(),
            Some("Invalid token audience.")
        );
        let azure = "\u{feff}<?xml version=\"1.0\"?><Error><Code>InvalidAuthenticationInfo</Code><AuthenticationErrorDetail>Audience validation failed. Audience did not match.</AuthenticationErrorDetail></Error>";
        assert_eq!(
            detail_from_body(azure.as_bytes()).as_deref(),
            Some("Audience validation failed. Audience did not match.")
        );
        assert_eq!(detail_from_body(b"<Error><Code>X</Code></Error>"), None);
        assert_eq!(detail_from_body(b"\xff\xfe"), None);
    }

    #[test]
    fn quoted_request_material_is_elided() {
        let body = b"<AuthenticationErrorDetail>The MAC signature found in the HTTP request 'c2lnbmF0dXJl' is not the same as any computed signature. Server used following string to sign: 'GET&#xA;/acct/q'.</AuthenticationErrorDetail>";
        let detail = detail_from_body(body).expect("detail");
        assert!(!detail.contains("c2lnbmF0dXJl"), "{detail}");
        assert!(!detail.contains("GET"), "{detail}");
        assert!(detail.starts_with("The MAC signature found in the HTTP request '...' is not"));
        let long = format!(
            "<AuthenticationErrorDetail>{}</AuthenticationErrorDetail>",
            "x".repeat(500)
        );
        assert!(detail_from_body(long.as_bytes()).expect("detail").len() <= MAX_DETAIL + 3);
    }
}
