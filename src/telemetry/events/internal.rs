//! What every event shares: the [`InternalEvent`] trait and the helpers that turn fields into
//! log values and metric labels.

use crate::telemetry::metrics::Labels;
use std::time::Duration;

/// Something that happened, worth a log line and a metric.
pub(crate) trait InternalEvent {
    fn emit(self);
}

/// A duration as whole milliseconds, for `*_ms` log fields.
pub(super) fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A metric label set from label values.
pub(super) fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect()
}
