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
    Row { istio: "trafficPolicy.loadBalancer.localityLbSetting.distribute", envoy: "cluster.load_assignment.endpoints[].load_balancing_weight (+ common_lb_config.locality_weighted_lb_config)", istiod: "loadbalancer.applyLocalityWeights" },
    Row { istio: "trafficPolicy.loadBalancer.localityLbSetting.failover", envoy: "cluster.load_assignment.endpoints[].priority (also by nearness alone whenever outlier detection is on)", istiod: "loadbalancer.applyLocalityFailover" },
    Row { istio: "subsets[].name, subsets[].labels, subsets[].trafficPolicy", envoy: "cluster outbound|PORT|SUBSET|HOST: the endpoints with those labels, the rule's policy merged with the subset's", istiod: "ClusterBuilder.buildSubsetCluster, model.MergeTrafficPolicy" },
    Row { istio: "http[].timeout", envoy: "route.timeout (0s: none, Istio's default)", istiod: "route.translateRoute" },
    Row { istio: "http[].retries.attempts", envoy: "route.retry_policy.num_retries (0: no retry policy)", istiod: "retry.ConvertPolicy" },
    Row { istio: "http[].retries.perTryTimeout", envoy: "route.retry_policy.per_try_timeout", istiod: "retry.ConvertPolicy" },
    Row { istio: "http[].retries.retryOn", envoy: "route.retry_policy.retry_on, retriable_status_codes (numbers)", istiod: "retry.ConvertPolicy" },
    Row { istio: "http[].route[].destination.subset, route[].weight", envoy: "route.cluster (one destination) or route.weighted_clusters.clusters[] (name, weight; weight 0 left out)", istiod: "route.applyHTTPRouteDestination, processWeightedDestination" },
];

/// One endpoint of a service, as istiod sees its pod: address, the
/// `version` label and the locality (`region/zone/subzone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub version: String,
    pub locality: String,
}

impl Endpoint {
    /// A replica on loopback, version v1, in the lab's default locality.
    pub fn local(port: u16) -> Endpoint {
        Endpoint {
            address: "127.0.0.1".into(),
            port,
            version: "v1".into(),
            locality: crate::services::DEFAULT_LOCALITY.into(),
        }
    }
}

/// Envoy's `Locality` for Istio's `region/zone/subzone`.
pub fn locality_json(locality: &str) -> Value {
    let (region, zone, sub_zone) = split_locality(locality);
    json!({"region": region, "zone": zone, "sub_zone": sub_zone})
}

fn split_locality(l: &str) -> (&str, &str, &str) {
    let mut p = l.splitn(3, '/');
    (
        p.next().unwrap_or(""),
        p.next().unwrap_or(""),
        p.next().unwrap_or(""),
    )
}

/// The outbound cluster of `name` with Istio's defaults and the given
/// endpoints, one locality group per locality in order of appearance (as
/// EDS sends them), all at priority 0.
pub fn default_cluster(name: &str, endpoints: &[Endpoint]) -> Value {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for e in endpoints {
        let lb = json!({"endpoint": {"address": {"socket_address": {"address": e.address, "port_value": e.port}}}});
        match groups.iter_mut().find(|(l, _)| *l == e.locality) {
            Some((_, v)) => v.push(lb),
            None => groups.push((e.locality.clone(), vec![lb])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(l, lb)| json!({"locality": locality_json(&l), "lb_endpoints": lb}))
        .collect();
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [default_thresholds()]},
        "common_lb_config": {},
        "load_assignment": {"cluster_name": name, "endpoints": groups}
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
/// istiod does (`applyTrafficPolicy` for an outbound cluster) for a sidecar
/// in `proxy_locality`. Its subsets are clusters of their own
/// ([`subset_clusters`]).
pub fn apply_destination_rule(
    cluster: &mut Value,
    spec: &Value,
    proxy_locality: &str,
) -> Result<(), Untranslated> {
    let spec = object("spec", spec)?;
    only(
        "spec",
        spec,
        &["host", "trafficPolicy", "exportTo", "subsets"],
    )?;
    apply_traffic_policy(
        cluster,
        spec.get("trafficPolicy"),
        "spec.trafficPolicy",
        proxy_locality,
    )
}

/// The cluster name of `subset` of the service whose default cluster is
/// `outbound|PORT||HOST`: `outbound|PORT|SUBSET|HOST`.
pub fn subset_cluster_name(cluster: &str, subset: &str) -> String {
    cluster.replacen("||", &format!("|{subset}|"), 1)
}

/// The clusters of a DestinationRule's subsets (`buildSubsetCluster`):
/// each holds the endpoints whose labels match the subset's, with the
/// rule's traffic policy merged with the subset's (`MergeTrafficPolicy`: a
/// part the subset sets replaces the rule's). The lab's pods carry the
/// labels `app` and `version`.
pub fn subset_clusters(
    cluster: &str,
    service: &str,
    endpoints: &[Endpoint],
    spec: &Value,
    proxy_locality: &str,
) -> Result<Vec<Value>, Untranslated> {
    let Some(subsets) = spec.get("subsets") else {
        return Ok(vec![]);
    };
    let subsets = subsets
        .as_array()
        .ok_or_else(|| untranslated("spec.subsets", "a list"))?;
    let mut out = Vec::new();
    for (i, sub) in subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        let sub = object(&at, sub)?;
        only(&at, sub, &["name", "labels", "trafficPolicy"])?;
        let name = sub
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| untranslated(&format!("{at}.name"), "a name"))?;
        let labels = match sub.get("labels") {
            Some(l) => object(&format!("{at}.labels"), l)?.clone(),
            None => Map::new(),
        };
        let matches = |e: &Endpoint| {
            labels.iter().all(|(k, v)| match k.as_str() {
                "version" => v.as_str() == Some(e.version.as_str()),
                "app" => v.as_str() == Some(service),
                _ => false,
            })
        };
        let picked: Vec<Endpoint> = endpoints.iter().filter(|e| matches(e)).cloned().collect();
        let sub_name = subset_cluster_name(cluster, name);
        let mut c = default_cluster(&sub_name, &picked);
        let mut tp = spec
            .get("trafficPolicy")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(own) = sub.get("trafficPolicy") {
            for (k, v) in object(&format!("{at}.trafficPolicy"), own)? {
                tp.insert(k.clone(), v.clone());
            }
        }
        let merged = Value::Object(tp);
        apply_traffic_policy(
            &mut c,
            Some(&merged),
            &format!("{at}.trafficPolicy"),
            proxy_locality,
        )?;
        out.push(c);
    }
    Ok(out)
}

/// The subsets a DestinationRule `spec` names.
pub fn subset_names(spec: &Value) -> Vec<String> {
    spec["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

/// Applies a `trafficPolicy` (at path `at`) to an outbound cluster.
pub fn apply_traffic_policy(
    cluster: &mut Value,
    tp: Option<&Value>,
    at_tp: &str,
    proxy_locality: &str,
) -> Result<(), Untranslated> {
    let Some(tp) = tp else {
        return Ok(());
    };
    let tp = object(at_tp, tp)?;
    only(
        at_tp,
        tp,
        &["connectionPool", "outlierDetection", "loadBalancer"],
    )?;
    if let Some(pool) = tp.get("connectionPool") {
        let at = &format!("{at_tp}.connectionPool");
        let pool = object(at, pool)?;
        only(at, pool, &["tcp", "http"])?;
        // A connection pool replaces the thresholds with the defaults plus
        // what it sets; the connect timeout is the mesh's unless it sets one.
        let mut t = default_thresholds();
        cluster["connect_timeout"] = json!(DEFAULT_CONNECT_TIMEOUT);
        if let Some(http) = pool.get("http") {
            let at = &format!("{at_tp}.connectionPool.http");
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
            let at = &format!("{at_tp}.connectionPool.tcp");
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
        let at = &format!("{at_tp}.outlierDetection");
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
        let at = &format!("{at_tp}.loadBalancer");
        let lb = object(at, lb)?;
        only(at, lb, &["simple", "localityLbSetting"])?;
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
    // Locality: the rule's setting, else the mesh's default (enabled),
    // applied after outlier detection, on which failover depends.
    let setting = tp
        .get("loadBalancer")
        .and_then(|lb| lb.get("localityLbSetting"));
    apply_locality(
        cluster,
        setting,
        &format!("{at_tp}.loadBalancer.localityLbSetting"),
        proxy_locality,
    )?;
    Ok(())
}

fn locality_matches(pattern: &str, l: (&str, &str, &str)) -> bool {
    // `util.LocalityMatch`: region must match (or `*`); zone and subzone
    // match when empty or `*`.
    let (r, z, s) = split_locality(pattern);
    (r == "*" || r == l.0)
        && (z.is_empty() || z == "*" || z == l.1)
        && (s.is_empty() || s == "*" || s == l.2)
}

fn group_locality(g: &Value) -> (String, String, String) {
    let l = &g["locality"];
    let f = |k: &str| l[k].as_str().unwrap_or("").to_owned();
    (f("region"), f("zone"), f("sub_zone"))
}

/// `LocalityLBSettings.ApplyToCluster` for a sidecar in `proxy_locality`:
/// `distribute` sets locality weights (`applyLocalityWeights`: the first
/// entry whose `from` matches the sidecar; localities it does not name get
/// no traffic); otherwise, when outlier detection is on, endpoints are
/// ranked into priorities by nearness, with `failover` naming the region
/// to fail over to (`applyLocalityFailover`).
pub fn apply_locality(
    cluster: &mut Value,
    setting: Option<&Value>,
    at: &str,
    proxy_locality: &str,
) -> Result<(), Untranslated> {
    let empty = Map::new();
    let setting = match setting {
        Some(v) => object(at, v)?,
        None => &empty,
    };
    only(at, setting, &["enabled", "distribute", "failover"])?;
    if setting.get("enabled") == Some(&json!(false)) {
        return Ok(());
    }
    let proxy = split_locality(proxy_locality);
    let outlier = cluster.get("outlier_detection").is_some();
    let Some(groups) = cluster["load_assignment"]["endpoints"].as_array_mut() else {
        return Ok(());
    };
    if let Some(distribute) = setting.get("distribute") {
        let list = distribute
            .as_array()
            .ok_or_else(|| untranslated(&format!("{at}.distribute"), "a list"))?;
        for (i, d) in list.iter().enumerate() {
            let dat = format!("{at}.distribute[{i}]");
            let d = object(&dat, d)?;
            only(&dat, d, &["from", "to"])?;
            let from = d.get("from").and_then(Value::as_str).unwrap_or("");
            if !locality_matches(from, proxy) {
                continue;
            }
            let to = object(&format!("{dat}.to"), d.get("to").unwrap_or(&Value::Null))?;
            let mut unmatched: Vec<bool> = vec![true; groups.len()];
            for (pattern, weight) in to {
                let w = positive_u32(&format!("{dat}.to.{pattern}"), weight)?;
                let hit: Vec<usize> = (0..groups.len())
                    .filter(|&g| {
                        let (r, z, s) = group_locality(&groups[g]);
                        unmatched[g] && locality_matches(pattern, (&r, &z, &s))
                    })
                    .collect();
                let total = hit.len() as f64;
                for g in hit {
                    unmatched[g] = false;
                    // Every group weighs 1 before (one per locality).
                    let share = f64::from(w) / total;
                    if share > 0.0 {
                        groups[g]["load_balancing_weight"] = json!(share.ceil() as u32);
                    }
                }
            }
            for (g, left) in unmatched.iter().enumerate() {
                if *left {
                    groups[g]["lb_endpoints"] = json!([]);
                }
            }
            break;
        }
        cluster["common_lb_config"]["locality_weighted_lb_config"] = json!({});
        return Ok(());
    }
    if !outlier {
        return Ok(());
    }
    let mut failover = Vec::new();
    if let Some(f) = setting.get("failover") {
        let list = f
            .as_array()
            .ok_or_else(|| untranslated(&format!("{at}.failover"), "a list"))?;
        for (i, e) in list.iter().enumerate() {
            let fat = format!("{at}.failover[{i}]");
            let e = object(&fat, e)?;
            only(&fat, e, &["from", "to"])?;
            let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            failover.push((get("from"), get("to")));
        }
        cluster["common_lb_config"]["locality_weighted_lb_config"] = json!({});
    }
    let Some(groups) = cluster["load_assignment"]["endpoints"].as_array_mut() else {
        return Ok(());
    };
    let mut raw: Vec<u32> = Vec::new();
    for g in groups.iter() {
        let (r, z, s) = group_locality(g);
        // `util.LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 other.
        let mut p = if r != proxy.0 {
            3
        } else if z != proxy.1 {
            2
        } else if s != proxy.2 {
            1
        } else {
            0
        };
        if p == 3 {
            if let Some((_, to)) = failover.iter().find(|(from, _)| from == proxy.0) {
                if *to != r {
                    p = 4;
                }
            }
        }
        raw.push(p);
    }
    // Priorities renumbered densely from 0, as Envoy requires.
    let mut distinct = raw.clone();
    distinct.sort_unstable();
    distinct.dedup();
    for (g, p) in groups.iter_mut().zip(raw) {
        let dense = distinct.iter().position(|d| *d == p).unwrap_or(0);
        if dense > 0 {
            g["priority"] = json!(dense);
        }
    }
    Ok(())
}

/// What a VirtualService's routes may point at: the service's default
/// cluster, its host in full and its namespace, and the subsets its
/// DestinationRule defines.
#[derive(Debug, Clone, Default)]
pub struct RouteTarget {
    pub cluster: String,
    pub host: String,
    pub namespace: String,
    pub subsets: Vec<String>,
}

/// Applies one `http[]` entry of a VirtualService (destinations, timeout,
/// retries) to the route action Istio's defaults made.
pub fn apply_http_route(
    action: &mut Value,
    http: &Value,
    at: &str,
    target: &RouteTarget,
) -> Result<(), Untranslated> {
    let http = object(at, http)?;
    only(at, http, &["name", "route", "timeout", "retries"])?;
    if let Some(route) = http.get("route") {
        let routes = route
            .as_array()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| untranslated(&format!("{at}.route"), "a list of destinations"))?;
        let mut weighted = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let rat = format!("{at}.route[{i}]");
            let r = object(&rat, r)?;
            only(&rat, r, &["destination", "weight"])?;
            let dat = format!("{rat}.destination");
            let d = object(&dat, r.get("destination").unwrap_or(&Value::Null))?;
            only(&dat, d, &["host", "subset", "port"])?;
            let host = d.get("host").and_then(Value::as_str).unwrap_or("");
            if meshtune_agent::plan::qualify_host(host, &target.namespace) != target.host {
                return Err(untranslated(
                    &format!("{dat}.host"),
                    &format!(
                        "routes to another service than {} are not translated",
                        target.host
                    ),
                ));
            }
            let cluster = match d.get("subset").and_then(Value::as_str) {
                Some(sub) if target.subsets.iter().any(|s| s == sub) => {
                    subset_cluster_name(&target.cluster, sub)
                }
                Some(sub) => {
                    return Err(untranslated(
                        &format!("{dat}.subset"),
                        &format!(
                            "no DestinationRule for {} defines subset {sub}",
                            target.host
                        ),
                    ))
                }
                None => target.cluster.clone(),
            };
            let weight = match r.get("weight") {
                Some(w) => positive_u32(&format!("{rat}.weight"), w)?,
                None => 0,
            };
            weighted.push((cluster, weight));
        }
        if let [(cluster, _)] = weighted.as_slice() {
            action["cluster"] = json!(cluster);
        } else {
            // Several destinations: weighted clusters, weight 0 left out.
            let clusters: Vec<Value> = weighted
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(c, w)| json!({"name": c, "weight": w}))
                .collect();
            if clusters.is_empty() {
                return Err(untranslated(&format!("{at}.route"), "every weight is 0"));
            }
            if let Some(a) = action.as_object_mut() {
                a.remove("cluster");
            }
            action["weighted_clusters"] = json!({"clusters": clusters});
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

    const LOCAL: &str = "region1/zone1/sub1";
    const CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";

    fn target() -> RouteTarget {
        RouteTarget {
            cluster: CLUSTER.into(),
            host: "reviews.bookinfo.svc.cluster.local".into(),
            namespace: "bookinfo".into(),
            subsets: vec!["v1".into(), "v3".into()],
        }
    }

    fn at(port: u16, version: &str, locality: &str) -> Endpoint {
        Endpoint {
            address: "127.0.0.1".into(),
            port,
            version: version.into(),
            locality: locality.into(),
        }
    }

    /// reviews v1 and v2 beside the caller, v3 in another zone, v4 in another region.
    fn reviews() -> Vec<Endpoint> {
        vec![
            at(1, "v1", LOCAL),
            at(2, "v2", LOCAL),
            at(3, "v3", "region1/zone2/sub1"),
            at(4, "v4", "region2/zone1/sub1"),
        ]
    }

    fn priorities(c: &Value) -> Vec<u64> {
        c["load_assignment"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["priority"].as_u64().unwrap_or(0))
            .collect()
    }

    #[test]
    fn endpoints_are_grouped_by_locality_at_one_priority_without_outlier_detection() {
        let mut c = default_cluster(CLUSTER, &reviews());
        apply_destination_rule(&mut c, &json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}), LOCAL).unwrap();
        assert_eq!(priorities(&c), vec![0, 0, 0]);
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(c["common_lb_config"]
            .get("locality_weighted_lb_config")
            .is_none());
    }

    #[test]
    fn outlier_detection_turns_on_failover_by_nearness_and_failover_names_the_region() {
        let od = json!({"consecutive5xxErrors": 5});
        let mut c = default_cluster(CLUSTER, &reviews());
        apply_destination_rule(
            &mut c,
            &json!({"host": "reviews", "trafficPolicy": {"outlierDetection": od}}),
            LOCAL,
        )
        .unwrap();
        // Same subzone, same region other zone, other region.
        assert_eq!(priorities(&c), vec![0, 1, 2]);
        let mut far = reviews();
        far.push(at(5, "v5", "region3/zone1/sub1"));
        let mut c = default_cluster(CLUSTER, &far);
        apply_destination_rule(
            &mut c,
            &json!({"host": "reviews", "trafficPolicy": {"outlierDetection": od}}),
            LOCAL,
        )
        .unwrap();
        assert_eq!(priorities(&c), vec![0, 1, 2, 2], "other regions rank alike");
        let mut c = default_cluster(CLUSTER, &far);
        apply_destination_rule(&mut c, &json!({"host": "reviews", "trafficPolicy": {"outlierDetection": od,
            "loadBalancer": {"localityLbSetting": {"failover": [{"from": "region1", "to": "region3"}]}}}}), LOCAL).unwrap();
        // region3 is the failover target: region2 is ranked after it.
        assert_eq!(priorities(&c), vec![0, 1, 3, 2]);
        assert!(c["common_lb_config"]
            .get("locality_weighted_lb_config")
            .is_some());
        let mut c = default_cluster(CLUSTER, &reviews());
        apply_destination_rule(
            &mut c,
            &json!({"host": "reviews", "trafficPolicy": {"outlierDetection": od,
            "loadBalancer": {"localityLbSetting": {"enabled": false}}}}),
            LOCAL,
        )
        .unwrap();
        assert_eq!(priorities(&c), vec![0, 0, 0]);
    }

    #[test]
    fn distribute_weighs_the_localities_it_names_and_drops_the_rest() {
        let mut c = default_cluster(CLUSTER, &reviews());
        apply_destination_rule(&mut c, &json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {"distribute": [
            {"from": "region9/*", "to": {"region1/*": 100}},
            {"from": "region1/zone1/*", "to": {"region1/zone1/*": 80, "region1/zone2/*": 20}}
        ]}}}}), LOCAL).unwrap();
        let g = &c["load_assignment"]["endpoints"];
        assert_eq!(g[0]["load_balancing_weight"], 80);
        assert_eq!(g[1]["load_balancing_weight"], 20);
        assert_eq!(g[2]["lb_endpoints"], json!([]));
        assert_eq!(
            c["common_lb_config"]["locality_weighted_lb_config"],
            json!({})
        );
    }

    #[test]
    fn subsets_are_clusters_of_their_endpoints_with_the_merged_policy() {
        let spec = json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
            "connectionPool": {"http": {"http2MaxRequests": 10}}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 99}}}}]});
        let subs = subset_clusters(CLUSTER, "reviews", &reviews(), &spec, LOCAL).unwrap();
        assert_eq!(
            subs[0]["name"],
            "outbound|9080|v1|reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            subs[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            1
        );
        assert_eq!(
            subs[0]["circuit_breakers"]["thresholds"][0]["max_requests"],
            10
        );
        assert_eq!(
            subs[1]["circuit_breakers"]["thresholds"][0]["max_requests"],
            99
        );
        assert_eq!(
            subs[1]["lb_policy"], "RANDOM",
            "the rule's part the subset leaves alone"
        );
        let bad = json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"tls": {}}}]});
        assert_eq!(
            subset_clusters(CLUSTER, "reviews", &reviews(), &bad, LOCAL)
                .unwrap_err()
                .path,
            "spec.subsets[0].trafficPolicy.tls"
        );
    }

    #[test]
    fn weighted_subsets_become_weighted_clusters() {
        let mut a = default_route_action(CLUSTER);
        apply_http_route(&mut a, &json!({"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 75},
            {"destination": {"host": "reviews.bookinfo.svc.cluster.local", "subset": "v3"}, "weight": 25},
            {"destination": {"host": "reviews"}, "weight": 0}]}), "spec.http[0]", &target()).unwrap();
        assert!(a.get("cluster").is_none());
        assert_eq!(
            a["weighted_clusters"]["clusters"],
            json!([
            {"name": "outbound|9080|v1|reviews.bookinfo.svc.cluster.local", "weight": 75},
            {"name": "outbound|9080|v3|reviews.bookinfo.svc.cluster.local", "weight": 25}])
        );
        let mut a = default_route_action(CLUSTER);
        apply_http_route(
            &mut a,
            &json!({"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}),
            "h",
            &target(),
        )
        .unwrap();
        assert_eq!(
            a["cluster"],
            "outbound|9080|v3|reviews.bookinfo.svc.cluster.local"
        );
        let e = apply_http_route(
            &mut a,
            &json!({"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}),
            "spec.http[0]",
            &target(),
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.http[0].route[0].destination.subset");
        let e = apply_http_route(
            &mut a,
            &json!({"route": [{"destination": {"host": "ratings"}}]}),
            "spec.http[0]",
            &target(),
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.http[0].route[0].destination.host");
    }

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
            LOCAL,
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.trafficPolicy.tls");
        let e = apply_destination_rule(
            &mut c,
            &json!({"host": "r", "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}}}),
            LOCAL,
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
            &target(),
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
            &target(),
        )
        .unwrap();
        assert_eq!(
            a["retry_policy"]["retry_on"],
            "gateway-error,retriable-status-codes"
        );
        assert_eq!(a["retry_policy"]["retriable_status_codes"], json!([503]));
        assert_eq!(a["retry_policy"]["num_retries"], 3);
        apply_http_route(&mut a, &json!({"retries": {"attempts": 0}}), "h", &target()).unwrap();
        assert!(
            a.get("retry_policy").is_none(),
            "attempts 0 disables retries"
        );
    }
}
