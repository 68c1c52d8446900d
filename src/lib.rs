//! # azure-queue-sidecar
//!
//! A sidecar that moves messages from an Azure Storage Queue to an HTTP endpoint as
//! CloudEvents, deleting each message only after the endpoint answered 2xx.
//!
//! ## A tour, top-down
//!
//! Each layer names only the layers below it; `tests/modules.py` prints the graph and fails
//! CI on a cycle (and when the configuration or telemetry names a domain module).
//!
//! 1. [`commands`]: what the binary does — [`commands::cli`] parses the arguments and writes
//!    `--help` from the variable table; [`commands::run`] runs the sidecar (signals, the
//!    pipeline, the admin server, the queue-length poll, the summary line);
//!    [`commands::check`] diagnoses a deployment; [`commands::healthcheck`] GETs the local
//!    probe; [`commands::poison`] peeks at the poison queue and redrives it. They share one [`commands::bootstrap`]: validated settings (configuration and
//!    selected credential), the HTTP clients, the queue clients, the single-threaded runtime.
//! 2. [`pipeline`]: the message pipeline — [`pipeline::pump`] (the receive loop: bounded
//!    concurrency, idle backoff, the pause while the endpoint is down, graceful drain, the end
//!    of a run with `EXIT_WHEN_IDLE`) hands
//!    each message to [`pipeline::handler`] (one message's life: event, POST with lease
//!    renewal, then delete, retry or poison), which asks [`pipeline::policy`] (pure rules)
//!    what to do. [`pipeline::endpoint`] is the endpoint (one POST and what its answer means,
//!    the probe, the gate that pauses receiving, and the one place every request to the
//!    endpoint gets its bearer token and trace headers); [`pipeline::event`] turns a message
//!    into a CloudEvent and HTTP request parts; [`pipeline::poison`] is the poison queue;
//!    [`pipeline::batch`] holds batched mode's rules (which messages share a POST, the
//!    bisection of a rejected batch); [`pipeline::trace`] is W3C trace context (a trace per
//!    message, a span per attempt); [`pipeline::capacity`] is the pump's budgets (delivery
//!    slots held only while a POST runs, the settling budget for deletes, retries and poison
//!    writes, receive credits for prefetch, the bytes of big messages).
//! 3. [`admin`] serves `/healthz`, `/readyz` and `/metrics` from telemetry's state;
//!    [`queue_length`] polls the approximate message count and the oldest message's age for
//!    the backlog gauges.
//! 4. [`queue`]: the queue operations we use, failures classified into what the loop can act
//!    on, and the one retry layer of every queue call (explicit time budgets; the SDK's own
//!    retries are off); Get Messages answers are decoded by its own pull parser.
//! 5. [`auth`]: how queue requests are authorized — [`auth::select`] chooses the credential
//!    from the configuration; Shared Key and SAS are `azure_core` per-try policies,
//!    [`auth::entra`] gets Microsoft Entra ID tokens from a workload or managed identity;
//!    [`auth::endpoint`] is the endpoint's bearer token (a token file re-read as it rotates,
//!    or an Entra ID token for `ENDPOINT_AUDIENCE` from the queue's credential).
//! 6. [`transport`]: every HTTP client (queue, receive pool, token endpoints, endpoint), its
//!    TLS roots and user agent, from one factory.
//! 7. [`telemetry`]: typed events, each writing its log line and bumping its metric together;
//!    the one flood control ([`telemetry::tracker`], "report once per change of state"); the
//!    metrics registry; the state behind the probes; log setup. It names no other module.
//! 8. [`config`]: every environment variable, typed and validated before anything starts;
//!    the variable table is the single source of the defaults, `--help` and the README's
//!    tables. It names no other module but `redact`.
//! 9. Leaves, naming nothing: [`redact`] (secrets out of text, URLs fit for logs),
//!    [`error_text`] (an error on one line), [`backoff`] (randomized exponential backoff),
//!    [`shutdown`] (the stop signal every long-running task listens to, and "stop now").
//!
//! ## The public surface
//!
//! Everything is crate-private except [`main`], which the binary (`src/main.rs`) calls, and
//! the hidden `testing` module, which the integration tests, the demo tool and the benchmark
//! reach (the queue client, the parsers the property tests exercise, the variable table).
#![warn(unreachable_pub)]

mod admin;
mod auth;
mod backoff;
mod commands;
mod config;
mod error_text;
mod pipeline;
mod queue;
mod queue_length;
mod redact;
mod shutdown;
mod telemetry;
#[doc(hidden)]
pub mod testing;
mod transport;

/// Runs the command the arguments (after the program name) ask for and returns the exit
/// status; see `--help`.
pub use commands::main;
