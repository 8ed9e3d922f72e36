//! The agent's decisions reach traffic: with tuning on, the agent writes
//! DestinationRules through its directory sink (`apply` mode), and the lab's
//! control plane applies them to the sidecars, where `/config_dump` shows
//! them. A user's own rule for a host, put into the lab's Istio directory,
//! is applied instead, and the agent writes nothing for that host.
//!
//! Needs Envoy and the built filter, like the end-to-end tests.

use meshtune_lab::load::closed_loop;
use meshtune_lab::mesh::{Mesh, MeshOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The outbound cluster `name` as productpage's sidecar runs it.
fn cluster_in_force(mesh: &Mesh, name: &str) -> Value {
    meshtune_lab::envoy::cluster_in_force(mesh.envoys["productpage"].admin_port, name)
}

/// The route action for `service` in productpage's sidecar.
fn route_in_force(mesh: &Mesh, service: &str) -> Value {
    let admin = mesh.envoys["productpage"].admin_port;
    let (_, body) = meshtune_lab::http::get_blocking(admin, "/config_dump").unwrap_or_default();
    let dump: Value = serde_json::from_str(&body).unwrap_or_default();
    let host = format!("{service}.bookinfo.svc.cluster.local:9080");
    for c in dump["configs"].as_array().into_iter().flatten() {
        for r in c["dynamic_route_configs"].as_array().into_iter().flatten() {
            for vh in r["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if vh["name"] == host.as_str() {
                    return vh["routes"][0]["route"].clone();
                }
            }
        }
    }
    Value::Null
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_destination_rules_reach_the_sidecars_and_a_users_rule_wins() {
    let user = tempfile::tempdir().unwrap();
    std::fs::write(
        user.path().join("details.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: details-by-team\n  namespace: bookinfo\nspec:\n  host: details\n  trafficPolicy:\n    connectionPool:\n      http:\n        maxRetries: 7\n",
    )
    .unwrap();
    let mesh = Mesh::start(MeshOptions {
        tune: true,
        agent_window_secs: 30,
        istio_config_dir: Some(user.path().to_path_buf()),
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let reviews = "outbound|9080||reviews.bookinfo.svc.cluster.local";
    let details = "outbound|9080||details.bookinfo.svc.cluster.local";
    // Before the agent has decided anything: Istio's defaults, and the user's rule.
    assert_eq!(
        cluster_in_force(&mesh, reviews)["circuit_breakers"]["thresholds"][0]["max_requests"],
        u32::MAX,
        "Istio's default pool"
    );
    assert_eq!(
        cluster_in_force(&mesh, details)["circuit_breakers"]["thresholds"][0]["max_retries"],
        7,
        "the user's rule is applied"
    );
    // Traffic, so the agent has something to decide from.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut in_force, mut written) = (Value::Null, Vec::new());
    while Instant::now() < deadline {
        let plan: Vec<String> = (0..40)
            .map(|i| {
                if i % 3 == 0 {
                    "/api/v1/ratings/1".into()
                } else {
                    "/productpage".into()
                }
            })
            .collect();
        let out = closed_loop(mesh.entry_port, plan, 4, "tune").await;
        assert!(
            out.iter().all(|o| o.status == 200),
            "requests failed while tuning"
        );
        written = std::fs::read_dir(&mesh.desired_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        in_force = cluster_in_force(&mesh, reviews);
        if in_force["outlier_detection"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The agent's rule for reviews is in force: its pool and outlier detection.
    let t = &in_force["circuit_breakers"]["thresholds"][0];
    assert!(
        in_force["outlier_detection"]["consecutive_5xx"]
            .as_u64()
            .is_some(),
        "{in_force}\nwritten: {written:?}"
    );
    let max_requests = t["max_requests"].as_u64().unwrap_or(0);
    assert!(
        max_requests >= 16 && max_requests < u64::from(u32::MAX),
        "{in_force}"
    );
    assert!(
        written.contains(&"bookinfo.destinationrule.reviews.yaml".to_string()),
        "{written:?}"
    );
    // The user's rule for details still wins; the agent wrote none for it.
    assert!(
        !written.contains(&"bookinfo.destinationrule.details.yaml".to_string()),
        "{written:?}"
    );
    assert_eq!(
        cluster_in_force(&mesh, details)["circuit_breakers"]["thresholds"][0]["max_retries"],
        7
    );
    let (_, recs) = meshtune_lab::http::get_blocking(mesh.agent_port, "/v1/recommendations")
        .unwrap_or_default();
    let recs: Value = serde_json::from_str(&recs).unwrap_or_default();
    assert_eq!(
        recs["conflicts"]["details.bookinfo.svc.cluster.local"]["user_object"],
        "bookinfo/details-by-team",
        "{recs}"
    );
    assert!(
        mesh.control_plane.problems().is_empty(),
        "{:?}",
        mesh.control_plane.problems()
    );
    // The agent's VirtualService for reviews is in force in the route, and
    // its timeout is no shorter than any chain's budget for the hop (chain
    // requests carry the filter's own timeout header, which Envoy lets
    // override the route's; the route's is for the rest).
    let vs_file = mesh
        .desired_dir
        .join("bookinfo.virtualservice.reviews.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut route, mut vs) = (Value::Null, Value::Null);
    while Instant::now() < deadline {
        vs = std::fs::read_to_string(&vs_file)
            .ok()
            .and_then(|t| serde_yaml_ng::from_str(&t).ok())
            .unwrap_or(Value::Null);
        route = route_in_force(&mesh, "reviews");
        let written_ms = vs["spec"]["http"][0]["timeout"]
            .as_str()
            .and_then(|t| t.strip_suffix("ms")?.parse::<f64>().ok());
        let in_force_ms = route["timeout"]
            .as_str()
            .and_then(|t| t.strip_suffix('s')?.parse::<f64>().ok())
            .map(|s| s * 1000.0);
        if written_ms.is_some() && written_ms == in_force_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let timeout_ms = vs["spec"]["http"][0]["timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix("ms")?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the agent's VirtualService for reviews: {vs}\nroute {route}"));
    assert_eq!(
        route["timeout"]
            .as_str()
            .and_then(|t| t.strip_suffix('s')?.parse::<f64>().ok()),
        Some(timeout_ms as f64 / 1000.0),
        "route {route}"
    );
    assert_eq!(
        route["retry_policy"]["retry_on"],
        meshtune_agent::plan::traffic::IDEMPOTENT_SAFE_RETRY_ON,
        "route retries only where safe for any method: {route}"
    );
    let auth = format!("Bearer {}", meshtune_lab::mesh::TOKEN);
    let (_, policy) = meshtune_lab::http::request_blocking(
        mesh.agent_port,
        "GET",
        "/v1/policy",
        &[("authorization", &auth)],
        b"",
    )
    .unwrap_or_default();
    let policy: Value = serde_json::from_str(&policy).unwrap_or_default();
    let widest = policy["policy"]["chains"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, c)| c["hop_budget_ms"]["reviews"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("a hop budget for reviews: {policy}"));
    // Budgets move with measurements; the writer's hysteresis (20 %) lets
    // the route lag behind them by at most that much.
    assert!(
        timeout_ms as f64 * 1.2 >= widest as f64,
        "the route timeout {timeout_ms} ms follows the widest chain budget for the hop ({widest} ms)"
    );
    // A VirtualService written by hand while the lab runs is in force
    // within seconds (the agent withdraws its own for that host); one with
    // a field the control plane cannot translate is reported by its path.
    std::fs::write(
        user.path().join("details-route.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: details-by-hand\n  namespace: bookinfo\nspec:\n  hosts: [details]\n  http:\n  - route: [{destination: {host: details}}]\n    timeout: 3s\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings-mirror\n  namespace: bookinfo\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    mirror: {host: ratings}\n",
    )
    .unwrap();
    let written_at = Instant::now();
    let deadline = written_at + Duration::from_secs(20);
    while route_in_force(&mesh, "details")["timeout"] != "3s" {
        assert!(
            Instant::now() < deadline,
            "the hand-written VirtualService is not in force: {}",
            route_in_force(&mesh, "details")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "a hand-written VirtualService was in force after {:.1} s",
        written_at.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mesh
        .control_plane
        .problems()
        .iter()
        .any(|p| p.contains("details-route.yaml") && p.contains("spec.http[0].mirror"))
    {
        assert!(
            Instant::now() < deadline,
            "the untranslatable field is reported by its path: {:?}",
            mesh.control_plane.problems()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The live view's line for reviews shows the agent's values.
    let (line, _) = mesh.control_plane.in_force()["reviews"].clone();
    assert!(
        line.contains("eject after") && !line.starts_with("pool ∞"),
        "{line}"
    );
}

/// One request from productpage's app to ratings through its sidecar's
/// outbound listener: its status, and how long it took.
fn call_ratings(mesh: &Mesh, headers: &[(&str, &str)]) -> (u16, Duration) {
    let port = mesh.outbound_ports["productpage"];
    let mut h = vec![("host", "ratings")];
    h.extend_from_slice(headers);
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| {
        meshtune_lab::http::request_full_blocking(port, "GET", "/ratings/0", &h, b"")
    });
    (r.map_or(0, |(s, _, _)| s), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_owns_chain_timeouts_and_the_agents_route_owns_the_rest() {
    let mut mesh = Mesh::start(MeshOptions {
        tune: true,
        control: true,
        agent_window_secs: 30,
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Traffic on both chains until the agent's route for ratings is in force.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut route = Value::Null;
    while Instant::now() < deadline {
        let plan: Vec<String> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    "/api/v1/ratings/1".into()
                } else {
                    "/productpage".into()
                }
            })
            .collect();
        closed_loop(mesh.entry_port, plan, 4, "own").await;
        route = route_in_force(&mesh, "ratings");
        if route["timeout"].as_str().is_some_and(|t| t != "0s") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let route_timeout = route["timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix('s')?.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("the agent's route for ratings is in force: {route}"));
    // ratings now takes far longer than any budget (its least work × 1000).
    let slow = meshtune_lab::faults::Action::SetFault(
        "ratings".into(),
        meshtune_lab::services::Fault {
            slow: 1000.0,
            ..Default::default()
        },
    );
    tokio::task::block_in_place(|| meshtune_lab::faults::apply(&mut mesh, &slow)).unwrap();
    // Outside any chain: the route's timeout cuts the request (never sooner).
    let (status, took) = call_ratings(&mesh, &[]);
    assert_eq!(status, 504, "a request on no chain times out");
    // The agent may have moved the route since it was read; Envoy's timers
    // tick in milliseconds.
    let route_timeout = route_in_force(&mesh, "ratings")["timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix('s')?.parse::<f64>().ok())
        .map_or(route_timeout, |s| {
            route_timeout.min(Duration::from_secs_f64(s))
        })
        .saturating_sub(Duration::from_millis(2));
    assert!(
        took >= route_timeout,
        "a request on no chain is cut by the route's timeout ({route_timeout:?}): after {took:?}"
    );
    // On a chain with 10 ms of its deadline left: the filter's header cuts
    // it, long before the route's timeout would.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let dl = (now_ms + 10).to_string();
    let (status, took) = call_ratings(
        &mesh,
        &[
            ("x-meshtune-chain", "ratings-api"),
            ("x-meshtune-deadline", &dl),
        ],
    );
    assert_eq!(status, 504, "the chain request times out");
    assert!(
        took < route_timeout,
        "a chain request is cut by the filter's timeout (≤ 10 ms), not the route's ({route_timeout:?}): after {took:?}"
    );
}
