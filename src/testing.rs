//! What the crate's own integration tests (`tests/`), the demo tool (`tests/demo/tool.rs`) and
//! the benchmark (`tests/bench`) reach: not a product API. Hidden from the documentation and
//! without any promise of stability; the sidecar's one public entry point is [`crate::main`].
//!
//! - Queue clients authorized with an account key ([`account_key_queues`]), to create queues
//!   and send, receive, peek or clear messages around a sidecar under test. [`Queue::clear`]
//!   exists for them alone; [`Queue::create`] is what the sidecar uses for the poison queue
//!   and what they use for the main queue, which the sidecar never creates.
//! - The parsers that read outside input, for the property tests: durations, connection
//!   strings, `K_CE_OVERRIDES` ([`event_overrides`]), `Retry-After`, message text to event.
//! - The variable table, which `--help` must list in full.

pub use crate::config::connection_string::{self, InvalidAccountKey};
pub use crate::config::{
    format_duration, parse_duration, BatchConfig, ConfigError, ContentMode, EventConfig,
    EventGridSchema, Variable, VARIABLES,
};
pub use crate::pipeline::endpoint::parse_retry_after;
pub use crate::pipeline::event::{
    is_json, EventMapper, HttpPayload, Origin, BATCHED, JSON, STRUCTURED,
};
pub use crate::queue::{PeekedMessage, Queue, QueueConnector, QueueError, ReceivedMessage};
pub use crate::transport::install_crypto_provider;

use crate::auth::Credential;
use crate::config::Config;
use azure_core::credentials::Secret;
use std::collections::BTreeMap;

/// The client the sidecar's queue calls go through (TLS with the platform's roots).
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    install_crypto_provider();
    crate::transport::queue_client(true)
}

/// Queue clients signing with `account`'s `key` (Shared Key), over `http`.
pub fn account_key_queues(
    account: &str,
    key: &str,
    http: reqwest::Client,
) -> Result<QueueConnector, InvalidAccountKey> {
    let credential = Credential::shared_key(account.to_string(), Secret::new(key.to_string()))?;
    Ok(QueueConnector::new(credential, http))
}

/// The extensions `K_CE_OVERRIDES=raw` sets, read as the sidecar reads its configuration.
pub fn event_overrides(raw: String) -> Result<BTreeMap<String, String>, ConfigError> {
    Config::from_lookup(move |name| match name {
        "QUEUE_NAME" => Some("orders".into()),
        "ENDPOINT_URL" => Some("http://127.0.0.1:8080/".into()),
        "AZURE_STORAGE_CONNECTION_STRING" => Some("UseDevelopmentStorage=true".into()),
        "K_CE_OVERRIDES" => Some(raw.clone()),
        _ => None,
    })
    .map(|config| config.event.overrides)
}
