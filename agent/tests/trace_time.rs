//! The agent on trace time (a lab replay): its clock runs faster than the
//! wall clock, its windows span trace time, and the rates it reports stay
//! per wall second (the filters' requests are real).
//!
//! Its own test binary: the clock is set once per process.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::clock::{self, ClockError, TraceClock};
use meshtune_agent::{Agent, AgentConfig};
use meshtune_filter_core::builders;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn a_trace_minute_passes_in_the_given_wall_seconds_and_rates_stay_per_wall_second() {
    let wall_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // One trace minute per 0.6 wall seconds: the clock runs 100 × faster.
    clock::run_on_trace_time(TraceClock::try_new(wall_ms(), 0.6).unwrap()).unwrap();
    assert_eq!(
        clock::run_on_trace_time(TraceClock::try_new(wall_ms(), 6.0).unwrap()),
        Err(ClockError::AlreadySet),
        "a running agent's clock is not changed under it"
    );
    assert_eq!(
        clock::wall_duration(Duration::from_secs(60)),
        Duration::from_millis(600)
    );

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "auth:\n  token: t\ndata_dir: {}\nwindow_seconds: 60\nchains:\n  product:\n    slo_ms: 50\n",
        dir.path().display()
    );
    let cfg = AgentConfig::parse(&yaml, "test.yaml").unwrap();
    let started = Instant::now();
    let t0 = meshtune_agent::now_secs();
    let agent = Agent::open(cfg, t0).unwrap();
    let record = builders::record("product", "productpage", &[10; 30]).at_entry();
    agent
        .lock()
        .ingest(&builders::report("vm", 1, vec![record]), t0);

    std::thread::sleep(Duration::from_millis(300));
    let now = meshtune_agent::now_secs();
    let wall = started.elapsed().as_secs_f64();
    // 0.3 wall seconds are 30 trace seconds (scheduling may add a little).
    assert!(
        now - t0 >= 29 && (now - t0) as f64 <= wall * 100.0 + 1.0,
        "{} trace seconds in {wall:.2} wall seconds",
        now - t0
    );
    // The window spans the trace seconds since the start, and reports the
    // wall seconds they took: 30 requests in ~0.3 s are ~100 req/s, not 1.
    let (chains, covered) = agent.window(now);
    assert_eq!(chains["product"].end_to_end.requests, 30);
    assert!(
        covered <= wall + 0.02 && covered >= 0.28,
        "covered {covered} wall seconds of {wall:.2}"
    );
}
