//! `meshtune-agent recommend --prometheus URL`: the DestinationRules
//! meshtune would write for a namespace, read from Istio's standard
//! metrics in the user's Prometheus (see `plan::istio_metrics`), before
//! any filter is installed.

use crate::config::AgentConfig;
use crate::plan::istio_metrics::{by_service, observations, queries, service_percentile};
use crate::plan::observe::ServiceObservation;
use crate::plan::traffic::desired;
use crate::plan::DesiredObject;
use std::time::Duration;

/// What `recommend` found.
pub struct Recommendation {
    pub observations: Vec<ServiceObservation>,
    pub objects: Vec<DesiredObject>,
    /// Services with traffic that the configuration does not list.
    pub unknown: Vec<String>,
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs one instant query (at `at`, Unix seconds, or now) and returns
/// `data.result`.
async fn query(base: &str, promql: &str, at: Option<f64>) -> Result<serde_json::Value, String> {
    let mut uri = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(promql)
    );
    if let Some(t) = at {
        uri.push_str(&format!("&time={t}"));
    }
    let (status, body) = crate::http::get(&uri, &[], Duration::from_secs(10))
        .await
        .map_err(|e| format!("--prometheus {base}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{base} answered {status}, not Prometheus JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "{base}: {} ({promql})",
            v["error"].as_str().unwrap_or("query failed")
        ));
    }
    Ok(v["data"]["result"].clone())
}

/// Reads the namespace's services from Prometheus and plans their
/// DestinationRules as the agent would from its own reports.
pub async fn recommend(
    cfg: &AgentConfig,
    prometheus: &str,
    namespace: &str,
    window: &str,
    at: Option<f64>,
) -> Result<Recommendation, String> {
    let percentiles: Vec<f64> = cfg
        .services
        .values()
        .filter(|s| s.namespace == namespace)
        .map(|s| service_percentile(s, &cfg.chains))
        .chain([99.0])
        .collect();
    let mut answers = Vec::new();
    for (measure, promql) in queries(namespace, window, &percentiles) {
        let result = query(prometheus, &promql, at).await?;
        answers.push((measure, by_service(&result)?));
    }
    let (observations, unknown) = observations(namespace, &answers, &cfg.services, &cfg.chains);
    let locality: Vec<_> = cfg
        .services
        .iter()
        .filter_map(|(svc, spec)| Some((svc.clone(), spec.locality.as_ref()?.to_locality()?)))
        .collect();
    let objects = desired(&observations, &locality, &cfg.traffic);
    Ok(Recommendation {
        observations,
        objects,
        unknown,
    })
}
