//! The eval's per-window verdict and the agent's own view judge a
//! chain-window the same way. The same requests go both ways: to the
//! verdict as the load generator records them, and through the filter's
//! aggregator, its report and the agent's per-minute history (one trace
//! minute is one agent minute) to the agent's attainment. For every
//! window, the agent's attainment meets the declared percentile exactly
//! when the verdict finds no violation.
//!
//! Latencies stay clear of the objective by more than the latency sketch's
//! error, and failed requests are answered fast (as sheds, deadline replies
//! and refused connections are): the agent's entry counts are exact then.

use meshtune_agent::data::attainment::meets;
use meshtune_agent::data::state::ChainState;
use meshtune_filter_core::wire::Source;
use meshtune_filter_core::{Aggregator, Direction, LocalReply};
use meshtune_lab::eval::verdict::{chain_windows, Objective, Sample};

const CHAIN: &str = "checkout";
const SLO_MS: f64 = 50.0;

/// What happened to one request.
#[derive(Clone, Copy)]
enum Outcome {
    Fast,
    Slow,
    ServerError,
    Shed,
}

/// A small deterministic generator (no seed to tune).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Window `w`'s requests: `n` of them, `bad` slow or failed.
fn window(rng: &mut Lcg, n: u64, bad: u64) -> Vec<Outcome> {
    let mut v: Vec<Outcome> = (0..n)
        .map(|i| {
            if i >= bad {
                return Outcome::Fast;
            }
            match rng.below(3) {
                0 => Outcome::Slow,
                1 => Outcome::ServerError,
                _ => Outcome::Shed,
            }
        })
        .collect();
    // Order does not matter to either side; shuffle anyway.
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn latency_ms(rng: &mut Lcg, o: Outcome) -> f64 {
    match o {
        Outcome::Fast => 5.0 + rng.below(25) as f64,
        Outcome::Slow => 80.0 + rng.below(300) as f64,
        Outcome::ServerError => 2.0 + rng.below(8) as f64,
        Outcome::Shed => 0.5,
    }
}

#[test]
fn the_agent_and_the_verdict_judge_every_window_alike() {
    let mut rng = Lcg(1);
    // Windows around the p99 line: none bad, exactly 1 %, just past it, and
    // random mixes from 0 to 3 % bad.
    let mut plan: Vec<(u64, u64)> = vec![(100, 0), (100, 1), (100, 2), (1000, 10), (1000, 11)];
    for _ in 0..40 {
        let n = 100 + rng.below(900);
        plan.push((n, rng.below(3 * n / 100 + 1)));
    }

    let mut samples = Vec::new();
    let mut state = ChainState::new(0);
    let source = Source {
        vm_id: "productpage-1".into(),
        node: String::new(),
        pod: String::new(),
        namespace: String::new(),
    };
    // One filter VM reporting once per window (its reports' sequence
    // numbers go on, as a real VM's do).
    let mut agg = Aggregator::new(16, 16);
    for (w, (n, bad)) in plan.iter().enumerate() {
        for o in window(&mut rng, *n, *bad) {
            let ms = latency_ms(&mut rng, o);
            samples.push(Sample {
                window: w,
                chain: CHAIN.into(),
                ok: matches!(o, Outcome::Fast | Outcome::Slow),
                latency_ms: ms,
            });
            let ns = (ms * 1e6) as u64;
            match o {
                Outcome::Shed => {
                    agg.record_local(
                        CHAIN,
                        "productpage",
                        Direction::Inbound,
                        true,
                        LocalReply::Shed,
                    );
                }
                _ => {
                    let error = matches!(o, Outcome::ServerError);
                    agg.record(CHAIN, "productpage", Direction::Inbound, true, ns, error);
                }
            }
        }
        let report = agg
            .take_report(&source, 60_000, 0)
            .expect("the window recorded requests");
        // Reported within its minute.
        state.ingest(&report, w as u64 * 60 + 59);
    }

    let objectives = vec![Objective {
        chain: CHAIN.into(),
        percentile: 99.0,
        slo_ms: SLO_MS,
    }];
    let verdicts = chain_windows(&samples, &objectives);
    assert_eq!(
        verdicts.len(),
        plan.len(),
        "every window has 100 requests or more"
    );
    let minutes = state.minutes(CHAIN, 0, plan.len() as u64);
    assert_eq!(minutes.len(), plan.len());
    let mut violating = 0;
    for (v, (minute, agg)) in verdicts.iter().zip(&minutes) {
        assert_eq!(v.first as u64, *minute);
        let attainment = agg
            .end_to_end
            .attainment(SLO_MS)
            .expect("the agent counted the window");
        assert_eq!(
            meets(attainment, 99.0),
            !v.violates,
            "window {minute}: agent attainment {attainment:.4}, verdict {v:?}"
        );
        violating += usize::from(v.violates);
    }
    // Both kinds of window occur, so the agreement is not vacuous.
    assert!(
        violating > 0 && violating < verdicts.len(),
        "{violating} violating"
    );
}
