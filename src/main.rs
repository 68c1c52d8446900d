//! The `azure-queue-sidecar` binary. Everything it does is in the library's `commands`; see
//! `--help` for the commands and exit statuses.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    azure_queue_sidecar::main(&args)
}
