//! Reading one variable: the source ([`Env`], empty values counting as unset), its typed
//! getters with their defaults from the variable table, the value syntaxes (numbers, durations,
//! flags), and the error that names the variable when a value is wrong.

use super::variables;
use azure_core::credentials::Secret;
use std::fmt;
use std::time::Duration;

/// A configuration mistake: which variable, and what was expected of it.
///
/// Its `Display` is the one line printed before exiting with status 2. It never contains the
/// value of a secret variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {expected}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What the variable should hold, in words a user can act on.
    pub expected: String,
}

impl ConfigError {
    pub(crate) fn new(variable: &'static str, expected: impl Into<String>) -> Self {
        Self {
            variable,
            expected: expected.into(),
        }
    }
}

/// A source of variable values by name.
pub(super) type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// The variable source, with empty values already filtered out. The typed getters take a
/// variable's default from the [`variables`] table.
pub(super) struct Env(pub(super) Lookup);

impl Env {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    pub(super) fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name)
            .map(|value| Secret::new(value.trim().to_string()))
    }

    /// The variable's value, or its default from the table.
    pub(super) fn value(&self, name: &'static str) -> Result<String, ConfigError> {
        match self.get(name) {
            Some(value) => Ok(value),
            None => table_default(name).map(str::to_string),
        }
    }

    pub(super) fn parse_range<T>(
        &self,
        name: &'static str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(name) else {
            return table_default(name)?
                .parse::<T>()
                .map_err(|_| bad_default(name));
        };
        match raw.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(ConfigError::new(
                name,
                format!("expected a whole number from {min} to {max}, got {:?}", raw),
            )),
        }
    }

    pub(super) fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => parse_duration(table_default(name)?).ok_or_else(|| bad_default(name)),
            Some(raw) => parse_duration(&raw).ok_or_else(|| {
                ConfigError::new(
                    name,
                    format!("expected a duration such as 500ms, 30s, 5m, 1h or 7d, got {raw:?}"),
                )
            }),
        }
    }

    pub(super) fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let (raw, given) = match self.get(name) {
            Some(raw) => (raw, true),
            None => (table_default(name)?.to_string(), false),
        };
        match raw.trim() {
            v if v.eq_ignore_ascii_case("true") || v == "1" || v.eq_ignore_ascii_case("yes") => {
                Ok(true)
            }
            v if v.eq_ignore_ascii_case("false") || v == "0" || v.eq_ignore_ascii_case("no") => {
                Ok(false)
            }
            _ if !given => Err(bad_default(name)),
            v => Err(ConfigError::new(
                name,
                format!("expected true or false, got {v:?}"),
            )),
        }
    }
}

/// The literal default of `name` in the variable table.
fn table_default(name: &'static str) -> Result<&'static str, ConfigError> {
    variables::default_value(name).ok_or_else(|| bad_default(name))
}

/// A default in the table that the parser cannot use: a mistake in the table, which the
/// configuration tests catch before it ships.
fn bad_default(name: &'static str) -> ConfigError {
    ConfigError::new(
        name,
        "the variable table has no usable default for it (a bug in src/config/variables.rs)",
    )
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `7d` (a whole number and a unit; no unit is refused,
/// because a bare `30` is ambiguous between seconds and milliseconds).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Formats a duration the way the configuration accepts it.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1_000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{}m", ms / 60_000)
    }
}
