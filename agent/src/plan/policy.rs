//! The per-chain policy the agent sends to the filters, computed purely
//! from the chains' objectives and what the window shows.

use crate::config::{ChainSpec, PolicySpec};
use crate::data::aggregate::ChainAgg;
use meshtune_filter_core::control::{ChainPolicy, Policy};
use std::collections::BTreeMap;

/// The most a forecast may scale a chain's observed rate up by.
pub const MAX_GROWTH: f64 = meshtune_filter_core::control::concurrency::MAX_GROWTH;

/// Growth below this is not sent: a forecast is not that precise.
pub const MIN_SENT_GROWTH: f64 = 1.05;

/// How much the chain's load forecast (`forecast_rps`, requests/s) exceeds
/// its rate in the window, in [1, [`MAX_GROWTH`]]: a forecast of less
/// traffic does not shrink anything (that waits for the traffic to fall).
pub fn chain_growth(agg: &ChainAgg, window_secs: f64, forecast_rps: Option<f64>) -> f64 {
    let now = agg.end_to_end.requests as f64 / window_secs;
    match forecast_rps {
        Some(f) if now > 0.0 && f.is_finite() && window_secs > 0.0 => {
            (f / now).clamp(1.0, MAX_GROWTH)
        }
        _ => 1.0,
    }
}

/// Each service's expected load growth for the policy: its chains' growths
/// weighted by the requests each chain sends it, server side. Services
/// whose growth is below [`MIN_SENT_GROWTH`] are left out.
pub fn load_growth(
    window: &BTreeMap<String, ChainAgg>,
    window_secs: f64,
    forecast_rps: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (chain, agg) in window {
        let g = chain_growth(agg, window_secs, forecast_rps.get(chain).copied());
        for (svc, hop) in &agg.hops {
            let n = hop.preferred().0.requests as f64;
            let e = sums.entry(svc.as_str()).or_default();
            e.0 += n * g;
            e.1 += n;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(svc, (w, n))| (svc.to_owned(), ((w / n) * 100.0).round() / 100.0))
        .filter(|(_, g)| *g >= MIN_SENT_GROWTH)
        .collect()
}

/// Requests a hop needs in the window before its share is trusted.
pub const MIN_HOP_SAMPLES: u64 = 20;

/// Each chain's deadline budget is its deadline (not its objective: the
/// objective is a percentile a few requests may exceed, and those are
/// answered, not failed); each service on it gets a timeout cap of its
/// observed share of the chain's latency at the declared percentile (server
/// side, so a service shared by two chains has one cap per chain) times the
/// headroom, cut from the deadline. Priorities come with the chains.
pub fn compute(
    specs: &BTreeMap<String, ChainSpec>,
    window: &BTreeMap<String, ChainAgg>,
    spec: &PolicySpec,
    version: u64,
) -> Policy {
    let chains = specs
        .iter()
        .map(|(name, s)| {
            let budget_ms = (s.deadline_ms().ceil() as u64).max(1);
            let q = s.percentile / 100.0;
            let mut hop_budget_ms = BTreeMap::new();
            if let Some(agg) = window.get(name) {
                let entry_p = agg.end_to_end.latency.quantile(q);
                for (svc, hop) in &agg.hops {
                    let (h, _) = hop.preferred();
                    // The entry service's hop is the whole chain: no cap of its own.
                    if h.requests < MIN_HOP_SAMPLES
                        || h.requests == agg.end_to_end.requests
                            && h.latency == agg.end_to_end.latency
                    {
                        continue;
                    }
                    if let (Some(e), Some(p)) = (entry_p, h.latency.quantile(q)) {
                        if e > 0.0 {
                            let share = (p / e).min(1.0);
                            let cap = ((share * budget_ms as f64 * spec.hop_headroom).ceil()
                                as u64)
                                .clamp(1, budget_ms);
                            hop_budget_ms.insert(svc.clone(), cap);
                        }
                    }
                }
            }
            (
                name.clone(),
                ChainPolicy {
                    budget_ms,
                    priority: s.priority,
                    hop_budget_ms,
                },
            )
        })
        .collect();
    Policy {
        version,
        ttl_ms: spec.ttl_seconds * 1000,
        chains,
        rules: Vec::new(),
        load_growth: BTreeMap::new(),
        retry_budget: spec.retry_budget.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_filter_core::control::Priority;
    use meshtune_filter_core::{Direction, HopRecord};

    fn rec(service: &str, direction: Direction, entry: bool, ms: u64, n: usize) -> HopRecord {
        let mut r = meshtune_filter_core::builders::uniform("c", service, ms, n);
        r.direction = direction;
        r.entry = entry;
        r
    }

    #[test]
    fn budgets_are_deadlines_and_hops_get_their_share() {
        let mut specs = BTreeMap::new();
        specs.insert(
            "c".to_string(),
            ChainSpec {
                priority: Priority::High,
                deadline_ms: Some(100.0),
                ..ChainSpec::with_objective(60.0)
            },
        );
        specs.insert(
            "idle".to_string(),
            ChainSpec {
                priority: Priority::Low,
                ..ChainSpec::with_objective(50.5)
            },
        );
        let mut agg = ChainAgg::default();
        agg.add_record(&rec("front", Direction::Inbound, true, 40, 50));
        agg.add_record(&rec("back", Direction::Inbound, false, 10, 50));
        agg.add_record(&rec("rare", Direction::Inbound, false, 10, 3));
        let mut window = BTreeMap::new();
        window.insert("c".to_string(), agg);
        let p = compute(&specs, &window, &PolicySpec::default(), 7);
        assert_eq!(p.version, 7);
        assert_eq!(p.ttl_ms, 30_000);
        let c = &p.chains["c"];
        assert_eq!((c.budget_ms, c.priority), (100, Priority::High));
        // back takes a quarter of the chain's p99: cap = 0.25 × 100 × 2.
        let cap = c.hop_budget_ms["back"];
        assert!((49..=51).contains(&cap), "{cap}");
        assert!(
            !c.hop_budget_ms.contains_key("front"),
            "the entry hop has no cap"
        );
        assert!(!c.hop_budget_ms.contains_key("rare"), "too few samples");
        // No deadline declared: four objectives.
        assert_eq!(p.chains["idle"].budget_ms, 202);
        assert!(p.validate().is_ok());
        assert!(p.retry_budget.is_none(), "each plugin's own retry budget");
        let spec = PolicySpec {
            retry_budget: Some(meshtune_filter_core::control::RetryBudgetConfig {
                ratio: 0.05,
                ..Default::default()
            }),
            ..PolicySpec::default()
        };
        let p = compute(&specs, &window, &spec, 8);
        assert_eq!(p.retry_budget.map(|r| r.ratio), Some(0.05));
    }

    #[test]
    fn hop_shares_are_taken_at_the_declared_percentile() {
        // The entry's p50 is 40 ms and its p99 100 ms; back's are 10 and 10.
        let mut agg = ChainAgg::default();
        agg.add_record(&rec("front", Direction::Inbound, true, 40, 90));
        agg.add_record(&rec("front", Direction::Inbound, true, 100, 10));
        agg.add_record(&rec("back", Direction::Inbound, false, 10, 100));
        let window = BTreeMap::from([("c".to_string(), agg)]);
        let cap = |percentile: f64| {
            let spec = ChainSpec {
                percentile,
                deadline_ms: Some(400.0),
                ..ChainSpec::with_objective(100.0)
            };
            let specs = BTreeMap::from([("c".to_string(), spec)]);
            compute(&specs, &window, &PolicySpec::default(), 1).chains["c"].hop_budget_ms["back"]
        };
        // p50: back is a quarter of the chain (cap ≈ 0.25 × 400 × 2 = 200);
        // p99: a tenth (≈ 80).
        assert!((190..=210).contains(&cap(50.0)), "{}", cap(50.0));
        assert!((75..=85).contains(&cap(99.0)), "{}", cap(99.0));
    }

    #[test]
    fn load_growth_weights_each_chains_forecast_by_its_requests_to_the_service() {
        // Two chains share `back` equally; `a` is forecast to double, `b` to fall.
        let mut window = BTreeMap::new();
        for (chain, front) in [("a", "fa"), ("b", "fb")] {
            let mut agg = ChainAgg::default();
            for mut r in [
                rec(front, Direction::Inbound, true, 20, 120),
                rec("back", Direction::Inbound, false, 5, 120),
            ] {
                r.chain = chain.into();
                agg.add_record(&r);
            }
            window.insert(chain.to_string(), agg);
        }
        // 120 requests in 60 s: 2 requests/s each now.
        let forecast: BTreeMap<String, f64> =
            [("a".to_string(), 4.0), ("b".to_string(), 1.0)].into();
        let g = load_growth(&window, 60.0, &forecast);
        assert_eq!(g.get("fa"), Some(&2.0));
        assert_eq!(g.get("fb"), None, "a fall is not sent");
        assert_eq!(g.get("back"), Some(&1.5), "half its load doubles");
        // Capped, and a NaN forecast counts as none.
        let wild: BTreeMap<String, f64> =
            [("a".to_string(), 1e9), ("b".to_string(), f64::NAN)].into();
        let g = load_growth(&window, 60.0, &wild);
        assert_eq!(g.get("fa"), Some(&MAX_GROWTH));
        assert_eq!(g.get("back"), Some(&2.5));
        assert!(load_growth(&window, 60.0, &BTreeMap::new()).is_empty());
        // What the agent sends, the filter accepts.
        let mut p = compute(&BTreeMap::new(), &window, &PolicySpec::default(), 1);
        p.load_growth = g;
        assert!(p.validate().is_ok());
    }
}
