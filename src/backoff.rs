//! Randomized exponential backoff.
//!
//! Used for idle polling (an empty queue is asked less and less often, since every Get Messages
//! is a billed transaction) and for retrying a failing queue service. Each step doubles, up to a
//! cap, and is jittered by ±20 % so that many replicas started together do not poll in lockstep.

use std::time::Duration;

/// The ± fraction applied to every delay.
const JITTER: f64 = 0.2;

/// A doubling delay between `min` and `max`, reset to `min` on progress.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff whose first step is `min` and whose steps never exceed `max` (before jitter).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The delay to wait now; the next call returns about twice as much, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.current);
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Progress was made: start again from the shortest step.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    /// The un-jittered step the next call to [`Backoff::next_delay`] is based on.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Duration {
        self.current
    }
}

/// `base` scaled by a uniform factor in [0.8, 1.2].
pub(crate) fn jittered(base: Duration) -> Duration {
    let factor = 1.0 - JITTER + fastrand::f64() * 2.0 * JITTER;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let expected = [100u64, 200, 400, 800, 1000, 1000];
        for base in expected {
            let delay = backoff.next_delay().as_secs_f64() * 1000.0;
            let base = base as f64;
            assert!(
                delay >= base * 0.8 - 1e-6 && delay <= base * 1.2 + 1e-6,
                "delay {delay} ms outside ±20 % of {base} ms"
            );
        }
    }

    #[test]
    fn reset_returns_to_the_first_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.current(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_averages_to_the_base() {
        let n = 10_000;
        let total: f64 = (0..n)
            .map(|_| jittered(Duration::from_secs(10)).as_secs_f64())
            .sum();
        let mean = total / n as f64;
        assert!((mean - 10.0).abs() < 0.1, "mean {mean}");
    }
}
