//! The DestinationRules meshtune wants, computed purely from what it
//! measured: connection pools sized from observed concurrency (Little's
//! law with headroom), retries in flight from a retry budget, outlier
//! detection from the error rate, and locality load balancing where the
//! configuration (or placement) says so. Only these fields are sent, so
//! server-side apply makes meshtune the owner of these fields alone. Every
//! value comes with its reason.
//!
//! And the VirtualServices: a route timeout and retries per service, from
//! the per-hop budgets the chains' deadlines give it ([`desired_routes`]).
//! One owner per knob: for chain traffic with the filter's control on, the
//! filter's per-request headers (`x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-max-retries`, `x-envoy-retry-on`) set the timeout and retries,
//! and Envoy lets them override the route's; the route's values are what
//! the rest gets: traffic the filter does not put on a chain, and every
//! request while the filter fails open. So the route timeout is the widest
//! budget any chain gives the hop (no chain's request is cut shorter by the
//! route than its own budget allows), and its retries are only those that
//! are safe for any method.

use crate::config::{Locality, TrafficSpec};
use crate::plan::observe::{ServiceObservation, MIN_REPLICA_REQUESTS};
use crate::plan::{DesiredObject, Kind, FIELD_MANAGER, MANAGED_BY_LABEL};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Envoy's own floor for retries in flight (its circuit breaker's default).
const ENVOY_DEFAULT_MAX_RETRIES: u32 = 3;
/// Bounds on the consecutive-5xx threshold: below 3 one unlucky pair of
/// requests ejects a host; above 20 a dead host serves too many errors first.
const CONSECUTIVE_BOUNDS: (u32, u32) = (3, 20);
/// Requests a host should see per outlier-detection interval to be judged.
const REQUESTS_PER_INTERVAL: f64 = 50.0;
/// Bounds on the interval, seconds (Istio's default is 10 s).
const INTERVAL_BOUNDS: (u64, u64) = (1, 10);

/// The least threshold `k` with `rate^k × runs < false_rate`: at error
/// share `rate`, a healthy host erring `k` times in a row by chance (about
/// `runs` chances per interval) stays rarer than `false_rate`.
pub fn consecutive_errors(error_rate: f64, runs: f64, false_rate: f64) -> u32 {
    let (lo, hi) = CONSECUTIVE_BOUNDS;
    if error_rate <= 0.0 {
        return lo;
    }
    if error_rate >= 1.0 {
        return hi;
    }
    let k = ((false_rate / runs.max(1.0)).ln() / error_rate.ln()).ceil();
    (k.max(0.0) as u32).clamp(lo, hi)
}

/// Retry conditions safe for a request of any method: the request never
/// reached the application (connection refused or reset before a byte, a
/// stream refused, the host unavailable). Never `5xx` or `reset`: a POST
/// that failed there may have been processed.
pub const IDEMPOTENT_SAFE_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled";
/// At most this many retries on a route (Istio's default attempts).
const MAX_ROUTE_RETRIES: u32 = 2;

/// The VirtualService for each observed service that chains give a hop
/// budget (`hop_budget_ms`: service → the widest budget of any chain
/// through it, ms). Timeout: that budget. Retries: as many as fit in it at
/// the observed latency (each try may take the percentile planned for),
/// at most Istio's default two.
pub fn desired_routes(
    observations: &[ServiceObservation],
    hop_budget_ms: &BTreeMap<String, u64>,
) -> Vec<DesiredObject> {
    observations
        .iter()
        .filter_map(|o| {
            let budget = *hop_budget_ms.get(&o.service)?;
            Some(desired_route(o, budget))
        })
        .collect()
}

fn desired_route(o: &ServiceObservation, budget_ms: u64) -> DesiredObject {
    let mut reasons = BTreeMap::new();
    let p = o.percentile;
    reasons.insert(
        "http[0].timeout".into(),
        format!("the widest per-hop budget any chain through {} gives it ({budget_ms} ms): chain requests carry their own, tighter timeout from the filter; this one is for other traffic and while the filter fails open", o.service),
    );
    let tries_that_fit = if o.latency_ms > 0.0 {
        (budget_ms as f64 / o.latency_ms).floor() as u32
    } else {
        MAX_ROUTE_RETRIES + 1
    };
    let attempts = tries_that_fit.saturating_sub(1).min(MAX_ROUTE_RETRIES);
    reasons.insert(
        "http[0].retries.attempts".into(),
        format!(
            "{budget_ms} ms budget / p{p} {:.1} ms = {tries_that_fit} tries fit; at most Istio's default {MAX_ROUTE_RETRIES} retries",
            o.latency_ms
        ),
    );
    reasons.insert(
        "http[0].retries.retryOn".into(),
        "only failures before the request reached the service, safe for any method (no 5xx, no reset)".into(),
    );
    let host = format!("{}.{}.svc.cluster.local", o.service, o.namespace);
    let retries = if attempts == 0 {
        json!({"attempts": 0})
    } else {
        let mut r = json!({"attempts": attempts, "retryOn": IDEMPOTENT_SAFE_RETRY_ON});
        // The filter's headers replace the route's timeout and retry count,
        // not its per-try timeout: this one cuts a chain request's tries,
        // never the request, which keeps its own budget for the retry.
        if let Ok((ms, why)) = per_try_timeout_ms(o, budget_ms) {
            r["perTryTimeout"] = json!(format!("{ms}ms"));
            reasons.insert("http[0].retries.perTryTimeout".into(), why);
        }
        r
    };
    DesiredObject {
        kind: Kind::VirtualService,
        namespace: o.namespace.clone(),
        name: o.service.clone(),
        host: host.clone(),
        object: json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {
                "name": o.service,
                "namespace": o.namespace,
                "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}
            },
            "spec": {
                "hosts": [host],
                "http": [{
                    "route": [{"destination": {"host": host}}],
                    "timeout": format!("{budget_ms}ms"),
                    "retries": retries
                }]
            }
        }),
        reasons,
    }
}

/// A try is cut after this many times the typical replica's latency at
/// the planned percentile: on a replica as fast as the others a try takes
/// that long less often than once in `1 / (1 − percentile)` tries, while a
/// replica answering several times slower than its peers has most of its
/// tries cut.
pub const SLOW_TRY_FACTOR: f64 = 2.0;

/// The route's per-try timeout (ms, with its reason), or why it has none.
/// A slow replica answers, so outlier detection, which counts errors, never
/// ejects it, and least-request balancing only sends it less; a try cut by
/// the per-try timeout is a 504 from Envoy, which the filter's grant for
/// chain traffic retries (`5xx`) on another host (Istio's retry host
/// predicate skips hosts already tried) and outlier detection counts, so
/// the slow replica is ejected like an erring one. The typical replica is
/// the lower median of those that answered enough requests in the window,
/// so one slow replica among two or more does not set it.
///
/// A try is never cut while it is within the service's share of the
/// tightest objective through it ([`objective_room_ms`]): such a try still
/// answers in time, and cutting it makes a failure of a success. This is
/// what keeps the cut harmless when every replica slows together (a
/// saturated service downstream, a surge): a cut try's work is lost and its
/// retry is more load on what is already the bottleneck.
pub fn per_try_timeout_ms(o: &ServiceObservation, budget_ms: u64) -> Result<(u64, String), String> {
    let v = &o.replica_latency_ms;
    let p = o.percentile;
    if o.replicas_known < 2 {
        return Err(format!(
            "{} replica(s) answered lately: a cut try would have no other host to go to",
            o.replicas_known
        ));
    }
    if v.is_empty() {
        return Err(format!(
            "no replica answered {MIN_REPLICA_REQUESTS} requests in the window: no latency of its own to size a try by"
        ));
    }
    let typical = v[(v.len() - 1) / 2];
    let slow_try = SLOW_TRY_FACTOR * typical;
    let room = objective_room_ms(o, typical);
    let ms = slow_try
        .max(room.as_ref().map_or(0.0, |(r, _)| *r))
        .ceil()
        .max(1.0) as u64;
    if 2 * ms > budget_ms {
        return Err(format!(
            "a try of {ms} ms ({SLOW_TRY_FACTOR} × the typical replica's p{p} {typical:.1} ms, or the service's share of its tightest objective) leaves no time for a retry within the {budget_ms} ms budget"
        ));
    }
    let all: Vec<String> = v.iter().map(|l| format!("{l:.1}")).collect();
    let room_why = room.map_or(
        "no declared chain through it measured: no objective share".to_string(),
        |(_, why)| why,
    );
    Ok((
        ms,
        format!(
            "the larger of {SLOW_TRY_FACTOR} × the typical replica's p{p} {typical:.1} ms (replicas measured: {} ms, of {} answering lately: an ejected one stays counted) and {room_why} = {ms} ms, half the {budget_ms} ms budget at most: a try on a replica as fast as the others is rarely cut, nor one that would still answer within the objective; one on a slower replica is cut, retried on another host for chain traffic (the filter grants 5xx retries) and counted as a 504 by outlier detection; traffic off the chains is not retried on it",
            all.join(", "),
            o.replicas_known
        ),
    ))
}

/// The service's share of the tightest objective among the chains through
/// it, with its reason: per chain, the typical replica's latency over the
/// chain's end-to-end latency (both at the percentile, at most 1) times
/// the chain's objective. The typical replica, not the service as a whole,
/// so a slow replica neither widens its own room nor (being on the chain's
/// latency too) does anything but narrow it.
pub fn objective_room_ms(o: &ServiceObservation, typical_ms: f64) -> Option<(f64, String)> {
    o.chain_objectives
        .iter()
        .filter(|c| c.latency_ms > 0.0 && c.slo_ms > 0.0)
        .map(|c| {
            let share = (typical_ms / c.latency_ms).min(1.0);
            (
                share * c.slo_ms,
                format!(
                    "its share of the tightest objective ({typical_ms:.1} ms of the chain's {:.1} ms × {:.0} ms = {:.1} ms)",
                    c.latency_ms,
                    c.slo_ms,
                    share * c.slo_ms
                ),
            )
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The widest budget each service gets from any chain (service → ms).
pub fn widest_hop_budgets(policy: &meshtune_filter_core::control::Policy) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for c in policy.chains.values() {
        for (svc, ms) in &c.hop_budget_ms {
            let e = out.entry(svc.clone()).or_insert(0);
            *e = (*e).max(*ms);
        }
    }
    out
}

/// The DestinationRule for each observation, with locality settings where given.
pub fn desired(
    observations: &[ServiceObservation],
    locality: &[(String, Locality)],
    t: &TrafficSpec,
) -> Vec<DesiredObject> {
    observations
        .iter()
        .map(|o| {
            desired_rule(
                o,
                locality
                    .iter()
                    .find(|(s, _)| s == &o.service)
                    .map(|(_, l)| l),
                t,
            )
        })
        .collect()
}

fn desired_rule(
    o: &ServiceObservation,
    locality: Option<&Locality>,
    t: &TrafficSpec,
) -> DesiredObject {
    let mut reasons = BTreeMap::new();
    let p = o.percentile;
    // Little's law: requests in flight = arrival rate × time in system.
    let inflight = o.rps * o.latency_ms / 1000.0;
    let max_requests = ((inflight * t.pool_headroom).ceil() as u32).max(t.min_pool_requests);
    reasons.insert(
        "trafficPolicy.connectionPool.http.http2MaxRequests".into(),
        format!(
            "{:.1} req/s × p{p} {:.1} ms = {inflight:.2} in flight (Little's law) × headroom {} = {max_requests} (floor {})",
            o.rps, o.latency_ms, t.pool_headroom, t.min_pool_requests
        ),
    );
    let pending = (max_requests / 2).max(t.min_pool_requests / 2).max(1);
    reasons.insert(
        "trafficPolicy.connectionPool.http.http1MaxPendingRequests".into(),
        format!("half the requests allowed in flight ({max_requests}): a queue longer than that waits longer than the service takes to answer"),
    );
    let max_retries =
        ((max_requests as f64 * t.retry_ratio).ceil() as u32).max(ENVOY_DEFAULT_MAX_RETRIES);
    reasons.insert(
        "trafficPolicy.connectionPool.http.maxRetries".into(),
        format!(
            "retry budget {} × {max_requests} requests in flight, at least Envoy's default {ENVOY_DEFAULT_MAX_RETRIES}: retries cannot multiply the load of an overloaded service",
            t.retry_ratio
        ),
    );
    // Outlier detection: judge each host on enough requests per interval.
    let interval_s = if o.rps > 0.0 {
        ((REQUESTS_PER_INTERVAL / o.rps).ceil() as u64).clamp(INTERVAL_BOUNDS.0, INTERVAL_BOUNDS.1)
    } else {
        INTERVAL_BOUNDS.1
    };
    reasons.insert(
        "trafficPolicy.outlierDetection.interval".into(),
        format!(
            "time for {REQUESTS_PER_INTERVAL} requests at {:.1} req/s, within {}–{} s",
            o.rps, INTERVAL_BOUNDS.0, INTERVAL_BOUNDS.1
        ),
    );
    let runs = o.rps * interval_s as f64;
    let consecutive = consecutive_errors(o.error_rate, runs, t.false_ejection_rate);
    reasons.insert(
        "trafficPolicy.outlierDetection.consecutive5xxErrors".into(),
        format!(
            "error share {:.4}: a healthy host erring {consecutive} times in a row by chance in {runs:.0} requests per interval is rarer than {} (bounds {}–{})",
            o.error_rate, t.false_ejection_rate, CONSECUTIVE_BOUNDS.0, CONSECUTIVE_BOUNDS.1
        ),
    );
    reasons.insert(
        "trafficPolicy.outlierDetection.baseEjectionTime".into(),
        format!(
            "configuration traffic.base_ejection_seconds ({} s; Istio's default is 30 s)",
            t.base_ejection_seconds
        ),
    );
    reasons.insert(
        "trafficPolicy.outlierDetection.maxEjectionPercent".into(),
        format!("configuration traffic.max_ejection_percent ({} %): the hosts left take the ejected ones' load", t.max_ejection_percent),
    );
    let mut traffic = json!({
        "connectionPool": {
            "http": {"http2MaxRequests": max_requests, "http1MaxPendingRequests": pending, "maxRetries": max_retries}
        },
        "outlierDetection": {
            "consecutive5xxErrors": consecutive,
            "interval": format!("{interval_s}s"),
            "baseEjectionTime": format!("{}s", t.base_ejection_seconds),
            "maxEjectionPercent": t.max_ejection_percent
        }
    });
    if let Some(l) = locality {
        let setting = match l {
            Locality::Failover { from, to } => {
                json!({"enabled": true, "failover": [{"from": from, "to": to}]})
            }
            Locality::Distribute { from, to } => {
                let to: serde_json::Map<String, Value> =
                    to.iter().map(|(k, w)| (k.clone(), json!(w))).collect();
                json!({"enabled": true, "distribute": [{"from": from, "to": to}]})
            }
        };
        traffic["loadBalancer"] = json!({"localityLbSetting": setting});
        reasons.insert(
            "trafficPolicy.loadBalancer.localityLbSetting".into(),
            format!("configuration services.{}.locality", o.service),
        );
    }
    let host = format!("{}.{}.svc.cluster.local", o.service, o.namespace);
    DesiredObject {
        kind: Kind::DestinationRule,
        namespace: o.namespace.clone(),
        name: o.service.clone(),
        host: host.clone(),
        object: json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {
                "name": o.service,
                "namespace": o.namespace,
                "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}
            },
            "spec": {
                "host": host,
                "trafficPolicy": traffic
            }
        }),
        reasons,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn obs(service: &str, rps: f64, latency_ms: f64, error_rate: f64) -> ServiceObservation {
        ServiceObservation {
            namespace: "bookinfo".into(),
            service: service.into(),
            rps,
            percentile: 99.0,
            latency_ms,
            error_rate,
            attainment: None,
            replica_latency_ms: Vec::new(),
            replicas_known: 0,
            chain_objectives: Vec::new(),
        }
    }

    fn tp(o: &DesiredObject) -> &Value {
        &o.object["spec"]["trafficPolicy"]
    }

    #[test]
    fn pools_follow_littles_law_with_headroom() {
        let rules = desired(
            &[
                obs("reviews", 400.0, 250.0, 0.0),
                obs("details", 1.0, 5.0, 0.2),
            ],
            &[],
            &TrafficSpec::default(),
        );
        let r = &rules[0];
        assert_eq!(
            r.object["spec"]["host"],
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(r.host, "reviews.bookinfo.svc.cluster.local");
        // 400/s × 0.25 s = 100 in flight, × 2.
        assert_eq!(tp(r)["connectionPool"]["http"]["http2MaxRequests"], 200);
        // 0.2 × 200 retries in flight.
        assert_eq!(tp(r)["connectionPool"]["http"]["maxRetries"], 40);
        assert_eq!(tp(r)["outlierDetection"]["interval"], "1s");
        assert_eq!(
            tp(r)["outlierDetection"]["consecutive5xxErrors"],
            3,
            "no errors: the least"
        );
        let d = &rules[1];
        assert_eq!(
            tp(d)["connectionPool"]["http"]["http2MaxRequests"],
            16,
            "floor"
        );
        // ⌈0.2 × 16⌉: the budget share of the floor.
        assert_eq!(tp(d)["connectionPool"]["http"]["maxRetries"], 4);
        assert_eq!(tp(d)["outlierDetection"]["interval"], "10s");
        assert_eq!(d.object["metadata"]["labels"][MANAGED_BY_LABEL], "meshtune");
        for field in [
            "trafficPolicy.connectionPool.http.http2MaxRequests",
            "trafficPolicy.connectionPool.http.maxRetries",
            "trafficPolicy.outlierDetection.consecutive5xxErrors",
            "trafficPolicy.outlierDetection.interval",
            "trafficPolicy.outlierDetection.maxEjectionPercent",
        ] {
            assert!(r.reasons.contains_key(field), "no reason for {field}");
        }
        assert!(
            r.reasons["trafficPolicy.connectionPool.http.http2MaxRequests"]
                .contains("Little's law")
        );
    }

    #[test]
    fn the_ejection_threshold_rises_with_the_error_share() {
        // At 20 % errors and 500 requests per interval, 3 in a row happen by chance.
        assert_eq!(consecutive_errors(0.2, 500.0, 0.01), 7);
        assert!(consecutive_errors(0.01, 500.0, 0.01) < consecutive_errors(0.2, 500.0, 0.01));
        assert_eq!(consecutive_errors(0.0, 500.0, 0.01), 3);
        assert_eq!(consecutive_errors(0.9, 500.0, 0.01), 20);
        assert_eq!(consecutive_errors(1.0, 500.0, 0.01), 20);
    }

    #[test]
    fn locality_settings_are_added_where_configured() {
        let loc = vec![
            (
                "reviews".to_string(),
                Locality::Failover {
                    from: "edge".into(),
                    to: "cloud".into(),
                },
            ),
            (
                "ratings".to_string(),
                Locality::Distribute {
                    from: "edge/*".into(),
                    to: vec![("edge/*".into(), 80), ("cloud/*".into(), 20)],
                },
            ),
        ];
        let rules = desired(
            &[obs("reviews", 1.0, 1.0, 0.0), obs("ratings", 1.0, 1.0, 0.0)],
            &loc,
            &TrafficSpec::default(),
        );
        let lb = &tp(&rules[0])["loadBalancer"]["localityLbSetting"];
        assert_eq!(lb["failover"][0]["to"], "cloud");
        let lb = &tp(&rules[1])["loadBalancer"]["localityLbSetting"];
        assert_eq!(lb["distribute"][0]["to"]["edge/*"], 80);
    }

    #[test]
    fn routes_get_the_widest_hop_budget_and_retries_that_fit_and_are_safe_for_any_method() {
        let fast = obs("reviews", 20.0, 30.0, 0.0);
        let slow = obs("ratings", 20.0, 90.0, 0.0);
        let budgets: BTreeMap<String, u64> =
            [("reviews".to_string(), 120), ("ratings".to_string(), 100)].into();
        let objs = desired_routes(&[fast, slow, obs("details", 5.0, 3.0, 0.0)], &budgets);
        assert_eq!(objs.len(), 2, "no budget, no route: details");
        let http = &objs[0].object["spec"]["http"][0];
        assert_eq!(objs[0].kind, Kind::VirtualService);
        assert_eq!(http["timeout"], "120ms");
        // 120 / 30 = 4 tries fit: Istio's default 2 retries.
        assert_eq!(http["retries"]["attempts"], 2);
        assert!(http["retries"].get("perTryTimeout").is_none());
        assert_eq!(http["retries"]["retryOn"], IDEMPOTENT_SAFE_RETRY_ON);
        assert!(
            !IDEMPOTENT_SAFE_RETRY_ON.contains("5xx")
                && !IDEMPOTENT_SAFE_RETRY_ON.contains("reset")
        );
        // 100 / 90: one try fits, no retry.
        assert_eq!(
            objs[1].object["spec"]["http"][0]["retries"],
            json!({"attempts": 0})
        );
        assert!(objs[0].reasons["http[0].timeout"].contains("120 ms"));
    }

    #[test]
    fn a_try_is_cut_at_twice_the_typical_replicas_latency_where_another_replica_and_a_retry_fit() {
        let route_of = |replicas: Vec<f64>, known: usize, budget: u64| {
            let mut o = obs("reviews", 20.0, 30.0, 0.0);
            o.replicas_known = known;
            o.replica_latency_ms = replicas;
            let objs = desired_routes(&[o], &[("reviews".to_string(), budget)].into());
            let r = objs.into_iter().next().unwrap();
            (r.object["spec"]["http"][0]["retries"].clone(), r.reasons)
        };
        // Every replica measured: as many known as have latencies.
        let route = |replicas: Vec<f64>, budget: u64| {
            let known = replicas.len();
            route_of(replicas, known, budget)
        };
        // One slow replica of three: the lower median is a fast one.
        let (retries, reasons) = route(vec![6.2, 7.0, 61.0], 120);
        assert_eq!(retries["perTryTimeout"], "14ms");
        let why = &reasons["http[0].retries.perTryTimeout"];
        assert!(why.contains("7.0 ms") && why.contains("61.0"), "{why}");
        // Two replicas: the faster one is typical.
        assert_eq!(route(vec![6.2, 61.0], 120).0["perTryTimeout"], "13ms");
        // One replica: nowhere else to retry; no reason claimed either.
        let (retries, reasons) = route(vec![6.2], 120);
        assert!(retries.get("perTryTimeout").is_none());
        assert!(!reasons.contains_key("http[0].retries.perTryTimeout"));
        // The slow one of two ejected (silent in the window, still known):
        // the timeout stays, sized by the one measured.
        let (retries, reasons) = route_of(vec![6.2], 2, 120);
        assert_eq!(retries["perTryTimeout"], "13ms");
        assert!(reasons["http[0].retries.perTryTimeout"].contains("of 2 answering lately"));
        // Known replicas but none with enough requests: nothing to size by.
        assert!(route_of(vec![], 3, 120).0.get("perTryTimeout").is_none());
        // A cut try must leave a retry its time within the budget.
        assert!(route(vec![31.0, 32.0], 120)
            .0
            .get("perTryTimeout")
            .is_none());
        assert_eq!(route(vec![30.0, 30.0], 120).0["perTryTimeout"], "60ms");
    }

    #[test]
    fn a_try_within_the_services_share_of_the_objective_is_never_cut() {
        use crate::plan::observe::ChainObjective;
        let timeout = |objectives: Vec<ChainObjective>| {
            let mut o = obs("reviews", 20.0, 30.0, 0.0);
            o.replicas_known = 3;
            o.replica_latency_ms = vec![19.0, 20.0, 22.0];
            o.chain_objectives = objectives;
            per_try_timeout_ms(&o, 800)
        };
        let chain = |latency_ms, slo_ms| ChainObjective { latency_ms, slo_ms };
        // A loose objective: 20 ms of the chain's 30 ms × 200 ms = 133.3 ms,
        // far above 2 × 20 ms, so every replica slowing together (a
        // saturated service behind it) is not cut while the chain can wait.
        let (ms, why) = timeout(vec![chain(30.0, 200.0)]).unwrap();
        assert_eq!(ms, 134);
        assert!(why.contains("133.3 ms"), "{why}");
        // The tightest chain through the service sets it.
        assert_eq!(
            timeout(vec![chain(30.0, 200.0), chain(25.0, 60.0)])
                .unwrap()
                .0,
            48
        );
        // A tight objective leaves the slow-try rule in force: 20/25 × 40 = 32 < 40.
        assert_eq!(timeout(vec![chain(25.0, 40.0)]).unwrap().0, 40);
        // A chain slowed by a slow replica only narrows the room.
        assert_eq!(timeout(vec![chain(150.0, 200.0)]).unwrap().0, 40);
        // No chain measured: the slow-try rule alone.
        let (ms, why) = timeout(vec![]).unwrap();
        assert_eq!(ms, 40);
        assert!(why.contains("no objective share"), "{why}");
        // The room must still leave a retry its time within the budget.
        let mut o = obs("reviews", 20.0, 30.0, 0.0);
        o.replicas_known = 2;
        o.replica_latency_ms = vec![20.0, 21.0];
        o.chain_objectives = vec![chain(30.0, 200.0)];
        assert!(per_try_timeout_ms(&o, 200).is_err());
    }

    #[test]
    fn the_widest_budget_of_the_chains_through_a_service_is_its_route_timeout() {
        let policy: meshtune_filter_core::control::Policy = serde_json::from_value(json!({
            "version": 1, "ttl_ms": 1,
            "chains": {
                "a": {"budget_ms": 400, "hop_budget_ms": {"ratings": 50, "reviews": 200}},
                "b": {"budget_ms": 400, "hop_budget_ms": {"ratings": 70}}
            }
        }))
        .unwrap();
        let w = widest_hop_budgets(&policy);
        assert_eq!(w["ratings"], 70);
        assert_eq!(w["reviews"], 200);
    }
}
