//! The commands: what the binary does when started, and the one bootstrap they share.
//!
//! - [`cli`]: the command line, and `--help` (generated from the variable table).
//! - [`run`]: no arguments — run the sidecar until a signal stops it.
//! - [`check`]: diagnose configuration, credentials, queue and endpoint.
//! - [`healthcheck`]: GET the local probe, for Docker's `HEALTHCHECK`.
//! - [`poison`]: `poison peek` and `poison redrive`, the poison queue's operator tools.
//!
//! - [`bootstrap`]: what every command that reaches the queue starts from — the validated
//!   settings, the clients, the queue clients, the runtime. A new command (a poison queue
//!   peek, a redrive) takes the same steps and needs nothing else.

pub(crate) mod bootstrap;
pub(crate) mod check;
pub(crate) mod cli;
pub(crate) mod healthcheck;
pub(crate) mod poison;
pub(crate) mod run;

use bootstrap::USAGE_ERROR;
use cli::Command;
use std::process::ExitCode;

/// Runs the command `args` (the arguments after the program name) asks for.
pub fn main(args: &[String]) -> ExitCode {
    match Command::parse(args) {
        Command::Run => run::main(),
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
        Command::Poison(command) => poison::main(command),
        Command::Usage(usage) => {
            eprintln!("azure-queue-sidecar: {usage}; see --help");
            ExitCode::from(USAGE_ERROR)
        }
        Command::Unknown(other) => {
            eprintln!("azure-queue-sidecar: unknown argument {other:?}; see --help");
            ExitCode::from(USAGE_ERROR)
        }
    }
}
