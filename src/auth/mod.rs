//! Authorization of queue requests (and of the requests to the endpoint, [`endpoint`]).
//!
//! The official `azure_storage_queue` client only knows Microsoft Entra tokens. Account keys
//! (connection strings, Azurite) and SAS tokens are added here as `azure_core` per-try pipeline
//! policies, so every request — including the SDK's own retries — is authorized right before it
//! leaves, with a fresh date and signature. A token credential slots in the same way: the client
//! takes it as its `TokenCredential` instead of a policy.
//!
//! - [`credential`]: the [`Credential`] and what it contributes to a queue client.
//! - [`sas`]: the SAS policy.
//! - [`select`]: credential selection — from the storage variables as given to the queue's
//!   URL and the [`Credential`].
//! - [`shared_key`]: the Shared Key signature (HMAC-SHA256 over the canonicalized request).
//! - [`entra`]: Microsoft Entra ID tokens from a workload identity or a managed identity.
//! - [`endpoint`]: the endpoint's bearer token (a token file re-read as it rotates, or an
//!   Entra ID token for `ENDPOINT_AUDIENCE` from the queue's credential).
//! - [`refusal`]: the service's own reason when it refuses a credential.

pub(crate) mod credential;
pub(crate) mod endpoint;
pub(crate) mod entra;
mod policy;
pub(crate) mod refusal;
pub(crate) mod sas;
pub(crate) mod select;
pub(crate) mod shared_key;

pub(crate) use credential::Credential;
pub(crate) use select::{select, Storage};
