//! What every authorization policy shares.

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use std::sync::Arc;

/// Passes `request` on to the rest of the pipeline. Every authorization policy sits before the
/// transport, so an empty `next` is a wiring mistake, reported rather than panicked on.
pub(super) async fn send_next(
    policy: &str,
    ctx: &Context<'_>,
    request: &mut Request,
    next: &[Arc<dyn Policy>],
) -> PolicyResult {
    let Some((first, rest)) = next.split_first() else {
        return Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Other,
            format!("{policy} must not be the last policy of the pipeline"),
        ));
    };
    first.send(ctx, request, rest).await
}
