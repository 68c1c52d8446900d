//! # azure-queue-sidecar
//!
//! A sidecar that moves messages from an Azure Storage Queue to an HTTP endpoint as
//! CloudEvents, deleting each message only after the endpoint answered 2xx.
//!
//! ## A tour, top-down
//!
//! - [`config`]: every environment variable, typed and validated before anything starts.
//! - [`auth`]: how queue requests are authorized (Shared Key signing, SAS), as `azure_core`
//!   pipeline policies on the official `azure_storage_queue` client, or with Microsoft Entra ID
//!   tokens from a workload or managed identity (`azure_identity`).
//! - [`queue`]: the queue operations we use (receive, delete, update, send, properties), with
//!   failures classified into what the loop can act on, and the one retry layer of every queue
//!   call (explicit time budgets; the SDK's own retries are off).
//! - [`event`]: queue message → CloudEvent → HTTP headers and body (binary or structured):
//!   JSON kept verbatim, CloudEvents passed through as written, Event Grid events mapped.
//! - [`delivery`]: one POST and the meaning of its answer.
//! - [`retry`]: the rules after an attempt — delete, retry later (and when), or poison.
//! - [`worker`]: one message's life — POST with lease renewal, then delete, retry or poison,
//!   every queue call bounded by the message's lease.
//! - [`poison`]: the poison queue and its envelope format.
//! - [`pump`]: the receive loop — bounded concurrency, idle backoff, pause while the endpoint is
//!   down, graceful drain.
//! - [`runtime`]: wiring the parts together from a [`config::Config`].
//! - [`shutdown`]: the stop signal every long-running task listens to, and the second one
//!   ("stop now").
//! - [`telemetry`]: typed events that write the log line and bump the metric together.
//! - [`backoff`]: randomized exponential backoff, shared by idle polling and fault handling.
//! - [`admin`]: the HTTP server for `/healthz`, `/readyz` and `/metrics`.
//! - [`queue_length`]: the approximate-message-count poll behind the backlog gauge.
//! - [`check`]: the `check` command (configuration, credentials, queue, endpoint).
//! - [`healthcheck`]: the `healthcheck` command (the local `/healthz`, for Docker's
//!   `HEALTHCHECK`).
//! - [`cli`]: the command line: commands, `--help` (generated from the variable table).
//! - [`trust`]: custom CA trust (`SSL_CERT_FILE`, `SSL_CERT_DIR`, Knative's `K_CA_CERTS`).
//!
//! The binary (`main.rs`) reads the configuration, installs logging, turns SIGTERM/SIGINT into
//! a shutdown (a second one into "stop now"), runs the pump and prints a one-line summary.

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod error_text;
pub mod pipeline;
pub mod queue;
pub mod queue_length;
pub mod redact;
pub mod shutdown;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod transport;

pub use commands::main;
