//! The DestinationRules meshtune wants, computed purely from what it
//! measured: connection pools sized from observed concurrency (Little's
//! law with headroom), outlier detection from the error rate, and locality
//! load balancing when placement says so. Only these fields are sent, so
//! server-side apply makes meshtune the owner of these fields alone.

use serde_json::{json, Value};

pub const FIELD_MANAGER: &str = "meshtune";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// What the agent measured for one service over its window.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObservation {
    pub namespace: String,
    pub service: String,
    pub rps: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
}

/// Locality load balancing for a service: failover between regions or a
/// weighted distribution (what the cloud–edge placement decides).
#[derive(Debug, Clone, PartialEq)]
pub enum Locality {
    Failover {
        from: String,
        to: String,
    },
    Distribute {
        from: String,
        to: Vec<(String, u32)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Multiplier on observed concurrency for the pool limits.
    pub headroom: f64,
    pub min_requests: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            headroom: 2.0,
            min_requests: 16,
        }
    }
}

/// One DestinationRule to apply (the whole object as sent with server-side apply).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRule {
    pub namespace: String,
    pub name: String,
    pub object: Value,
}

/// The rules for `observations`, with locality settings where given.
pub fn desired(
    observations: &[ServiceObservation],
    locality: &[(String, Locality)],
    t: &Tuning,
) -> Vec<DesiredRule> {
    observations
        .iter()
        .map(|o| {
            // Little's law: requests in flight = arrival rate × time in system.
            let inflight = o.rps * o.p99_ms / 1000.0;
            let max_requests = ((inflight * t.headroom).ceil() as u32).max(t.min_requests);
            let pending = (max_requests / 2).max(t.min_requests / 2);
            // Eject faster when errors are rare (an erroring host stands out),
            // slower when the whole service errs (ejection would not help).
            let consecutive = if o.error_rate < 0.01 { 5 } else { 10 };
            let mut traffic = json!({
                "connectionPool": {
                    "http": {"http2MaxRequests": max_requests, "http1MaxPendingRequests": pending, "maxRetries": 3}
                },
                "outlierDetection": {
                    "consecutive5xxErrors": consecutive,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50
                }
            });
            if let Some((_, l)) = locality.iter().find(|(svc, _)| svc == &o.service) {
                let setting = match l {
                    Locality::Failover { from, to } => json!({"enabled": true, "failover": [{"from": from, "to": to}]}),
                    Locality::Distribute { from, to } => {
                        let to: serde_json::Map<String, Value> = to.iter().map(|(k, w)| (k.clone(), json!(w))).collect();
                        json!({"enabled": true, "distribute": [{"from": from, "to": to}]})
                    }
                };
                traffic["loadBalancer"] = json!({"localityLbSetting": setting});
            }
            DesiredRule {
                namespace: o.namespace.clone(),
                name: o.service.clone(),
                object: json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "DestinationRule",
                    "metadata": {
                        "name": o.service,
                        "namespace": o.namespace,
                        "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}
                    },
                    "spec": {
                        "host": format!("{}.{}.svc.cluster.local", o.service, o.namespace),
                        "trafficPolicy": traffic
                    }
                }),
            }
        })
        .collect()
}

/// Numbers that may move in a rule; a change smaller than `hysteresis`
/// (relative) on every one of them is not worth applying.
pub fn significant_change(old: &Value, new: &Value, hysteresis: f64) -> bool {
    fn numbers(v: &Value, path: String, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Object(o) => o
                .iter()
                .for_each(|(k, c)| numbers(c, format!("{path}.{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| numbers(c, format!("{path}[{i}]"), out)),
            Value::Number(n) => out.push((path, n.as_f64().unwrap_or(0.0))),
            _ => out.push((path, f64::NAN)),
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    numbers(&old["spec"], String::new(), &mut a);
    numbers(&new["spec"], String::new(), &mut b);
    if a.len() != b.len() || a.iter().zip(&b).any(|((pa, _), (pb, _))| pa != pb) {
        return true;
    }
    // Non-numeric leaves changed?
    if strip_numbers(&old["spec"]) != strip_numbers(&new["spec"]) {
        return true;
    }
    a.iter().zip(&b).any(|((_, x), (_, y))| {
        let base = x.abs().max(1.0);
        (x - y).abs() / base > hysteresis
    })
}

fn strip_numbers(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, c)| (k.clone(), strip_numbers(c)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_numbers).collect()),
        Value::Number(_) => Value::Null,
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(service: &str, rps: f64, p99_ms: f64, error_rate: f64) -> ServiceObservation {
        ServiceObservation {
            namespace: "bookinfo".into(),
            service: service.into(),
            rps,
            p99_ms,
            error_rate,
        }
    }

    #[test]
    fn pools_follow_littles_law_with_headroom() {
        let rules = desired(
            &[
                obs("reviews", 400.0, 250.0, 0.0),
                obs("details", 1.0, 5.0, 0.2),
            ],
            &[],
            &Tuning::default(),
        );
        let r = &rules[0].object;
        assert_eq!(r["spec"]["host"], "reviews.bookinfo.svc.cluster.local");
        // 400/s × 0.25 s = 100 in flight, × 2.
        assert_eq!(
            r["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"],
            200
        );
        assert_eq!(
            r["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
            5
        );
        let d = &rules[1].object;
        assert_eq!(
            d["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"], 16,
            "floor"
        );
        assert_eq!(
            d["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
            10
        );
        assert_eq!(d["metadata"]["labels"][MANAGED_BY_LABEL], "meshtune");
    }

    #[test]
    fn locality_settings_are_added_where_placement_asks() {
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
            &Tuning::default(),
        );
        let lb = &rules[0].object["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"];
        assert_eq!(lb["failover"][0]["to"], "cloud");
        let lb = &rules[1].object["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"];
        assert_eq!(lb["distribute"][0]["to"]["edge/*"], 80);
    }

    #[test]
    fn hysteresis_ignores_small_moves() {
        let a = desired(&[obs("r", 400.0, 250.0, 0.0)], &[], &Tuning::default())
            .remove(0)
            .object;
        let b = desired(&[obs("r", 420.0, 250.0, 0.0)], &[], &Tuning::default())
            .remove(0)
            .object;
        let c = desired(&[obs("r", 800.0, 250.0, 0.0)], &[], &Tuning::default())
            .remove(0)
            .object;
        assert!(!significant_change(&a, &b, 0.2));
        assert!(significant_change(&a, &c, 0.2));
        let with_loc = desired(
            &[obs("r", 400.0, 250.0, 0.0)],
            &[(
                "r".into(),
                Locality::Failover {
                    from: "a".into(),
                    to: "b".into(),
                },
            )],
            &Tuning::default(),
        )
        .remove(0)
        .object;
        assert!(
            significant_change(&a, &with_loc, 0.2),
            "a new field is a change"
        );
    }
}
