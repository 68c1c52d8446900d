//! The one bootstrap of every command that reaches the queue.
//!
//! [`Settings::from_env`] validates the configuration and selects the storage credential (a
//! mistake is a [`ConfigError`], exit status 2, before any network call);
//! [`Settings::clients`] builds every HTTP client through the one factory;
//! [`Settings::queues`] the queue clients on them; [`block_on`] runs the command's work on the
//! sidecar's single-threaded runtime.

use crate::auth::endpoint::{EndpointAuth, TokenUnavailable};
use crate::auth::{self, Storage};
use crate::config::{Config, ConfigError};
use crate::pipeline::endpoint::Deliverer;
use crate::queue::QueueConnector;
use crate::transport::Clients;
use std::future::Future;
use std::process::ExitCode;

/// The exit status of a configuration or usage error.
pub(crate) const USAGE_ERROR: u8 = 2;

/// The validated configuration and the storage account it selects.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub config: Config,
    pub storage: Storage,
}

impl Settings {
    /// Reads and validates the process environment, credential selection included.
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_config(Config::from_env()?)
    }

    /// Selects the storage credential for `config`.
    pub(crate) fn from_config(config: Config) -> Result<Self, ConfigError> {
        let storage = auth::select(&config.storage, &config.retry.poison_queue_name)?;
        auth::endpoint::check(&config.endpoint.auth, &storage.credential)?;
        Ok(Self { config, storage })
    }

    /// Every HTTP client, without any network call.
    pub(crate) fn clients(&self) -> reqwest::Result<Clients> {
        Clients::new(&self.config.endpoint, self.storage.needs_tls())
    }

    /// The endpoint's token source, on `clients` (an `ENDPOINT_AUDIENCE` token comes from the
    /// queue's credential, over the queue's client: one credential, one token cache).
    pub(crate) fn endpoint_auth(
        &self,
        clients: &Clients,
    ) -> Result<EndpointAuth, TokenUnavailable> {
        EndpointAuth::new(
            &self.config.endpoint.auth,
            &self.storage.credential,
            &clients.queue,
        )
    }

    /// The endpoint client every request to the endpoint goes through (POSTs and the probe).
    pub(crate) fn deliverer(&self, clients: &Clients) -> Result<Deliverer, TokenUnavailable> {
        Ok(Deliverer::new(
            clients.endpoint.clone(),
            &self.config.endpoint,
            self.endpoint_auth(clients)?,
        ))
    }

    /// Queue clients authorized as configured, on `clients`. The pump, the queue-length poll
    /// and the `check` command all get their queues here, so `check` tests exactly what the
    /// sidecar uses; and every queue shares one connection pool (and, with Entra ID, one
    /// token cache).
    pub(crate) fn queues(&self, clients: &Clients) -> QueueConnector {
        QueueConnector::new(self.storage.credential.clone(), clients.queue.clone())
            .with_receive_transport(clients.receive.clone())
    }
}

/// Runs `work` to completion on the sidecar's runtime: one thread, because the work is
/// I/O-bound and a sidecar should leave the cores to the app. `Err` (exit status 1, said on
/// stderr) if the runtime cannot start.
pub(crate) fn block_on<F: Future>(work: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(work)),
        Err(e) => {
            eprintln!("azure-queue-sidecar: cannot start the async runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}
