//! What istiod does for the fields meshtune writes, for the lab's sidecars:
//! a DestinationRule's `trafficPolicy` becomes fields of the service's
//! outbound Envoy cluster, a VirtualService's `http[]` route settings become
//! fields of its route. Every sidecar starts from Istio's defaults (no route
//! timeout, Istio's default retry policy, circuit-breaker thresholds 2³²−1,
//! `LEAST_REQUEST`, no outlier detection), not from meshtune's.
//!
//! The mapping follows istiod 1.30.3, `pilot/pkg/networking/core`:
//! `cluster_traffic_policy.go` (`applyConnectionPool`,
//! `getDefaultCircuitBreakerThresholds`, `applyOutlierDetection`,
//! `applyLoadBalancer`, `defaultLBAlgorithm`) and `route/retry/retry.go`
//! (`DefaultPolicy`, `ConvertPolicy`); the route timeout in `route/route.go`
//! (`translateRoute`: no timeout unless the VirtualService sets one). A
//! field this module does not translate is an error naming its path, never
//! dropped.

use serde_json::{json, Map, Value};

/// A field the lab's control plane cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Untranslated {
    /// The field's path in the object, e.g. `spec.trafficPolicy.tls`.
    pub path: String,
    pub message: String,
}

fn untranslated(path: &str, message: &str) -> Untranslated {
    Untranslated {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

/// Envoy's name for the HTTP protocol options of an upstream cluster.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's default retry `retry_on` (`route/retry/retry.go`, `defaultRetryOn`).
/// Since Istio 1.24 no status code is retriable by default (503 was
/// dropped with the 1.23 compatibility profile), so `retriable-status-codes`
/// retries nothing unless a VirtualService names codes.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Istio's mesh-wide default connect timeout (`pkg/config/mesh/mesh.go`).
pub const DEFAULT_CONNECT_TIMEOUT: &str = "10s";

/// One row of the mapping: the Istio field and where it lands in Envoy.
pub struct Row {
    pub istio: &'static str,
    pub envoy: &'static str,
    pub istiod: &'static str,
}

/// Every field translated, as the README's table lists them.
pub const MAPPING: &[Row] = &[
    Row { istio: "trafficPolicy.connectionPool.tcp.maxConnections", envoy: "cluster.circuit_breakers.thresholds[0].max_connections", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.tcp.connectTimeout", envoy: "cluster.connect_timeout", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.http.http1MaxPendingRequests", envoy: "cluster.circuit_breakers.thresholds[0].max_pending_requests", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.http.http2MaxRequests", envoy: "cluster.circuit_breakers.thresholds[0].max_requests", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.http.maxRequestsPerConnection", envoy: "cluster.typed_extension_protocol_options[HttpProtocolOptions].common_http_protocol_options.max_requests_per_connection", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.http.maxRetries", envoy: "cluster.circuit_breakers.thresholds[0].max_retries", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.connectionPool.http.idleTimeout", envoy: "cluster.typed_extension_protocol_options[HttpProtocolOptions].common_http_protocol_options.idle_timeout", istiod: "applyConnectionPool" },
    Row { istio: "trafficPolicy.outlierDetection.consecutive5xxErrors", envoy: "cluster.outlier_detection.consecutive_5xx (+ enforcing_consecutive_5xx 100)", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.outlierDetection.consecutiveGatewayErrors", envoy: "cluster.outlier_detection.consecutive_gateway_failure (+ enforcing_consecutive_gateway_failure 100)", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.outlierDetection.interval", envoy: "cluster.outlier_detection.interval", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.outlierDetection.baseEjectionTime", envoy: "cluster.outlier_detection.base_ejection_time", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.outlierDetection.maxEjectionPercent", envoy: "cluster.outlier_detection.max_ejection_percent", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.outlierDetection.minHealthPercent", envoy: "cluster.common_lb_config.healthy_panic_threshold (0 when unset)", istiod: "applyOutlierDetection" },
    Row { istio: "trafficPolicy.loadBalancer.simple", envoy: "cluster.lb_policy (LEAST_CONN → LEAST_REQUEST)", istiod: "applyLoadBalancer" },
    Row { istio: "http[].timeout", envoy: "route.timeout (0s: none, Istio's default)", istiod: "route.translateRoute" },
    Row { istio: "http[].retries.attempts", envoy: "route.retry_policy.num_retries (0: no retry policy)", istiod: "retry.ConvertPolicy" },
    Row { istio: "http[].retries.perTryTimeout", envoy: "route.retry_policy.per_try_timeout", istiod: "retry.ConvertPolicy" },
    Row { istio: "http[].retries.retryOn", envoy: "route.retry_policy.retry_on, retriable_status_codes (numbers)", istiod: "retry.ConvertPolicy" },
];

/// The outbound cluster of `name` with Istio's defaults and the given
/// endpoints (`address`, `port`).
pub fn default_cluster(name: &str, endpoints: &[(String, u16)]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(a, p)| json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}))
        .collect();
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [default_thresholds()]},
        "common_lb_config": {},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]}
    })
}

/// `getDefaultCircuitBreakerThresholds`: 2³²−1 everywhere, remaining tracked.
fn default_thresholds() -> Value {
    json!({
        "max_connections": u32::MAX,
        "max_pending_requests": u32::MAX,
        "max_requests": u32::MAX,
        "max_retries": u32::MAX,
        "track_remaining": true
    })
}

/// Istio's default outbound route action to `cluster`: no timeout and the
/// default retry policy with its host-selection retry predicate.
pub fn default_route_action(cluster: &str) -> Value {
    json!({
        "cluster": cluster,
        "timeout": "0s",
        "retry_policy": default_retry_policy()
    })
}

fn default_retry_policy() -> Value {
    json!({
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }],
        "host_selection_retry_max_attempts": 5
    })
}

/// An Istio duration (`"2s"`, `"250ms"`, `"1m"`, `"1h"`) as Envoy's
/// protobuf JSON duration (seconds with a fraction).
pub fn duration(path: &str, v: &Value) -> Result<String, Untranslated> {
    let s = v
        .as_str()
        .ok_or_else(|| untranslated(path, "a duration such as \"2s\" or \"250ms\""))?;
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .ok_or_else(|| untranslated(path, "a duration needs a unit (h, m, s, ms)"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| untranslated(path, "not a number of a duration"))?;
    let seconds = match unit {
        "h" => n * 3600.0,
        "m" => n * 60.0,
        "s" => n,
        "ms" => n / 1000.0,
        _ => return Err(untranslated(path, "the unit is one of h, m, s, ms")),
    };
    if seconds.is_nan() || seconds < 0.001 {
        return Err(untranslated(path, "must be at least 1ms"));
    }
    Ok(format!("{}s", (seconds * 1000.0).round() / 1000.0))
}

fn positive_u32(path: &str, v: &Value) -> Result<u32, Untranslated> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| untranslated(path, "a whole number ≥ 0"))
}

fn object<'a>(path: &str, v: &'a Value) -> Result<&'a Map<String, Value>, Untranslated> {
    v.as_object().ok_or_else(|| untranslated(path, "an object"))
}

/// Every key of `fields` must be one of `known`; the first that is not is
/// reported by its path.
fn only(path: &str, fields: &Map<String, Value>, known: &[&str]) -> Result<(), Untranslated> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(untranslated(
            &format!("{path}.{k}"),
            "not translated by the lab's control plane",
        )),
        None => Ok(()),
    }
}

fn http_options(cluster: &mut Value) -> &mut Value {
    let opts = &mut cluster["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS];
    if opts.is_null() {
        *opts = json!({
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}}
        });
    }
    &mut opts["common_http_protocol_options"]
}

/// Applies a DestinationRule's `spec` to the service's outbound cluster, as
/// istiod does (`applyTrafficPolicy` for an outbound cluster).
pub fn apply_destination_rule(cluster: &mut Value, spec: &Value) -> Result<(), Untranslated> {
    let spec = object("spec", spec)?;
    only("spec", spec, &["host", "trafficPolicy", "exportTo"])?;
    let Some(tp) = spec.get("trafficPolicy") else {
        return Ok(());
    };
    let tp = object("spec.trafficPolicy", tp)?;
    only(
        "spec.trafficPolicy",
        tp,
        &["connectionPool", "outlierDetection", "loadBalancer"],
    )?;
    if let Some(pool) = tp.get("connectionPool") {
        let at = "spec.trafficPolicy.connectionPool";
        let pool = object(at, pool)?;
        only(at, pool, &["tcp", "http"])?;
        // A connection pool replaces the thresholds with the defaults plus
        // what it sets; the connect timeout is the mesh's unless it sets one.
        let mut t = default_thresholds();
        cluster["connect_timeout"] = json!(DEFAULT_CONNECT_TIMEOUT);
        if let Some(http) = pool.get("http") {
            let at = "spec.trafficPolicy.connectionPool.http";
            let http = object(at, http)?;
            only(
                at,
                http,
                &[
                    "http1MaxPendingRequests",
                    "http2MaxRequests",
                    "maxRequestsPerConnection",
                    "maxRetries",
                    "idleTimeout",
                ],
            )?;
            for (field, envoy) in [
                ("http2MaxRequests", "max_requests"),
                ("http1MaxPendingRequests", "max_pending_requests"),
                ("maxRetries", "max_retries"),
            ] {
                if let Some(v) = http.get(field) {
                    let n = positive_u32(&format!("{at}.{field}"), v)?;
                    // istiod: zero cannot be told from unset, so it keeps the default.
                    if n > 0 {
                        t[envoy] = json!(n);
                    }
                }
            }
            if let Some(v) = http.get("maxRequestsPerConnection") {
                let n = positive_u32(&format!("{at}.maxRequestsPerConnection"), v)?;
                if n > 0 {
                    http_options(cluster)["max_requests_per_connection"] = json!(n);
                }
            }
            if let Some(v) = http.get("idleTimeout") {
                http_options(cluster)["idle_timeout"] =
                    json!(duration(&format!("{at}.idleTimeout"), v)?);
            }
        }
        if let Some(tcp) = pool.get("tcp") {
            let at = "spec.trafficPolicy.connectionPool.tcp";
            let tcp = object(at, tcp)?;
            only(at, tcp, &["maxConnections", "connectTimeout"])?;
            if let Some(v) = tcp.get("maxConnections") {
                let n = positive_u32(&format!("{at}.maxConnections"), v)?;
                if n > 0 {
                    t["max_connections"] = json!(n);
                }
            }
            if let Some(v) = tcp.get("connectTimeout") {
                cluster["connect_timeout"] = json!(duration(&format!("{at}.connectTimeout"), v)?);
            }
        }
        cluster["circuit_breakers"] = json!({"thresholds": [t]});
    }
    if let Some(od) = tp.get("outlierDetection") {
        let at = "spec.trafficPolicy.outlierDetection";
        let od = object(at, od)?;
        only(
            at,
            od,
            &[
                "consecutive5xxErrors",
                "consecutiveGatewayErrors",
                "interval",
                "baseEjectionTime",
                "maxEjectionPercent",
                "minHealthPercent",
            ],
        )?;
        // Success-rate ejection is off; each consecutive count is enforced
        // fully when set above zero.
        let mut out = json!({"enforcing_success_rate": 0});
        for (field, count, enforcing) in [
            (
                "consecutive5xxErrors",
                "consecutive_5xx",
                "enforcing_consecutive_5xx",
            ),
            (
                "consecutiveGatewayErrors",
                "consecutive_gateway_failure",
                "enforcing_consecutive_gateway_failure",
            ),
        ] {
            if let Some(v) = od.get(field) {
                let n = positive_u32(&format!("{at}.{field}"), v)?;
                out[count] = json!(n);
                out[enforcing] = json!(if n > 0 { 100 } else { 0 });
            }
        }
        for (field, envoy) in [
            ("interval", "interval"),
            ("baseEjectionTime", "base_ejection_time"),
        ] {
            if let Some(v) = od.get(field) {
                out[envoy] = json!(duration(&format!("{at}.{field}"), v)?);
            }
        }
        if let Some(v) = od.get("maxEjectionPercent") {
            let n = positive_u32(&format!("{at}.maxEjectionPercent"), v)?;
            if n > 100 {
                return Err(untranslated(
                    &format!("{at}.maxEjectionPercent"),
                    "at most 100",
                ));
            }
            if n > 0 {
                out["max_ejection_percent"] = json!(n);
            }
        }
        // istiod sets the panic threshold whenever outlier detection is
        // given: minHealthPercent, 0 when unset (panic mode off).
        let min_health = match od.get("minHealthPercent") {
            Some(v) => positive_u32(&format!("{at}.minHealthPercent"), v)?,
            None => 0,
        };
        cluster["common_lb_config"]["healthy_panic_threshold"] = json!({"value": min_health});
        cluster["outlier_detection"] = out;
    }
    if let Some(lb) = tp.get("loadBalancer") {
        let at = "spec.trafficPolicy.loadBalancer";
        let lb = object(at, lb)?;
        only(at, lb, &["simple"])?;
        if let Some(simple) = lb.get("simple") {
            cluster["lb_policy"] = json!(match simple.as_str() {
                Some("ROUND_ROBIN") => "ROUND_ROBIN",
                Some("LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED") => "LEAST_REQUEST",
                Some("RANDOM") => "RANDOM",
                _ => {
                    return Err(untranslated(
                        &format!("{at}.simple"),
                        "one of ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM",
                    ));
                }
            });
        }
    }
    Ok(())
}

/// Applies one `http[]` entry of a VirtualService (its timeout and
/// retries) to the route action Istio's defaults made.
pub fn apply_http_route(action: &mut Value, http: &Value, at: &str) -> Result<(), Untranslated> {
    let http = object(at, http)?;
    only(at, http, &["name", "route", "timeout", "retries"])?;
    if let Some(route) = http.get("route") {
        let routes = route
            .as_array()
            .ok_or_else(|| untranslated(&format!("{at}.route"), "a list"))?;
        if routes.len() != 1
            || routes[0].get("weight").is_some()
            || routes[0]["destination"].get("subset").is_some()
        {
            return Err(untranslated(
                &format!("{at}.route"),
                "one destination without subset or weight (subsets are not translated yet)",
            ));
        }
    }
    if let Some(t) = http.get("timeout") {
        action["timeout"] = json!(duration(&format!("{at}.timeout"), t)?);
    }
    if let Some(r) = http.get("retries") {
        let rat = format!("{at}.retries");
        let r = object(&rat, r)?;
        only(&rat, r, &["attempts", "perTryTimeout", "retryOn"])?;
        let attempts = match r.get("attempts") {
            Some(v) => positive_u32(&format!("{rat}.attempts"), v)?,
            None => 0,
        };
        if attempts == 0 {
            // "Configuration is explicitly disabling the retry policy."
            if let Some(a) = action.as_object_mut() {
                a.remove("retry_policy");
            }
            return Ok(());
        }
        let mut p = default_retry_policy();
        p["num_retries"] = json!(attempts);
        if let Some(on) = r.get("retryOn") {
            let on = on
                .as_str()
                .ok_or_else(|| untranslated(&format!("{rat}.retryOn"), "a comma-separated list"))?;
            let (codes, words): (Vec<&str>, Vec<&str>) = on
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .partition(|s| s.parse::<u32>().is_ok());
            let mut retry_on = words.join(",");
            if !codes.is_empty() {
                if !retry_on.contains("retriable-status-codes") {
                    if !retry_on.is_empty() {
                        retry_on.push(',');
                    }
                    retry_on.push_str("retriable-status-codes");
                }
                p["retriable_status_codes"] = json!(codes
                    .iter()
                    .filter_map(|c| c.parse::<u32>().ok())
                    .collect::<Vec<_>>());
            }
            p["retry_on"] = json!(retry_on);
        }
        if let Some(t) = r.get("perTryTimeout") {
            p["per_try_timeout"] = json!(duration(&format!("{rat}.perTryTimeout"), t)?);
        }
        action["retry_policy"] = p;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_envoys() {
        assert_eq!(duration("x", &json!("2s")).unwrap(), "2s");
        assert_eq!(duration("x", &json!("250ms")).unwrap(), "0.25s");
        assert_eq!(duration("x", &json!("1m")).unwrap(), "60s");
        assert_eq!(duration("x", &json!("2")).unwrap_err().path, "x");
    }

    #[test]
    fn an_untranslated_field_is_named_by_its_path() {
        let mut c = default_cluster("c", &[]);
        let e = apply_destination_rule(
            &mut c,
            &json!({"host": "r", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.trafficPolicy.tls");
        let e = apply_destination_rule(
            &mut c,
            &json!({"host": "r", "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}}}),
        )
        .unwrap_err();
        assert_eq!(
            e.path,
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy"
        );
        let mut a = default_route_action("c");
        let e = apply_http_route(
            &mut a,
            &json!({"retries": {"attempts": 2, "retryRemoteLocalities": true}}),
            "spec.http[0]",
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.http[0].retries.retryRemoteLocalities");
    }

    #[test]
    fn retry_on_numbers_become_retriable_status_codes() {
        let mut a = default_route_action("c");
        apply_http_route(
            &mut a,
            &json!({"retries": {"attempts": 3, "retryOn": "gateway-error,503"}}),
            "h",
        )
        .unwrap();
        assert_eq!(
            a["retry_policy"]["retry_on"],
            "gateway-error,retriable-status-codes"
        );
        assert_eq!(a["retry_policy"]["retriable_status_codes"], json!([503]));
        assert_eq!(a["retry_policy"]["num_retries"], 3);
        apply_http_route(&mut a, &json!({"retries": {"attempts": 0}}), "h").unwrap();
        assert!(
            a.get("retry_policy").is_none(),
            "attempts 0 disables retries"
        );
    }
}
