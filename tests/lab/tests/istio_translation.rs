//! Every row of the lab's Istio translation, read back from a real Envoy
//! 1.40: a sidecar whose clusters and routes come from files (CDS and RDS
//! through `path_config_source`, replaced by atomic rename as the lab's
//! control plane does), first with Istio's defaults, then with a
//! DestinationRule and a VirtualService applied. Each value is checked in
//! `/config_dump`, so what Envoy runs is what istiod would have made.
//!
//! Needs Envoy (`bash scripts/setup.sh`); a missing part fails the test
//! with the command that installs it.

use meshtune_lab::envoy::{find_envoy, Envoy};
use meshtune_lab::istio::{
    apply_destination_rule, apply_http_route, default_cluster, default_route_action,
    subset_clusters, subset_names, Endpoint, RouteTarget, MAPPING,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const V1: &str = "outbound|9080|v1|reviews.bookinfo.svc.cluster.local";
const V3: &str = "outbound|9080|v3|reviews.bookinfo.svc.cluster.local";
/// The sidecar's own locality.
const HERE: &str = "region1/zone1/sub1";

/// reviews as Bookinfo ships it, here in three localities: v1 beside the
/// sidecar, v2 in another zone, v3 in another region.
fn reviews() -> Vec<Endpoint> {
    let at = |port: u16, version: &str, locality: &str| Endpoint {
        address: "127.0.0.1".into(),
        port,
        version: version.into(),
        locality: locality.into(),
    };
    vec![
        at(9, "v1", HERE),
        at(10, "v2", "region1/zone2/sub1"),
        at(11, "v3", "region2/zone1/sub1"),
    ]
}

fn target(subsets: Vec<String>) -> RouteTarget {
    RouteTarget {
        cluster: CLUSTER.into(),
        host: "reviews.bookinfo.svc.cluster.local".into(),
        namespace: "bookinfo".into(),
        subsets,
    }
}

/// The clusters istiod makes for a DestinationRule `spec`: the service's
/// and one per subset.
fn clusters_for(spec: &Value) -> Vec<Value> {
    let mut c = default_cluster(CLUSTER, &reviews());
    apply_destination_rule(&mut c, spec, HERE).unwrap();
    let mut all = vec![c];
    all.extend(subset_clusters(CLUSTER, "reviews", &reviews(), spec, HERE).unwrap());
    all
}

/// Writes `resources` as an xDS file by atomic rename.
fn write_xds(dir: &Path, file: &str, resources: Vec<Value>) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, json!({"resources": resources}).to_string()).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

fn route_config(action: &Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "9080",
        "virtual_hosts": [{"name": "reviews.bookinfo.svc.cluster.local:9080", "domains": ["reviews", "reviews:9080"],
            "routes": [{"match": {"prefix": "/"}, "route": action}]}]
    })
}

fn bootstrap(xds: &Path, admin: u16, listen: u16) -> Value {
    let source = |file: &str| {
        json!({"path_config_source": {"path": xds.join(file).display().to_string(),
            "watched_directory": {"path": xds.display().to_string()}}, "resource_api_version": "V3"})
    };
    json!({
        "node": {"id": "sidecar~127.0.0.1~productpage-1.bookinfo~bookinfo.svc.cluster.local", "cluster": "productpage.bookinfo"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {"cds_config": source("cds.json")},
        "static_resources": {"listeners": [{
            "name": "virtualOutbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "outbound_0.0.0.0_9080",
                    "rds": {"route_config_name": "9080", "config_source": source("rds.json")},
                    "http_filters": [{"name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }]}
    })
}

/// The clusters (by name) and the route action Envoy runs, from `/config_dump`.
fn in_force_all(admin: u16) -> (serde_json::Map<String, Value>, Value) {
    let (_, body) = meshtune_lab::http::get_blocking(admin, "/config_dump").unwrap_or_default();
    let dump: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut clusters = serde_json::Map::new();
    let mut action = Value::Null;
    for c in dump["configs"].as_array().into_iter().flatten() {
        for d in c["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = d["cluster"]["name"].as_str() {
                clusters.insert(name.to_owned(), d["cluster"].clone());
            }
        }
        for r in c["dynamic_route_configs"].as_array().into_iter().flatten() {
            action = r["route_config"]["virtual_hosts"][0]["routes"][0]["route"].clone();
        }
    }
    (clusters, action)
}

/// The service's cluster and the route action Envoy runs.
fn in_force(admin: u16) -> (Value, Value) {
    let (clusters, action) = in_force_all(admin);
    (
        clusters.get(CLUSTER).cloned().unwrap_or(Value::Null),
        action,
    )
}

/// A locality group's field in a cluster's dump (`priority` and
/// `load_balancing_weight` are left out when 0 or unset).
fn per_locality(c: &Value, field: &str) -> Vec<u64> {
    c["load_assignment"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| match &g[field] {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        })
        .collect()
}

/// The cluster's load-balancing policy; Envoy omits ROUND_ROBIN from its
/// dump, being the proto's default.
fn lb_policy(c: &Value) -> &str {
    c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN")
}

/// Polls until `ok` holds for what Envoy runs (the file watch takes ≤ 2 s).
fn wait_until(admin: u16, what: &str, ok: impl Fn(&Value, &Value) -> bool) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, a) = in_force(admin);
        if ok(&c, &a) {
            return (c, a);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in force within 15 s:\ncluster {c}\nroute {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_translated_field_is_in_force_in_envoy() {
    let envoy = find_envoy().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let xds = dir.path().join("xds");
    std::fs::create_dir_all(&xds).unwrap();
    let (admin, listen) = (
        meshtune_lab::mesh::free_port().unwrap(),
        meshtune_lab::mesh::free_port().unwrap(),
    );
    write_xds(&xds, "cds.json", vec![default_cluster(CLUSTER, &reviews())]);
    write_xds(
        &xds,
        "rds.json",
        vec![route_config(&default_route_action(CLUSTER))],
    );
    let _envoy = Envoy::start(
        &envoy,
        dir.path(),
        "istio",
        &bootstrap(&xds, admin, listen),
        1,
        admin,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Istio's defaults, as istiod 1.30 generates them with no DestinationRule
    // or VirtualService: the baseline users compare against.
    let (c, a) = wait_until(admin, "the defaults", |c, a| !c.is_null() && !a.is_null());
    let t = &c["circuit_breakers"]["thresholds"][0];
    for f in [
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
    ] {
        assert_eq!(t[f], json!(u32::MAX), "default {f}: {c}");
    }
    assert_eq!(t["track_remaining"], true);
    assert_eq!(lb_policy(&c), "LEAST_REQUEST");
    assert_eq!(c["connect_timeout"], "10s");
    assert!(
        c.get("outlier_detection").is_none(),
        "no outlier detection by default"
    );
    assert!(a["timeout"] == "0s", "no route timeout by default: {a}");
    let rp = &a["retry_policy"];
    assert_eq!(rp["num_retries"], 2);
    assert_eq!(
        rp["retry_on"],
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(rp["host_selection_retry_max_attempts"], "5");
    assert_eq!(
        rp["retry_host_predicate"][0]["name"],
        "envoy.retry_host_predicates.previous_hosts"
    );
    assert!(
        rp.get("retriable_status_codes").is_none(),
        "Istio 1.30 retries no status code by default"
    );
    assert_eq!(
        per_locality(&c, "priority"),
        vec![0, 0, 0],
        "every locality at one priority without outlier detection"
    );
    assert!(c["common_lb_config"]
        .get("locality_weighted_lb_config")
        .is_none());

    // One DestinationRule and one VirtualService setting every translated field.
    let dr = json!({
        "host": "reviews.bookinfo.svc.cluster.local",
        "trafficPolicy": {
            "connectionPool": {
                "tcp": {"maxConnections": 77, "connectTimeout": "250ms"},
                "http": {"http1MaxPendingRequests": 11, "http2MaxRequests": 123, "maxRequestsPerConnection": 9,
                         "maxRetries": 4, "idleTimeout": "30s"}
            },
            "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 3, "interval": "2s",
                                 "baseEjectionTime": "45s", "maxEjectionPercent": 50, "minHealthPercent": 20},
            "loadBalancer": {"simple": "ROUND_ROBIN",
                             "localityLbSetting": {"failover": [{"from": "region1", "to": "region2"}]}}
        },
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v3", "labels": {"version": "v3"},
                     "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 321}}}}]
    });
    let vs_http = json!({"timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,503"},
        "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                  {"destination": {"host": "reviews", "subset": "v3"}, "weight": 10}]});
    let mut action = default_route_action(CLUSTER);
    apply_http_route(
        &mut action,
        &vs_http,
        "spec.http[0]",
        &target(subset_names(&dr)),
    )
    .unwrap();
    write_xds(&xds, "cds.json", clusters_for(&dr));
    write_xds(&xds, "rds.json", vec![route_config(&action)]);
    let (c, a) = wait_until(admin, "the DestinationRule and VirtualService", |c, a| {
        lb_policy(c) == "ROUND_ROBIN" && a["timeout"] == "1.500s"
    });
    let (all, _) = in_force_all(admin);
    let (v1, v3) = (&all[V1], &all[V3]);
    let port_of = |c: &Value| {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"]
            .clone()
    };
    let t = &c["circuit_breakers"]["thresholds"][0];
    let opts = &c["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["common_http_protocol_options"];
    let od = &c["outlier_detection"];
    let rp = &a["retry_policy"];
    // One check per row of the mapping, named by the Istio field.
    let rows: Vec<(&str, bool)> = vec![
        (
            "trafficPolicy.connectionPool.tcp.maxConnections",
            t["max_connections"] == 77,
        ),
        (
            "trafficPolicy.connectionPool.tcp.connectTimeout",
            c["connect_timeout"] == "0.250s",
        ),
        (
            "trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            t["max_pending_requests"] == 11,
        ),
        (
            "trafficPolicy.connectionPool.http.http2MaxRequests",
            t["max_requests"] == 123,
        ),
        (
            "trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            opts["max_requests_per_connection"] == 9,
        ),
        (
            "trafficPolicy.connectionPool.http.maxRetries",
            t["max_retries"] == 4,
        ),
        (
            "trafficPolicy.connectionPool.http.idleTimeout",
            opts["idle_timeout"] == "30s",
        ),
        (
            "trafficPolicy.outlierDetection.consecutive5xxErrors",
            od["consecutive_5xx"] == 5 && od["enforcing_consecutive_5xx"] == 100,
        ),
        (
            "trafficPolicy.outlierDetection.consecutiveGatewayErrors",
            od["consecutive_gateway_failure"] == 3
                && od["enforcing_consecutive_gateway_failure"] == 100,
        ),
        (
            "trafficPolicy.outlierDetection.interval",
            od["interval"] == "2s",
        ),
        (
            "trafficPolicy.outlierDetection.baseEjectionTime",
            od["base_ejection_time"] == "45s",
        ),
        (
            "trafficPolicy.outlierDetection.maxEjectionPercent",
            od["max_ejection_percent"] == 50,
        ),
        (
            "trafficPolicy.outlierDetection.minHealthPercent",
            c["common_lb_config"]["healthy_panic_threshold"]["value"] == 20.0,
        ),
        (
            "trafficPolicy.loadBalancer.simple",
            lb_policy(&c) == "ROUND_ROBIN",
        ),
        // Checked below with a rule of its own (distribute excludes failover).
        (
            "trafficPolicy.loadBalancer.localityLbSetting.distribute",
            true,
        ),
        (
            // Nearness: same zone 0, same region 1, other region 2.
            "trafficPolicy.loadBalancer.localityLbSetting.failover",
            per_locality(&c, "priority") == vec![0, 1, 2]
                && c["common_lb_config"]
                    .get("locality_weighted_lb_config")
                    .is_some(),
        ),
        (
            "subsets[].name, subsets[].labels, subsets[].trafficPolicy",
            port_of(v1) == 9
                && port_of(v3) == 11
                && v3["circuit_breakers"]["thresholds"][0]["max_requests"] == 321
                && v1["circuit_breakers"]["thresholds"][0]["max_requests"] == 123,
        ),
        ("http[].timeout", a["timeout"] == "1.500s"),
        ("http[].retries.attempts", rp["num_retries"] == 3),
        (
            "http[].retries.perTryTimeout",
            rp["per_try_timeout"] == "0.500s",
        ),
        (
            "http[].retries.retryOn",
            rp["retry_on"] == "5xx,retriable-status-codes"
                && rp["retriable_status_codes"] == json!([503]),
        ),
        (
            "http[].route[].destination.subset, route[].weight",
            a["weighted_clusters"]["clusters"]
                == json!([{"name": V1, "weight": 90}, {"name": V3, "weight": 10}]),
        ),
    ];
    let failed: Vec<&str> = rows.iter().filter(|(_, ok)| !ok).map(|(f, _)| *f).collect();
    assert!(
        failed.is_empty(),
        "not in force: {failed:?}\ncluster {c}\nroute {a}"
    );
    // Locality weights: from the sidecar's zone, 70 to its own region's
    // localities (split between them), 30 to the other region.
    let distribute = json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
        "distribute": [{"from": "region1/zone1/*", "to": {"region1/*": 70, "region2/*": 30}}]}}}});
    write_xds(&xds, "cds.json", clusters_for(&distribute));
    let (c, _) = wait_until(admin, "locality weights", |c, _| {
        per_locality(c, "load_balancing_weight") != vec![0, 0, 0]
    });
    assert_eq!(
        per_locality(&c, "load_balancing_weight"),
        vec![35, 35, 30],
        "trafficPolicy.loadBalancer.localityLbSetting.distribute: {c}"
    );
    assert_eq!(
        c["common_lb_config"]["locality_weighted_lb_config"],
        json!({})
    );
    // The table and the checks cover the same fields.
    let mapped: Vec<&str> = MAPPING.iter().map(|r| r.istio).collect();
    let checked: Vec<&str> = rows.iter().map(|(f, _)| *f).collect();
    assert_eq!(mapped, checked, "every row of the mapping has its check");
}
