//! The configuration model's part in a tuning round (pure): what the model
//! reads of each service (its server-side view, per-replica errors), the
//! knobs in force (read off the live objects, Istio's defaults where a
//! field is unset), the choice by looking ahead ([`crate::plan::lookahead`]),
//! and the rule-based objects patched with the chosen knobs, each patched
//! field with its reason.
//!
//! What the model chooses: connection pools, `maxRetries`, outlier
//! detection's consecutive-5xx threshold and the route timeout. Route
//! retries stay the rule-based ones (only failures that never reached the
//! service, as many as fit the hop budget): the sweep learned retries on
//! `5xx`, which is not safe for every method, so the candidates carry the
//! rule-based attempts rather than the model choosing them.

use crate::config::ChainSpec;
use crate::data::aggregate::{Agg, ChainAgg};
use crate::data::state::ReplicaCounts;
use crate::learn::config_model::{ModelError, FEATURES};
use crate::plan::lookahead::{choose, Choice, Knobs, Observed, Predict, Situation};
use crate::plan::{DesiredObject, Kind};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Istio's unset pools and retry budget are unlimited; the model learned
/// pools up to this size, and a larger pool never binds at the loads it saw.
const UNLIMITED_POOL: u32 = 1024;
const UNLIMITED_RETRIES: u32 = 20;
/// Istio's route retries when a VirtualService sets none.
const ISTIO_DEFAULT_ATTEMPTS: u32 = 2;
/// A per-try timeout learned for "none" (the top of the sweep's range).
const NO_PER_TRY_MS: u32 = 500;

/// What the model reads of one service over the window, in [`FEATURES`]
/// order up to the knobs: rps, error rate, p50, p95, p99 (ms), requests in
/// flight (Little's law on the median, as the sweep recorded it), the
/// largest error share of one replica, and the replicas that answered.
pub fn service_features(
    window: &BTreeMap<String, ChainAgg>,
    secs: f64,
    replicas: &BTreeMap<String, BTreeMap<String, ReplicaCounts>>,
) -> BTreeMap<String, Vec<f64>> {
    let mut merged: BTreeMap<&str, Agg> = BTreeMap::new();
    for agg in window.values() {
        for (svc, hop) in &agg.hops {
            merged.entry(svc).or_default().merge(hop.preferred().0);
        }
    }
    merged
        .into_iter()
        .filter(|(_, a)| a.requests > 0 && secs > 0.0)
        .map(|(svc, a)| {
            let q = |p: f64| a.latency.quantile(p).map_or(0.0, |ns| ns / 1e6);
            let rps = a.requests as f64 / secs;
            let reps = replicas.get(svc);
            let max_err = reps
                .into_iter()
                .flat_map(|r| r.values())
                .filter(|c| c.requests > 0)
                .map(|c| c.errors as f64 / c.requests as f64)
                .fold(0.0, f64::max);
            let up = reps.map_or(0, |r| r.values().filter(|c| c.requests > 0).count());
            let values = vec![
                rps,
                a.errors as f64 / a.requests as f64,
                q(0.5),
                q(0.95),
                q(0.99),
                rps * q(0.5) / 1e3,
                max_err,
                up.max(1) as f64,
            ];
            (svc.to_owned(), values)
        })
        .collect()
}

/// What followed in a window for the tightest chain through a service:
/// its p99 end to end (ms), the share of its requests that failed, were
/// shed or ran out of deadline, and its attainment (goodput within the
/// objective). `None` without answers.
pub fn chain_outcome(agg: &ChainAgg, spec: &ChainSpec) -> Option<[f64; 3]> {
    let e = &agg.end_to_end;
    let p99 = e.latency.quantile(0.99)? / 1e6;
    let offered = e.requests + e.shed + e.deadline_exceeded;
    if offered == 0 || p99 <= 0.0 {
        return None;
    }
    let failed = e.errors + e.shed + e.deadline_exceeded;
    Some([
        p99,
        failed as f64 / offered as f64,
        e.attainment(spec.slo_ms)?,
    ])
}

/// The chain through `service` with the tightest objective, and its name.
pub fn tightest_chain<'a>(
    service: &str,
    window: &'a BTreeMap<String, ChainAgg>,
    chains: &'a BTreeMap<String, ChainSpec>,
) -> Option<(&'a String, &'a ChainAgg, &'a ChainSpec)> {
    window
        .iter()
        .filter(|(_, a)| a.hops.contains_key(service))
        .filter_map(|(name, a)| Some((name, a, chains.get(name)?)))
        .min_by(|a, b| a.2.slo_ms.total_cmp(&b.2.slo_ms))
}

/// `"400ms"`, `"1.5s"` → milliseconds.
fn duration_ms(v: &Value) -> Option<u32> {
    let s = v.as_str()?;
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>()
        .ok()
        .map(|x| (x * scale).round().max(0.0) as u32)
}

fn count(v: &Value, default: u32) -> u32 {
    v.as_u64()
        .map_or(default, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// The knobs a DestinationRule and a VirtualService (either may be
/// missing) put in force, Istio's defaults where a field is unset.
pub fn knobs_in_force(dr: Option<&Value>, vs: Option<&Value>) -> Knobs {
    let tp = dr.map_or(&Value::Null, |d| &d["spec"]["trafficPolicy"]);
    let http = &tp["connectionPool"]["http"];
    let route = vs.map_or(&Value::Null, |v| &v["spec"]["http"][0]);
    let timeout_ms = duration_ms(&route["timeout"]).unwrap_or(0);
    let retry_attempts = count(&route["retries"]["attempts"], ISTIO_DEFAULT_ATTEMPTS);
    Knobs {
        http2_max_requests: count(&http["http2MaxRequests"], UNLIMITED_POOL),
        http1_max_pending: count(&http["http1MaxPendingRequests"], UNLIMITED_POOL),
        max_retries: count(&http["maxRetries"], UNLIMITED_RETRIES),
        consecutive_5xx: count(&tp["outlierDetection"]["consecutive5xxErrors"], 0),
        timeout_ms,
        retry_attempts,
        // Without its own, each try may take the route's whole timeout.
        per_try_timeout_ms: duration_ms(&route["retries"]["perTryTimeout"]).unwrap_or(
            if timeout_ms > 0 {
                timeout_ms
            } else {
                NO_PER_TRY_MS
            },
        ),
    }
}

/// One knob's share in a choice: the predicted p99 and errors with this
/// knob back at its value in force (the others as chosen), at the current load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnobEffect {
    pub feature: &'static str,
    pub in_force: u32,
    pub chosen: u32,
    /// Predicted p99 (ms) of the choice minus that with this knob reverted.
    pub p99_ms_delta: f64,
    /// Likewise for the error share.
    pub error_share_delta: f64,
}

/// The model's decision for one service, as `/v1/recommendations` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceChoice {
    pub service: String,
    pub host: String,
    pub chain: String,
    pub p99_budget_ms: f64,
    pub error_budget: f64,
    pub margin: f64,
    #[serde(flatten)]
    pub choice: Choice,
    /// The knobs behind the choice, largest effect first.
    pub top_features: Vec<KnobEffect>,
}

fn knob_values(k: &Knobs) -> [u32; 7] {
    [
        k.http2_max_requests,
        k.http1_max_pending,
        k.max_retries,
        k.consecutive_5xx,
        k.timeout_ms,
        k.retry_attempts,
        k.per_try_timeout_ms,
    ]
}

fn with_knob(k: &Knobs, i: usize, v: u32) -> Knobs {
    let mut k = *k;
    match i {
        0 => k.http2_max_requests = v,
        1 => k.http1_max_pending = v,
        2 => k.max_retries = v,
        3 => k.consecutive_5xx = v,
        4 => k.timeout_ms = v,
        5 => k.retry_attempts = v,
        _ => k.per_try_timeout_ms = v,
    }
    k
}

/// Each changed knob's effect on the prediction at the current load.
fn knob_effects(
    model: &impl Predict,
    observed: &[f64],
    current: &Knobs,
    chosen: &Knobs,
) -> Result<Vec<KnobEffect>, ModelError> {
    let (cur, new) = (knob_values(current), knob_values(chosen));
    let changed: Vec<usize> = (0..7).filter(|&i| cur[i] != new[i]).collect();
    let row = |k: &Knobs| {
        let mut r = observed.to_vec();
        r.extend(k.values());
        r
    };
    let mut rows = vec![row(chosen)];
    rows.extend(changed.iter().map(|&i| row(&with_knob(chosen, i, cur[i]))));
    let preds = model.predict(&rows)?;
    let mut out: Vec<KnobEffect> = changed
        .iter()
        .zip(&preds[1..])
        .map(|(&i, p)| KnobEffect {
            // The knobs are the model's last seven inputs.
            feature: FEATURES[FEATURES.len() - 7 + i],
            in_force: cur[i],
            chosen: new[i],
            p99_ms_delta: preds[0].p99_ms - p.p99_ms,
            error_share_delta: preds[0].error_share - p.error_share,
        })
        .collect();
    // Largest effect first: p99 against its budget share, errors in points.
    out.sort_by(|a, b| {
        let size = |e: &KnobEffect| e.p99_ms_delta.abs() / 10.0 + e.error_share_delta.abs() * 100.0;
        size(b).total_cmp(&size(a))
    });
    Ok(out)
}

/// What the model needs about one service this round.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInput {
    pub service: String,
    /// Its fully qualified host.
    pub host: String,
    /// From [`service_features`].
    pub observed: Vec<f64>,
    /// Its load at each forecast step (requests/s).
    pub forecast_rps: Vec<f64>,
    pub chain: String,
    pub spec: ChainSpec,
    pub in_force: Knobs,
}

/// How the model chooses (the agent's `config_model` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceParams {
    /// Spreads of the model's trees added to each prediction.
    pub margin: f64,
    /// Goodput gain below which nothing changes.
    pub threshold: f64,
}

/// The model's choice for a service among `candidates` and the rule-based
/// knobs (`rule_based`), retries pinned as the module says; `timeout_free`:
/// no route is written for it, so the timeout stays what is in force.
pub fn choose_for(
    model: &impl Predict,
    input: &ServiceInput,
    rule_based: &Knobs,
    candidates: &[Knobs],
    params: ChoiceParams,
    route_written: bool,
) -> Result<ServiceChoice, ModelError> {
    let pin = |k: &Knobs| Knobs {
        retry_attempts: rule_based.retry_attempts,
        per_try_timeout_ms: rule_based.per_try_timeout_ms,
        timeout_ms: if route_written {
            k.timeout_ms
        } else {
            input.in_force.timeout_ms
        },
        ..*k
    };
    let all: Vec<Knobs> = std::iter::once(pin(rule_based))
        .chain(candidates.iter().map(pin))
        .collect();
    // The model predicts the chain's p99 as its client sees it: the budget
    // is the chain's objective; the error budget what its percentile leaves.
    let situation = Situation {
        observed: Observed {
            values: input.observed.clone(),
        },
        forecast_rps: input.forecast_rps.clone(),
        p99_budget_ms: input.spec.slo_ms,
        error_budget: (1.0 - input.spec.percentile / 100.0).max(0.0),
        current: input.in_force,
    };
    let choice = choose(model, &situation, &all, params.margin, params.threshold)?;
    let top_features = if choice.change {
        knob_effects(model, &input.observed, &choice.current, &choice.chosen)?
    } else {
        Vec::new()
    };
    Ok(ServiceChoice {
        service: input.service.clone(),
        host: input.host.clone(),
        chain: input.chain.clone(),
        p99_budget_ms: situation.p99_budget_ms,
        error_budget: situation.error_budget,
        margin: params.margin,
        choice,
        top_features,
    })
}

/// Writes the chosen knobs into the service's rule-based objects, the
/// reason on every field it sets. The route's retries are left as planned.
pub fn apply_choice(objects: &mut [DesiredObject], host: &str, c: &ServiceChoice) {
    let k = c.choice.chosen;
    let why = format!(
        "configuration model (chain {}, p{} ≤ {} ms): {}",
        c.chain,
        100.0 - c.error_budget * 100.0,
        c.p99_budget_ms,
        c.choice.reason
    );
    for o in objects.iter_mut().filter(|o| o.host == host) {
        match o.kind {
            Kind::DestinationRule => {
                let tp = &mut o.object["spec"]["trafficPolicy"];
                tp["connectionPool"]["http"] = json!({
                    "http2MaxRequests": k.http2_max_requests,
                    "http1MaxPendingRequests": k.http1_max_pending,
                    "maxRetries": k.max_retries,
                });
                for f in ["http2MaxRequests", "http1MaxPendingRequests", "maxRetries"] {
                    o.reasons.insert(
                        format!("trafficPolicy.connectionPool.http.{f}"),
                        why.clone(),
                    );
                }
                if k.consecutive_5xx == 0 {
                    if let Some(m) = tp.as_object_mut() {
                        m.remove("outlierDetection");
                    }
                    o.reasons
                        .retain(|f, _| !f.starts_with("trafficPolicy.outlierDetection"));
                } else {
                    tp["outlierDetection"]["consecutive5xxErrors"] = json!(k.consecutive_5xx);
                    o.reasons.insert(
                        "trafficPolicy.outlierDetection.consecutive5xxErrors".into(),
                        why.clone(),
                    );
                }
            }
            Kind::VirtualService => {
                let route = &mut o.object["spec"]["http"][0];
                if k.timeout_ms == 0 {
                    if let Some(m) = route.as_object_mut() {
                        m.remove("timeout");
                    }
                    o.reasons.remove("http[0].timeout");
                } else {
                    route["timeout"] = json!(format!("{}ms", k.timeout_ms));
                    o.reasons.insert("http[0].timeout".into(), why.clone());
                }
            }
            Kind::Deployment => {}
        }
    }
}

/// The knobs the rule-based objects for `host` would put in force.
pub fn rule_based_knobs(objects: &[DesiredObject], host: &str) -> Knobs {
    let find = |kind| {
        objects
            .iter()
            .find(|o| o.host == host && o.kind == kind)
            .map(|o| &o.object)
    };
    knobs_in_force(find(Kind::DestinationRule), find(Kind::VirtualService))
}

#[cfg(test)]
mod tests;
