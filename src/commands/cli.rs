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
    /// `poison peek` / `poison redrive`.
    Poison(PoisonCommand),
    /// Arguments of a known command that are wrong: the message says how.
    Usage(String),
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
            ("poison", _) => match PoisonCommand::parse(&args[1..]) {
                Ok(command) => Command::Poison(command),
                Err(usage) => Command::Usage(usage),
            },
            _ => Command::Unknown(args.join(" ")),
        }
    }
}

/// The poison queue commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoisonCommand {
    /// Show up to `max` (at most 32) poison messages without touching them.
    Peek { max: u32, json: bool },
    /// Move poison messages (all, or at most `max`) back to the main queue.
    Redrive { max: Option<u64>, dry_run: bool },
}

/// How many messages `poison peek` shows unless `--max` says otherwise: all that one Peek
/// Messages call can return.
pub(crate) const PEEK_DEFAULT: u32 = 32;

impl PoisonCommand {
    /// Parses the arguments after `poison`.
    fn parse(args: &[String]) -> Result<Self, String> {
        let usage =
            "expected `poison peek [--max N] [--json]` or `poison redrive [--max N] [--dry-run]`";
        let (Some(which), options) = (args.first(), args.get(1..).unwrap_or_default()) else {
            return Err(usage.into());
        };
        let mut max: Option<u64> = None;
        let mut flag = false;
        let flag_name = match which.as_str() {
            "peek" => "--json",
            "redrive" => "--dry-run",
            _ => return Err(format!("{usage}, got `poison {which}`")),
        };
        let mut options = options.iter();
        while let Some(option) = options.next() {
            match option.as_str() {
                "--max" => {
                    let value = options.next().map(String::as_str).unwrap_or("");
                    match value.parse::<u64>() {
                        Ok(n) if n >= 1 => max = Some(n),
                        _ => {
                            return Err(format!(
                                "--max expects a whole number of at least 1, got {value:?}"
                            ))
                        }
                    }
                }
                name if name == flag_name => flag = true,
                other => return Err(format!("{usage}, got {other:?}")),
            }
        }
        Ok(match which.as_str() {
            "peek" => PoisonCommand::Peek {
                max: max.map_or(PEEK_DEFAULT, |n| n.min(u64::from(u32::MAX)) as u32),
                json: flag,
            },
            _ => PoisonCommand::Redrive { max, dry_run: flag },
        })
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
        "    azure-queue-sidecar poison peek [--max N] [--json]\n",
        "                                             list poison messages (original id, reason, last status or\n",
        "                                             error, attempts, time of failure, text prefix) without hiding\n",
        "                                             or removing any; at most 32 (Peek Messages cannot page);\n",
        "                                             --json: one JSON object per line; exit 0, 1 if unreadable\n",
        "    azure-queue-sidecar poison redrive [--max N] [--dry-run]\n",
        "                                             move poison messages (all, or N) back to QUEUE_NAME with\n",
        "                                             their original text; each is deleted from the poison queue\n",
        "                                             only after the send succeeded (a crash may duplicate, never\n",
        "                                             lose); --dry-run moves nothing and shows what would move (at\n",
        "                                             most 32); exit 0, 1 if a message could not be moved\n",
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
        assert_eq!(
            parse(&["poison", "peek"]),
            Command::Poison(PoisonCommand::Peek {
                max: 32,
                json: false
            })
        );
        assert_eq!(
            parse(&["poison", "peek", "--json", "--max", "5"]),
            Command::Poison(PoisonCommand::Peek { max: 5, json: true })
        );
        assert_eq!(
            parse(&["poison", "redrive"]),
            Command::Poison(PoisonCommand::Redrive {
                max: None,
                dry_run: false
            })
        );
        assert_eq!(
            parse(&["poison", "redrive", "--dry-run", "--max", "100"]),
            Command::Poison(PoisonCommand::Redrive {
                max: Some(100),
                dry_run: true
            })
        );
        for bad in [
            &["poison"][..],
            &["poison", "purge"],
            &["poison", "peek", "--max"],
            &["poison", "peek", "--max", "0"],
            &["poison", "peek", "--dry-run"],
            &["poison", "redrive", "--json"],
        ] {
            assert!(matches!(parse(bad), Command::Usage(_)), "{bad:?}");
        }
        assert!(matches!(parse(&["--frobnicate"]), Command::Unknown(_)));
    }

    #[test]
    fn help_documents_every_variable_and_command() {
        let text = help();
        for v in VARIABLES {
            assert!(text.contains(v.name), "{}", v.name);
        }
        for word in [
            "check",
            "healthcheck",
            "poison peek",
            "poison redrive",
            "--dry-run",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(text.contains(word), "{word}");
        }
    }
}
