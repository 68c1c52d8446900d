//! The command line: what each command does, and `--help`, generated from the variable table.
//!
//! The container's entrypoint is the binary itself and a scratch image has no shell, so the
//! commands replace the tools an operator would otherwise reach for: `check` instead of curl
//! and the az CLI, `healthcheck` instead of wget in a Docker `HEALTHCHECK`. `--help` is built
//! from [`VARIABLES`] so that every variable the configuration reads is documented, with its
//! default, and cannot be forgotten.

use crate::config::VARIABLES;

/// What the binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// No arguments: run the sidecar.
    Run,
    Help,
    Version,
    /// Diagnose configuration, credentials, queue and endpoint.
    Check,
    /// GET the local probe (`/healthz` unless a path is given).
    Healthcheck(Vec<String>),
    /// Anything else: a usage error.
    Unknown(String),
}

impl Command {
    /// Parses the arguments after the program name.
    pub(crate) fn parse(args: &[String]) -> Self {
        let Some(first) = args.first() else {
            return Command::Run;
        };
        match (first.as_str(), args.len()) {
            ("-h" | "--help" | "help", _) => Command::Help,
            ("-V" | "--version" | "version", _) => Command::Version,
            ("check", 1) => Command::Check,
            ("healthcheck", 1 | 2) => Command::Healthcheck(args[1..].to_vec()),
            _ => Command::Unknown(args.join(" ")),
        }
    }
}

/// The `--help` text.
pub(crate) fn help() -> String {
    let mut out = String::from(concat!(
        "azure-queue-sidecar ", env!("CARGO_PKG_VERSION"), "\n",
        "Delivers Azure Storage Queue messages to an HTTP endpoint as CloudEvents.\n",
        "A message is deleted only after the endpoint answered 2xx.\n\n",
        "USAGE:\n",
        "    azure-queue-sidecar                      run the sidecar (configured by environment)\n",
        "    azure-queue-sidecar check                check configuration, credentials, queue and endpoint;\n",
        "                                             one line per check; exit 0 ok, 1 failed, 2 bad configuration\n",
        "    azure-queue-sidecar healthcheck [PATH]   GET the local /healthz (or PATH, e.g. /readyz) on\n",
        "                                             ADMIN_ADDR; exit 0 if it answers 200, else 1\n",
        "    azure-queue-sidecar --help               this text\n",
        "    azure-queue-sidecar --version            the version\n\n",
        "ADMIN ENDPOINTS (on ADMIN_ADDR):\n",
        "    /healthz   liveness: 200 while the receive loop makes progress\n",
        "    /readyz    readiness: 200 once the queue answered and while its last call succeeded\n",
        "    /metrics   Prometheus metrics (OpenMetrics text)\n\n",
        "EXIT STATUS (run): 0 after a clean shutdown, 1 if the sidecar cannot start,\n",
        "    2 for a configuration error (one line naming the variable).\n\n",
        "ENVIRONMENT (durations: 500ms, 30s, 5m, 1h, 7d):\n",
    ));
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in VARIABLES {
        out.push_str(&format!(
            "    {:width$}  {} [default: {}]\n",
            v.name,
            v.help,
            v.default.help()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Command::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commands_are_recognised() {
        assert_eq!(parse(&[]), Command::Run);
        assert_eq!(parse(&["--help"]), Command::Help);
        assert_eq!(parse(&["-V"]), Command::Version);
        assert_eq!(parse(&["check"]), Command::Check);
        assert_eq!(parse(&["healthcheck"]), Command::Healthcheck(vec![]));
        assert_eq!(
            parse(&["healthcheck", "/readyz"]),
            Command::Healthcheck(vec!["/readyz".into()])
        );
        assert!(matches!(parse(&["check", "extra"]), Command::Unknown(_)));
        assert!(matches!(parse(&["--frobnicate"]), Command::Unknown(_)));
    }

    #[test]
    fn help_documents_every_variable_and_command() {
        let text = help();
        for v in VARIABLES {
            assert!(text.contains(v.name), "{}", v.name);
        }
        for word in ["check", "healthcheck", "/healthz", "/readyz", "/metrics"] {
            assert!(text.contains(word), "{word}");
        }
    }
}
