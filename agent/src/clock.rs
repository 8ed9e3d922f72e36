//! The agent's clock: wall time, or **trace time** when a lab replays a
//! trace faster than it happened.
//!
//! On trace time one trace minute passes in `seconds_per_minute` wall
//! seconds, counted from a fixed origin shared by every process of a run
//! (so an agent restarted mid-run continues where the killed one was, and
//! its stored history is not "in the future"). Windows, forecasts, change
//! budgets and rollback periods read this clock and behave as over the
//! trace's real duration. Rates stay per wall second and latencies stay
//! real: Envoy's pools, timeouts and outlier detection live in wall time,
//! so [`wall_seconds`] converts a span of this clock back to wall time.

use std::sync::OnceLock;
use std::time::Duration;

/// A clock running `scale` times faster than the wall clock from `origin_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceClock {
    origin_ms: u64,
    scale: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClockError {
    #[error(
        "seconds_per_minute must be within 0.1–600 (one trace minute in wall seconds), got {0}"
    )]
    SecondsPerMinute(f64),
    #[error("the agent's clock is already set")]
    AlreadySet,
}

impl TraceClock {
    /// One trace minute per `seconds_per_minute` wall seconds from `origin_ms`.
    pub fn try_new(origin_ms: u64, seconds_per_minute: f64) -> Result<Self, ClockError> {
        if !(0.1..=600.0).contains(&seconds_per_minute) {
            return Err(ClockError::SecondsPerMinute(seconds_per_minute));
        }
        Ok(TraceClock {
            origin_ms,
            scale: 60.0 / seconds_per_minute,
        })
    }

    /// Trace time at wall time `wall_ms` (the wall clock before the origin).
    pub fn at(&self, wall_ms: u64) -> u64 {
        match wall_ms.checked_sub(self.origin_ms) {
            Some(since) => self.origin_ms + (since as f64 * self.scale) as u64,
            None => wall_ms,
        }
    }
}

static CLOCK: OnceLock<TraceClock> = OnceLock::new();

/// Runs this process's agent on `clock` from now on (once, before it starts).
pub fn run_on_trace_time(clock: TraceClock) -> Result<(), ClockError> {
    CLOCK.set(clock).map_err(|_| ClockError::AlreadySet)
}

/// Milliseconds since the Unix epoch on the wall clock.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch on the agent's clock.
pub fn now_ms() -> u64 {
    let wall = wall_ms();
    CLOCK.get().map_or(wall, |c| c.at(wall))
}

/// How many of the agent's seconds pass per wall second (1 on wall time).
pub fn scale() -> f64 {
    CLOCK.get().map_or(1.0, |c| c.scale)
}

/// Wall seconds that `secs` of the agent's clock take.
pub fn wall_seconds(secs: f64) -> f64 {
    secs / scale()
}

/// How long to sleep for `d` of the agent's clock to pass.
pub fn wall_duration(d: Duration) -> Duration {
    Duration::from_secs_f64(wall_seconds(d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_minute_passes_in_the_given_wall_seconds() {
        let c = TraceClock::try_new(1_000_000, 6.0).unwrap();
        assert_eq!(c.at(1_000_000), 1_000_000);
        // 6 wall seconds after the origin, a trace minute has passed.
        assert_eq!(c.at(1_006_000), 1_060_000);
        // Before the origin the clock is the wall clock (no going back).
        assert_eq!(c.at(999_000), 999_000);
    }

    #[test]
    fn a_restarted_process_on_the_same_origin_continues_the_same_time() {
        let a = TraceClock::try_new(5_000, 6.0).unwrap();
        let b = TraceClock::try_new(5_000, 6.0).unwrap();
        assert_eq!(a.at(65_000), b.at(65_000));
    }

    #[test]
    fn nonsense_speeds_are_refused() {
        assert_eq!(
            TraceClock::try_new(0, 0.0),
            Err(ClockError::SecondsPerMinute(0.0))
        );
        assert!(TraceClock::try_new(0, f64::NAN).is_err());
        assert!(TraceClock::try_new(0, 60.0).is_ok());
    }
}
