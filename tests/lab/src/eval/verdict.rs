//! Verdicts the way users judge a service: from the load generator's own
//! records, the same measurement in every arm. Time is cut into windows
//! (one trace minute each); a chain-window *violates* when fewer of its
//! requests than the declared percentile were good (answered successfully
//! within the objective: the agent's one rule,
//! [`meshtune_agent::data::attainment`]), or more than 1 % of them failed
//! (an error, shed, timed out or never answered). The first is the
//! percentile exceeding the objective with failed requests counted as never
//! answered, so a window whose p99 is within the objective but where 0.6 %
//! were slow and 0.6 % failed violates: 98.8 % of its users were served in
//! time. A window with fewer than [`MIN_REQUESTS`] requests is merged with
//! the following ones until it has that many (a last short group joins the
//! one before).

use std::collections::BTreeMap;

/// Requests a chain-window needs before its percentile means anything.
pub const MIN_REQUESTS: usize = 100;
/// Share of failed requests above which a chain-window violates.
pub const MAX_FAILED_SHARE: f64 = 0.01;

/// A chain's objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub chain: String,
    /// Percentile declared, e.g. 99.
    pub percentile: f64,
    pub slo_ms: f64,
}

/// One request, as the verdict needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub window: usize,
    pub chain: String,
    pub ok: bool,
    pub latency_ms: f64,
}

/// One judged chain-window (possibly several windows merged).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainWindow {
    pub chain: String,
    /// The windows it covers, first and last (inclusive).
    pub first: usize,
    pub last: usize,
    pub requests: usize,
    pub failed: usize,
    /// Latency at the declared percentile, ms (all requests, failed ones
    /// included: a user waited for them too).
    pub percentile_ms: f64,
    /// Requests answered 200 within the objective.
    pub good: usize,
    pub violates: bool,
}

/// Whether `good` of `requests` meet a declared percentile (the agent's rule).
pub fn attains(requests: usize, good: usize, percentile: f64) -> bool {
    use meshtune_agent::data::attainment::{attainment, meets};
    attainment(requests as u64, good as u64).is_none_or(|a| meets(a, percentile))
}

/// The nearest-rank `p`-th percentile of `sorted` (ascending).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn judge(
    chain: &str,
    first: usize,
    last: usize,
    samples: &[&Sample],
    o: &Objective,
) -> ChainWindow {
    let mut lat: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let failed = samples.iter().filter(|s| !s.ok).count();
    let good = samples
        .iter()
        .filter(|s| s.ok && s.latency_ms <= o.slo_ms)
        .count();
    let percentile_ms = percentile(&lat, o.percentile);
    let requests = samples.len();
    ChainWindow {
        chain: chain.to_owned(),
        first,
        last,
        requests,
        failed,
        percentile_ms,
        good,
        violates: !attains(requests, good, o.percentile)
            || failed as f64 > MAX_FAILED_SHARE * requests as f64,
    }
}

/// Every chain-window of `samples`, per chain in window order.
pub fn chain_windows(samples: &[Sample], objectives: &[Objective]) -> Vec<ChainWindow> {
    let mut out = Vec::new();
    for o in objectives {
        let mut by_window: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.chain == o.chain) {
            by_window.entry(s.window).or_default().push(s);
        }
        let mut groups: Vec<(usize, usize, Vec<&Sample>)> = Vec::new();
        let mut open: Option<(usize, usize, Vec<&Sample>)> = None;
        for (w, v) in by_window {
            let g = open.get_or_insert((w, w, Vec::new()));
            g.1 = w;
            g.2.extend(v);
            if g.2.len() >= MIN_REQUESTS {
                groups.extend(open.take());
            }
        }
        if let Some((first, last, v)) = open {
            match groups.last_mut() {
                Some(prev) => {
                    prev.1 = last;
                    prev.2.extend(v);
                }
                None => groups.push((first, last, v)),
            }
        }
        out.extend(groups.iter().map(|(f, l, v)| judge(&o.chain, *f, *l, v, o)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(window: usize, ok: bool, latency_ms: f64) -> Sample {
        Sample {
            window,
            chain: "c".into(),
            ok,
            latency_ms,
        }
    }

    #[test]
    fn a_small_case_counted_by_hand() {
        let o = vec![Objective {
            chain: "c".into(),
            percentile: 99.0,
            slo_ms: 50.0,
        }];
        let mut v = Vec::new();
        // Window 0: 100 requests, one at 60 ms → p99 (the 99th of 100) is 10 ms: no violation.
        v.extend((0..99).map(|_| s(0, true, 10.0)));
        v.push(s(0, true, 60.0));
        // Window 1: 100 requests, two at 60 ms → p99 = 60 ms > 50: violates.
        v.extend((0..98).map(|_| s(1, true, 10.0)));
        v.extend((0..2).map(|_| s(1, true, 60.0)));
        // Windows 2 and 3: 60 + 60 requests, merged; 2 failed of 120 (1.7 % > 1 %): violates.
        v.extend((0..58).map(|_| s(2, true, 10.0)));
        v.extend((0..2).map(|_| s(2, false, 5.0)));
        v.extend((0..60).map(|_| s(3, true, 10.0)));
        // Window 4: 30 requests, too few: joins the group before.
        v.extend((0..30).map(|_| s(4, true, 10.0)));
        let w = chain_windows(&v, &o);
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[0].first, w[0].last, w[0].requests, w[0].violates),
            (0, 0, 100, false)
        );
        assert_eq!(w[0].good, 99);
        assert_eq!(w[0].percentile_ms, 10.0);
        assert_eq!((w[1].first, w[1].last, w[1].violates), (1, 1, true));
        assert_eq!(w[1].percentile_ms, 60.0);
        assert_eq!(
            (w[2].first, w[2].last, w[2].requests, w[2].failed),
            (2, 4, 150, 2)
        );
        assert!(w[2].violates, "2 of 150 failed is above 1 %");
        assert_eq!(w[2].good, 148);
    }

    #[test]
    fn slow_and_failed_requests_add_up() {
        let o = vec![Objective {
            chain: "c".into(),
            percentile: 99.0,
            slo_ms: 50.0,
        }];
        // 1000 requests: 6 slow, 6 failed fast. The p99 (the 990th) is
        // 10 ms and 0.6 % failed, yet only 98.8 % were served in time.
        let mut v: Vec<Sample> = (0..988).map(|_| s(0, true, 10.0)).collect();
        v.extend((0..6).map(|_| s(0, true, 60.0)));
        v.extend((0..6).map(|_| s(0, false, 2.0)));
        let w = chain_windows(&v, &o);
        assert_eq!(w[0].percentile_ms, 10.0);
        assert_eq!(w[0].good, 988);
        assert!(w[0].violates);
        // 5 + 5 of 1000: 99.0 % good, exactly the percentile.
        let mut v: Vec<Sample> = (0..990).map(|_| s(0, true, 10.0)).collect();
        v.extend((0..5).map(|_| s(0, true, 60.0)));
        v.extend((0..5).map(|_| s(0, false, 2.0)));
        assert!(!chain_windows(&v, &o)[0].violates);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
