//! How an error reads in a log line: the whole chain on one line, or its innermost cause. A
//! leaf: it names no other module.
//!
//! Neither redacts: text that may quote a request URL or a credential flow goes through
//! [`crate::redact::secrets`] before it is logged.

use std::error::Error;

/// The error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") hides the useful part ("connection refused").
pub(crate) fn chain(error: &(dyn Error + 'static)) -> String {
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

/// [`chain`] with every line break folded into a space (azure_identity's messages span
/// several lines).
pub(crate) fn one_line(error: &(dyn Error + 'static)) -> String {
    chain(error)
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The innermost error's message ("Connection refused (os error 111)"), which says more than
/// reqwest's outer "error sending request for url (...)", and carries no URL.
pub(crate) fn root_cause(error: &(dyn Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_one_line() {
        let error = azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "ManagedIdentityCredential authentication failed. boom\nTo troubleshoot, visit https://aka.ms/x",
        );
        assert_eq!(
            one_line(&error),
            "ManagedIdentityCredential authentication failed. boom To troubleshoot, visit https://aka.ms/x"
        );
    }
}
