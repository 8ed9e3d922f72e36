//! What meshtune would write for a service's CPU and memory on a cluster,
//! computed purely from the Deployment, the autoscalers that target it and
//! the allocation ([`crate::plan::resources`]).
//!
//! **What is written.** The allocation is the CPU a container may use,
//! which is what a CPU *limit* enforces (a CFS quota: what the lab applies)
//! and what the model was fitted under. So:
//! - a container with a CPU limit gets `limits.cpu` = the allocation and
//!   `requests.cpu` = the allocation × its own request ÷ limit ratio (the
//!   user's choice of headroom between what is reserved and what may be
//!   used is kept);
//! - a container with only a CPU request (no quota: it may burst) gets
//!   `requests.cpu` = the allocation and no limit is added;
//! - a container with neither gets both, equal (Guaranteed QoS for CPU).
//!
//! Memory follows the same rule, from the memory allocation. Only the
//! fields meshtune owns are sent (server-side apply, field manager
//! `meshtune`): the container's name and those resources. The `istio-proxy`
//! container is never written: its resources are Istio's (the
//! `sidecar.istio.io/proxyCPU` annotations); they are reported.
//!
//! **Autoscalers.** meshtune does not fight another controller for the
//! same field: when a HorizontalPodAutoscaler scales the Deployment on CPU
//! or memory utilisation (utilisation is measured against the request, so
//! changing the request changes its decisions), or a VerticalPodAutoscaler
//! in any mode but `Off` targets it (`Initial` too: it rewrites the requests
//! of every new pod), nothing is written for it and the reason is reported
//! (recommend only).

use serde_json::{json, Value};

/// The sidecar container Istio injects; its resources are Istio's.
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// `cores` as a Kubernetes CPU quantity, rounded up to a millicore.
pub fn cpu_quantity(cores: f64) -> String {
    let milli = (cores * 1000.0 - 1e-6).ceil().max(1.0) as u64;
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

/// `mib` as a Kubernetes memory quantity, rounded up to a MiB.
pub fn memory_quantity(mib: f64) -> String {
    format!("{}Mi", (mib - 1e-6).ceil().max(1.0) as u64)
}

/// A CPU quantity in cores (`"250m"`, `"1.5"`, `"2"`).
pub fn parse_cpu(q: &str) -> Option<f64> {
    let q = q.trim();
    // The metrics API reports usage in nanocores (`"12345678n"`).
    let (number, scale) = match q.char_indices().last() {
        Some((i, 'm')) => (&q[..i], 1e-3),
        Some((i, 'u')) => (&q[..i], 1e-6),
        Some((i, 'n')) => (&q[..i], 1e-9),
        _ => (q, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// The CPU a Deployment's container runs under, cores: its limit (what the
/// kubelet's quota enforces), else its request (what meshtune writes for a
/// container without a limit). `None`: neither is set.
pub fn container_cpu(deployment: &Value, container: &str) -> Option<f64> {
    let c = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?;
    let r = &c["resources"];
    r["limits"]["cpu"]
        .as_str()
        .or_else(|| r["requests"]["cpu"].as_str())
        .and_then(parse_cpu)
        .filter(|c| *c > 0.0)
}

/// What one Deployment's pods use now, from the metrics API's PodMetrics
/// (which carry their pod's labels): the pods its `spec.selector.matchLabels`
/// selects, container `container` summed over them (CPU in cores, memory
/// as the working set in MiB). `None` when none of its pods reports.
pub fn deployment_usage(
    deployment: &Value,
    container: &str,
    pod_metrics: &[Value],
) -> Option<crate::data::usage::ServiceRate> {
    let selector = deployment["spec"]["selector"]["matchLabels"].as_object()?;
    if selector.is_empty() {
        return None;
    }
    let mut rate = crate::data::usage::ServiceRate::default();
    for pod in pod_metrics {
        let labels = &pod["metadata"]["labels"];
        if !selector.iter().all(|(k, v)| &labels[k] == v) {
            continue;
        }
        let Some(c) = pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
        else {
            continue;
        };
        rate.cores += c["usage"]["cpu"].as_str().and_then(parse_cpu)?;
        rate.memory_mib += c["usage"]["memory"].as_str().and_then(parse_memory)?;
        rate.replicas += 1;
    }
    (rate.replicas > 0).then_some(rate)
}

/// A memory quantity in MiB (`"256Mi"`, `"1Gi"`, `"500M"`, bytes).
pub fn parse_memory(q: &str) -> Option<f64> {
    let q = q.trim();
    const UNITS: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let bytes = UNITS
        .iter()
        .find_map(|(suffix, factor)| {
            q.strip_suffix(suffix)
                .map(|n| n.parse::<f64>().ok().map(|v| v * factor))
        })
        .unwrap_or_else(|| q.parse::<f64>().ok())?;
    (bytes.is_finite() && bytes >= 0.0).then(|| bytes / (1024.0 * 1024.0))
}

/// The HorizontalPodAutoscalers and VerticalPodAutoscalers of a namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Autoscalers {
    pub hpas: Vec<Value>,
    pub vpas: Vec<Value>,
}

/// Why meshtune writes nothing for a Deployment an autoscaler manages, or
/// `None` when none does. `hpas` and `vpas` are the namespace's objects.
pub fn autoscaler_conflict(deployment: &str, hpas: &[Value], vpas: &[Value]) -> Option<String> {
    let targets = |r: &Value| {
        r["kind"].as_str() == Some("Deployment") && r["name"].as_str() == Some(deployment)
    };
    for h in hpas {
        if !targets(&h["spec"]["scaleTargetRef"]) {
            continue;
        }
        let name = h["metadata"]["name"].as_str().unwrap_or("?");
        // autoscaling/v2 without metrics scales on 80 % CPU utilisation.
        let metrics = h["spec"]["metrics"].as_array().cloned().unwrap_or_default();
        if metrics.is_empty() {
            return Some(format!(
                "HorizontalPodAutoscaler {name} scales it on CPU utilisation (its default), \
                 which is measured against the request meshtune would change"
            ));
        }
        for m in &metrics {
            let resource = match m["type"].as_str() {
                Some("Resource") => &m["resource"],
                Some("ContainerResource") => &m["containerResource"],
                _ => continue,
            };
            if let Some(r @ ("cpu" | "memory")) = resource["name"].as_str() {
                return Some(format!(
                    "HorizontalPodAutoscaler {name} scales it on {r} utilisation, \
                     which is measured against the request meshtune would change"
                ));
            }
        }
    }
    for v in vpas {
        if !targets(&v["spec"]["targetRef"]) {
            continue;
        }
        let name = v["metadata"]["name"].as_str().unwrap_or("?");
        // The VPA's default update mode is Auto.
        let mode = v["spec"]["updatePolicy"]["updateMode"]
            .as_str()
            .unwrap_or("Auto");
        if mode != "Off" {
            return Some(format!(
                "VerticalPodAutoscaler {name} sets its resources (updateMode {mode})"
            ));
        }
    }
    None
}

/// What to set for one container, in cores and MiB (`None`: leave it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContainerAllocation {
    pub cpu: Option<f64>,
    pub memory_mib: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeploymentError {
    #[error("Deployment {0}: no container named {1}")]
    NoContainer(String, String),
    #[error(
        "Deployment {0}: {1} is Istio's sidecar; its resources are set by Istio's annotations"
    )]
    ProxyContainer(String, String),
    #[error("Deployment {0}: {1} must be positive")]
    BadAllocation(String, &'static str),
}

/// The request and limit to write for one resource of a container whose
/// current ones are `request` and `limit` (module doc: the user's ratio).
fn request_and_limit(
    allocation: f64,
    request: Option<f64>,
    limit: Option<f64>,
) -> (Option<f64>, Option<f64>) {
    match (request, limit) {
        (Some(r), Some(l)) if l > 0.0 => (Some(allocation * (r / l).min(1.0)), Some(allocation)),
        (None, Some(_)) => (Some(allocation), Some(allocation)),
        (Some(_), _) => (Some(allocation), None),
        (None, None) => (Some(allocation), Some(allocation)),
    }
}

/// One resource: its name, the allocation, and how its quantities are
/// read and written.
type QuantityRule = (
    &'static str,
    Option<f64>,
    fn(&str) -> Option<f64>,
    fn(f64) -> String,
);

/// The server-side apply body that sets `container`'s resources in
/// `deployment` (the live object), naming only the fields meshtune owns.
pub fn resources_apply(
    deployment: &Value,
    container: &str,
    a: ContainerAllocation,
) -> Result<Value, DeploymentError> {
    let name = deployment["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if container == PROXY_CONTAINER {
        return Err(DeploymentError::ProxyContainer(name, container.into()));
    }
    for (field, v) in [("cpu", a.cpu), ("memory", a.memory_mib)] {
        if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(DeploymentError::BadAllocation(name, field));
        }
    }
    let current = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(container)))
        .ok_or_else(|| DeploymentError::NoContainer(name.clone(), container.into()))?;
    let res = &current["resources"];
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    let rules: [QuantityRule; 2] = [
        ("cpu", a.cpu, parse_cpu, cpu_quantity),
        ("memory", a.memory_mib, parse_memory, memory_quantity),
    ];
    for (resource, allocation, parse, quantity) in rules {
        let Some(allocation) = allocation else {
            continue;
        };
        let (r, l) = request_and_limit(
            allocation,
            res["requests"][resource].as_str().and_then(parse),
            res["limits"][resource].as_str().and_then(parse),
        );
        if let Some(r) = r {
            requests.insert(resource.into(), quantity(r).into());
        }
        if let Some(l) = l {
            limits.insert(resource.into(), quantity(l).into());
        }
    }
    let mut resources = serde_json::Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
        },
        "spec": {"template": {"spec": {"containers": [
            {"name": container, "resources": Value::Object(resources)}
        ]}}}
    }))
}

/// The body of a `pods/resize` request (in-place resize, Kubernetes ≥
/// 1.33) carrying the same resources as `apply` (from
/// [`resources_apply`]) for one pod.
pub fn resize_patch(apply: &Value) -> Value {
    json!({"spec": {"containers": apply["spec"]["template"]["spec"]["containers"]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(resources: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ratings-v1", "namespace": "bookinfo"},
            "spec": {
                "selector": {"matchLabels": {"app": "ratings"}},
                "template": {
                    "metadata": {"labels": {"app": "ratings"}},
                    "spec": {"containers": [
                        {"name": "ratings", "image": "ratings:1", "resources": resources},
                        {"name": "istio-proxy", "image": "proxyv2"}
                    ]}
                }
            }
        })
    }

    fn written(resources: Value, cpu: f64, mem: Option<f64>) -> Value {
        let a = ContainerAllocation {
            cpu: Some(cpu),
            memory_mib: mem,
        };
        resources_apply(&deployment(resources), "ratings", a).unwrap()["spec"]["template"]["spec"]
            ["containers"][0]["resources"]
            .clone()
    }

    #[test]
    fn the_cpu_in_force_is_the_limit_else_the_request() {
        let d = deployment(json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}));
        assert_eq!(container_cpu(&d, "ratings"), Some(1.0));
        let d = deployment(json!({"requests": {"cpu": "250m"}}));
        assert_eq!(container_cpu(&d, "ratings"), Some(0.25));
        assert_eq!(container_cpu(&deployment(json!({})), "ratings"), None);
        assert_eq!(
            container_cpu(&d, "istio-proxy"),
            None,
            "another container's"
        );
    }

    #[test]
    fn quantities_round_up_and_parse_back() {
        assert_eq!(cpu_quantity(0.25), "250m");
        assert_eq!(cpu_quantity(0.2501), "251m");
        assert_eq!(cpu_quantity(2.0), "2");
        assert_eq!(cpu_quantity(0.0), "1m");
        assert_eq!(memory_quantity(255.2), "256Mi");
        assert_eq!(parse_cpu("250m"), Some(0.25));
        assert_eq!(parse_cpu("1.5"), Some(1.5));
        // The metrics API's nanocores and microcores.
        for (q, cores) in [("12500000n", 0.0125), ("250u", 0.00025)] {
            assert!((parse_cpu(q).unwrap() - cores).abs() < 1e-12, "{q}");
        }
        assert_eq!(parse_cpu("x"), None);
        assert_eq!(parse_memory("1Gi"), Some(1024.0));
        assert_eq!(parse_memory("256Mi"), Some(256.0));
        assert_eq!(parse_memory("1048576"), Some(1.0));
        assert_eq!(parse_memory("-1Mi"), None);
    }

    #[test]
    fn the_users_request_to_limit_ratio_is_kept() {
        // Limit 1, request 0.5: allocation 0.3 → limit 300m, request 150m.
        let r = written(
            json!({"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}),
            0.3,
            Some(200.0),
        );
        assert_eq!(
            r,
            json!({"requests": {"cpu": "150m", "memory": "100Mi"}, "limits": {"cpu": "300m", "memory": "200Mi"}})
        );
    }

    #[test]
    fn a_container_without_a_limit_gets_none_added() {
        let r = written(json!({"requests": {"cpu": "100m"}}), 0.4, None);
        assert_eq!(r, json!({"requests": {"cpu": "400m"}}));
        // Neither: both, equal.
        let r = written(json!({}), 0.4, None);
        assert_eq!(
            r,
            json!({"requests": {"cpu": "400m"}, "limits": {"cpu": "400m"}})
        );
    }

    #[test]
    fn only_owned_fields_are_sent_and_never_the_sidecars() {
        let d = deployment(json!({}));
        let a = ContainerAllocation {
            cpu: Some(0.5),
            memory_mib: None,
        };
        let body = resources_apply(&d, "ratings", a).unwrap();
        assert_eq!(
            body["metadata"],
            json!({"name": "ratings-v1", "namespace": "bookinfo"})
        );
        let c = &body["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(1));
        assert!(c[0].get("image").is_none());
        assert!(body["spec"].get("selector").is_none());
        assert_eq!(
            resize_patch(&body),
            json!({"spec": {"containers": [{"name": "ratings", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}}]}})
        );
        assert_eq!(
            resources_apply(&d, PROXY_CONTAINER, a),
            Err(DeploymentError::ProxyContainer(
                "ratings-v1".into(),
                PROXY_CONTAINER.into()
            ))
        );
        assert_eq!(
            resources_apply(&d, "nope", a),
            Err(DeploymentError::NoContainer(
                "ratings-v1".into(),
                "nope".into()
            ))
        );
        let bad = ContainerAllocation {
            cpu: Some(f64::NAN),
            memory_mib: None,
        };
        assert_eq!(
            resources_apply(&d, "ratings", bad),
            Err(DeploymentError::BadAllocation("ratings-v1".into(), "cpu"))
        );
    }

    #[test]
    fn autoscalers_on_the_same_resources_are_left_alone() {
        let hpa = |metrics: Value| {
            json!({"metadata": {"name": "ratings"}, "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratings-v1"},
                "minReplicas": 1, "maxReplicas": 5, "metrics": metrics}})
        };
        let cpu = hpa(
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]),
        );
        let why = autoscaler_conflict("ratings-v1", std::slice::from_ref(&cpu), &[]).unwrap();
        assert!(
            why.contains("HorizontalPodAutoscaler ratings") && why.contains("cpu"),
            "{why}"
        );
        assert!(autoscaler_conflict("details-v1", &[cpu], &[]).is_none());
        // No metrics: the default is CPU.
        assert!(autoscaler_conflict("ratings-v1", &[hpa(json!([]))], &[]).is_some());
        // Scaling on requests per second does not read the request.
        let rps = hpa(
            json!([{"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}]),
        );
        assert!(autoscaler_conflict("ratings-v1", &[rps], &[]).is_none());
        let vpa = |mode: Option<&str>| {
            let mut v = json!({"metadata": {"name": "ratings-vpa"}, "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratings-v1"}}});
            if let Some(m) = mode {
                v["spec"]["updatePolicy"] = json!({"updateMode": m});
            }
            v
        };
        assert!(
            autoscaler_conflict("ratings-v1", &[], &[vpa(None)]).is_some(),
            "Auto by default"
        );
        assert!(autoscaler_conflict("ratings-v1", &[], &[vpa(Some("Recreate"))]).is_some());
        assert!(autoscaler_conflict("ratings-v1", &[], &[vpa(Some("Off"))]).is_none());
        assert!(autoscaler_conflict("ratings-v1", &[], &[vpa(Some("Initial"))]).is_some());
    }
}
