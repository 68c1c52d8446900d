//! The `azure-queue-sidecar` binary: arguments, configuration, signals, exit codes.
//!
//! Exit status: 0 after a clean shutdown, 2 for a configuration or usage error (reported in
//! one line before any network call), 1 if the sidecar could not start. The `check` and
//! `healthcheck` commands are described in [`azure_queue_sidecar::cli`].

use azure_queue_sidecar::cli::{self, Command};
use azure_queue_sidecar::config::Config;
use azure_queue_sidecar::{check, healthcheck, runtime, shutdown, telemetry};
use std::process::ExitCode;
use tracing::{error, info};

const USAGE_ERROR: u8 = 2;

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Command::parse(&args) {
        Command::Run => run(),
        Command::Help => {
            print!("{}", cli::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("azure-queue-sidecar {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check => check::main(),
        Command::Healthcheck(args) => healthcheck::main(&args),
        Command::Unknown(other) => {
            eprintln!("azure-queue-sidecar: unknown argument {other:?}; see --help");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("azure-queue-sidecar: configuration error: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    telemetry::init(&config.log);

    // One thread: the work is I/O-bound and a sidecar should leave the cores to the app.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("azure-queue-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (trigger, listener) = shutdown::channel();
        tokio::spawn(async move {
            let mut signals = match shutdown::Signals::new() {
                Ok(signals) => signals,
                Err(e) => {
                    error!(error = %e, "cannot listen for signals; stopping");
                    trigger.trigger();
                    return;
                }
            };
            let signal = signals.next().await;
            info!(
                signal,
                "shutdown requested: no new messages, finishing deliveries in progress (send it again to stop now)"
            );
            trigger.trigger();
            // A second signal during the drain: stop now (the pump says what it cuts off).
            let signal = signals.next().await;
            info!(signal, "second signal: stopping now");
            trigger.stop_now();
        });
        match runtime::run(&config, listener).await {
            Ok(summary) => {
                info!(
                    received = summary.received,
                    delivered = summary.delivered,
                    delivered_not_deleted = summary.delivered_not_deleted,
                    redeliveries_avoided = summary.redeliveries_avoided,
                    retries_scheduled = summary.retries_scheduled,
                    poisoned = summary.poisoned,
                    poisoned_not_deleted = summary.poisoned_not_deleted,
                    released = summary.released,
                    left = summary.left,
                    "stopped"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}
