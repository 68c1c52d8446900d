//! What the crate's own integration tests (`tests/`), the demo tool (`tests/demo/tool.rs`) and
//! the benchmark (`tests/bench`) reach: not a product API. Hidden from the documentation and
//! without any promise of stability; the sidecar's one public entry point is [`crate::main`].
//!
//! - The queue client, to create queues and send, receive, peek or clear messages around a
//!   sidecar under test ([`Queue::clear`] exists for them alone; [`Queue::create`] is what the
//!   sidecar uses for the poison queue, and what they use for the main queue, which the
//!   sidecar never creates).
//! - The parsers that read outside input, for the property tests: durations, connection
//!   strings, `K_CE_OVERRIDES` (through [`Config::from_lookup`]), `Retry-After`, message text
//!   to event.
//! - The variable table, which `--help` must list in full.

pub use crate::auth::Credential;
pub use crate::config::connection_string;
pub use crate::config::{
    format_duration, parse_duration, Config, ConfigError, ContentMode, EventConfig,
    EventGridSchema, Variable, VARIABLES,
};
pub use crate::pipeline::endpoint::parse_retry_after;
pub use crate::pipeline::event::{is_json, EventMapper, HttpPayload, Origin, JSON, STRUCTURED};
pub use crate::queue::{Queue, QueueConnector, QueueError, ReceivedMessage};
pub use crate::transport::install_crypto_provider;

/// The client the sidecar's queue calls go through (TLS with the platform's roots).
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    install_crypto_provider();
    crate::transport::queue_client(true)
}
