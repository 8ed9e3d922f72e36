//! The per-chain policy the agent sends to the filters, computed purely
//! from the chains' objectives and what the window shows.

use crate::config::{ChainSpec, PolicySpec};
use crate::data::aggregate::ChainAgg;
use crate::data::decisions::Change;
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

/// Relative move of a number in the filters' policy that is logged as a
/// decision (smaller moves follow the window's noise, every 5 s).
pub const POLICY_LOG_HYSTERESIS: f64 = 0.2;

/// The policy as decision-log fields: `(object, field) → value`. A chain's
/// fields are under `policy chain NAME`; the rest under `policy`.
pub fn policy_fields(p: &Policy) -> BTreeMap<(String, String), serde_json::Value> {
    use serde_json::json;
    let mut out = BTreeMap::new();
    for (name, c) in &p.chains {
        let object = format!("policy chain {name}");
        out.insert((object.clone(), "budget_ms".into()), json!(c.budget_ms));
        out.insert(
            (object.clone(), "priority".into()),
            json!(c.priority.as_str()),
        );
        for (svc, ms) in &c.hop_budget_ms {
            out.insert((object.clone(), format!("hop_budget_ms.{svc}")), json!(ms));
        }
    }
    for (svc, g) in &p.load_growth {
        out.insert(("policy".into(), format!("load_growth.{svc}")), json!(g));
    }
    if let Some(r) = &p.retry_budget {
        out.insert(
            ("policy".into(), "retry_budget".into()),
            serde_json::to_value(r).unwrap_or_default(),
        );
    }
    out
}

/// The fields of `new` that moved from what was last logged (`logged`):
/// a number by more than [`POLICY_LOG_HYSTERESIS`] of its old value (at
/// least 1), anything else when it differs, and fields that appeared or
/// went. Each with the reason it has in [`compute`].
pub fn policy_changes(
    logged: &BTreeMap<(String, String), serde_json::Value>,
    new: &Policy,
) -> Vec<Change> {
    use serde_json::Value;
    let now = policy_fields(new);
    // An absent load growth is no growth (the filters read it as 1): a
    // service hovering at the threshold is not a new decision every round.
    let number = |field: &str, v: &Value| {
        v.as_f64()
            .or_else(|| (field.starts_with("load_growth.") && v.is_null()).then_some(1.0))
    };
    let moved =
        |field: &str, old: &Value, new: &Value| match (number(field, old), number(field, new)) {
            (Some(a), Some(b)) => (a - b).abs() > POLICY_LOG_HYSTERESIS * a.abs().max(1.0),
            _ => old != new,
        };
    let keys: std::collections::BTreeSet<&(String, String)> =
        logged.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let old = logged.get(key).cloned().unwrap_or(Value::Null);
            let new = now.get(key).cloned().unwrap_or(Value::Null);
            if !moved(&key.1, &old, &new) {
                return None;
            }
            let (object, field) = key;
            let reason = match field.split('.').next().unwrap_or("") {
                "budget_ms" => "the chain's deadline: the budget stamped at its entry",
                "priority" => "the chain's declared priority, for shedding at saturation",
                "hop_budget_ms" => "the service's observed share of the chain's latency at its percentile × hop_headroom, cut from the deadline (absent: too few requests, or the entry hop)",
                "load_growth" => "the chains' forecast at the longest horizon ÷ their load now, for the service's concurrency limit",
                _ => "policy.retry_budget from the configuration",
            };
            Some(Change {
                object: object.clone(),
                // A chain's fields are judged by the chain's attainment.
                host: object
                    .strip_prefix("policy ")
                    .filter(|o| o.starts_with("chain "))
                    .unwrap_or("")
                    .to_owned(),
                field: field.clone(),
                old,
                new,
                reason: reason.into(),
                predicted: "the filters apply it to the next requests (policy sent on every report answer)".into(),
            })
        })
        .collect()
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

    #[test]
    fn policy_moves_beyond_the_hysteresis_are_logged_once_with_their_reason() {
        let policy = |budget: u64, hop: Option<u64>| {
            let mut c = ChainPolicy {
                budget_ms: budget,
                priority: Priority::High,
                hop_budget_ms: BTreeMap::new(),
            };
            if let Some(h) = hop {
                c.hop_budget_ms.insert("reviews".into(), h);
            }
            Policy {
                version: 1,
                ttl_ms: 30_000,
                chains: BTreeMap::from([("checkout".to_string(), c)]),
                rules: Vec::new(),
                load_growth: BTreeMap::new(),
                retry_budget: None,
            }
        };
        let mut logged = BTreeMap::new();
        let first = policy_changes(&logged, &policy(240, Some(100)));
        let fields: Vec<&str> = first.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["budget_ms", "hop_budget_ms.reviews", "priority"]
        );
        assert!(first
            .iter()
            .all(|c| c.object == "policy chain checkout" && c.host == "chain checkout"));
        for c in &first {
            logged.insert((c.object.clone(), c.field.clone()), c.new.clone());
        }
        // A 10 % move is noise; a 30 % one and a cap that went are decisions.
        assert!(policy_changes(&logged, &policy(240, Some(110))).is_empty());
        let moved = policy_changes(&logged, &policy(240, Some(130)));
        assert_eq!(moved.len(), 1);
        assert_eq!(
            (moved[0].old.clone(), moved[0].new.clone()),
            (serde_json::json!(100), serde_json::json!(130))
        );
        let gone = policy_changes(&logged, &policy(240, None));
        assert_eq!(gone.len(), 1);
        assert!(gone[0].new.is_null() && gone[0].reason.contains("absent"));
        // A load growth at the threshold coming and going is no growth
        // either way; one that doubles is a decision.
        let mut growing = policy(240, Some(100));
        growing
            .load_growth
            .insert("reviews".into(), MIN_SENT_GROWTH);
        assert!(policy_changes(&logged, &growing).is_empty());
        growing.load_growth.insert("reviews".into(), 2.0);
        let grown = policy_changes(&logged, &growing);
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].field, "load_growth.reviews");
    }
}
