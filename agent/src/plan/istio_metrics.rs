//! Recommending from an existing Istio, before any filter is installed
//! (M15): the server-side view of each service read from Istio's standard
//! metrics — `istio_requests_total` and
//! `istio_request_duration_milliseconds_bucket` as the destination's
//! sidecar reports them (`reporter="destination"`) — turned into the same
//! observations the agent makes from its filters' reports, so the same
//! planner writes the same DestinationRules. Pure: the PromQL to run and
//! the reading of its answers; the caller queries Prometheus.
//!
//! What Istio's metrics cannot give: a chain's per-hop view (which
//! services a request of one chain crossed, and its end-to-end latency),
//! so route timeouts and retries, which come from each chain's per-hop
//! budgets, are not recommended from them.

use crate::config::{ChainSpec, ServiceSpec};
use crate::plan::observe::ServiceObservation;
use serde_json::Value;
use std::collections::BTreeMap;

/// One query's role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    Rps,
    Errors,
    /// Latency (ms) at this percentile.
    Latency(f64),
}

fn selector(namespace: &str) -> String {
    format!("reporter=\"destination\",destination_service_namespace=\"{namespace}\"")
}

/// The queries for `namespace` over `window` (a PromQL duration, e.g.
/// `5m`), one latency query per percentile the chains declare.
pub fn queries(namespace: &str, window: &str, percentiles: &[f64]) -> Vec<(Measure, String)> {
    let sel = selector(namespace);
    let by = "destination_service_name";
    let mut out = vec![
        (
            Measure::Rps,
            format!("sum by ({by}) (rate(istio_requests_total{{{sel}}}[{window}]))"),
        ),
        (
            Measure::Errors,
            format!(
                "sum by ({by}) (rate(istio_requests_total{{{sel},response_code=~\"5..\"}}[{window}]))"
            ),
        ),
    ];
    let mut ps: Vec<f64> = percentiles.to_vec();
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    for p in ps {
        out.push((
            Measure::Latency(p),
            format!(
                "histogram_quantile({}, sum by ({by}, le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{window}])))",
                p / 100.0
            ),
        ));
    }
    out
}

/// An instant query's `data.result` → service → value (NaN dropped).
pub fn by_service(result: &Value) -> Result<BTreeMap<String, f64>, String> {
    let items = result
        .as_array()
        .ok_or("the answer's data.result is not a list")?;
    let mut out = BTreeMap::new();
    for s in items {
        let name = s["metric"]["destination_service_name"]
            .as_str()
            .ok_or("a series without destination_service_name")?;
        let v: f64 = s["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name}: the value is not a number"))?;
        if v.is_finite() {
            out.insert(name.to_owned(), v);
        }
    }
    Ok(out)
}

/// The percentile planned for a service: the highest its chains declare.
pub fn service_percentile(spec: &ServiceSpec, chains: &BTreeMap<String, ChainSpec>) -> f64 {
    spec.chains
        .iter()
        .filter_map(|c| chains.get(c))
        .map(|c| c.percentile)
        .fold(None, |a: Option<f64>, p| Some(a.map_or(p, |a| a.max(p))))
        .unwrap_or(99.0)
}

/// The observations of the configured services in `namespace` that had
/// traffic, from the answers; and the services seen that the
/// configuration does not list (nothing is recommended for them).
pub fn observations(
    namespace: &str,
    answers: &[(Measure, BTreeMap<String, f64>)],
    services: &BTreeMap<String, ServiceSpec>,
    chains: &BTreeMap<String, ChainSpec>,
) -> (Vec<ServiceObservation>, Vec<String>) {
    let get = |m: Measure| answers.iter().find(|(x, _)| *x == m).map(|(_, v)| v);
    let empty = BTreeMap::new();
    let rps = get(Measure::Rps).unwrap_or(&empty);
    let errors = get(Measure::Errors).unwrap_or(&empty);
    let mut obs = Vec::new();
    let mut unknown = Vec::new();
    for (svc, r) in rps {
        if *r <= 0.0 {
            continue;
        }
        let Some(spec) = services.get(svc).filter(|s| s.namespace == namespace) else {
            unknown.push(svc.clone());
            continue;
        };
        let percentile = service_percentile(spec, chains);
        let latency_ms = get(Measure::Latency(percentile))
            .and_then(|l| l.get(svc))
            .copied()
            .unwrap_or(0.0);
        obs.push(ServiceObservation {
            namespace: namespace.to_owned(),
            service: svc.clone(),
            rps: *r,
            percentile,
            latency_ms,
            error_rate: (errors.get(svc).copied().unwrap_or(0.0) / r).clamp(0.0, 1.0),
            attainment: None,
            replica_latency_ms: Vec::new(),
            replicas_known: 0,
            chain_objectives: Vec::new(),
        });
    }
    (obs, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_become_the_observations_the_planner_reads() {
        let q = queries("bookinfo", "5m", &[99.0, 95.0, 99.0]);
        assert_eq!(q.len(), 4, "rps, errors and one latency per percentile");
        assert!(q[3]
            .1
            .starts_with("histogram_quantile(0.99, sum by (destination_service_name, le)"));
        assert!(q[0]
            .1
            .contains("reporter=\"destination\",destination_service_namespace=\"bookinfo\""));
        let series = |v: &[(&str, &str)]| {
            json!(v
                .iter()
                .map(|(s, x)| json!({"metric": {"destination_service_name": s}, "value": [0, x]}))
                .collect::<Vec<_>>())
        };
        let answers = vec![
            (
                Measure::Rps,
                by_service(&series(&[("reviews", "200"), ("other", "3")])).unwrap(),
            ),
            (
                Measure::Errors,
                by_service(&series(&[("reviews", "2")])).unwrap(),
            ),
            (
                Measure::Latency(99.0),
                by_service(&series(&[("reviews", "99.5"), ("other", "NaN")])).unwrap(),
            ),
        ];
        let services = BTreeMap::from([(
            "reviews".to_string(),
            ServiceSpec {
                namespace: "bookinfo".into(),
                manage: true,
                chains: vec!["product".into()],
                ..Default::default()
            },
        )]);
        let (obs, unknown) = observations("bookinfo", &answers, &services, &BTreeMap::new());
        assert_eq!(unknown, ["other"]);
        assert_eq!(
            (obs[0].rps, obs[0].latency_ms, obs[0].error_rate),
            (200.0, 99.5, 0.01)
        );
        assert!(by_service(&json!([{"metric": {}, "value": [0, "1"]}])).is_err());
    }
}
