//! The leader's cluster-wide view: agents serve their window, the leader
//! lists the other agents' pods and merges their windows with its own.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http_body_util::BodyExt;
use kube::client::Body;
use meshtune_agent::k8s::peers::{fetch, merge, peer_addresses};
use meshtune_agent::{Agent, AgentConfig};
use meshtune_filter_core::builders;
use meshtune_filter_core::Report;
use serde_json::json;
use std::sync::Arc;

async fn running_agent(
    dir: &std::path::Path,
) -> (Arc<Agent>, u16, tokio::sync::watch::Sender<bool>) {
    let yaml = format!(
        "auth:\n  token: t0ken\ndata_dir: {}\nchains:\n  product:\n    slo_ms: 50\nservices:\n  reviews:\n    namespace: shop\n",
        dir.display()
    );
    let agent = Agent::open(
        AgentConfig::parse(&yaml, "peer.yaml").unwrap(),
        meshtune_agent::now_secs(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(meshtune_agent::app::serve(agent.clone(), listener, rx));
    (agent, port, stop)
}

fn report(vm: &str, n: u64) -> Report {
    let latencies: Vec<u64> = (0..n).map(|i| 1 + i % 3).collect();
    builders::report(
        vm,
        1,
        vec![builders::record("product", "reviews", &latencies).at_entry()],
    )
}

#[tokio::test]
async fn the_leader_merges_the_other_agents_windows() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _, _stop_a) = running_agent(dir_a.path()).await;
    let (b, port_b, _stop_b) = running_agent(dir_b.path()).await;
    a.lock()
        .ingest(&report("vm-a", 30), meshtune_agent::now_secs());
    b.lock()
        .ingest(&report("vm-b", 12), meshtune_agent::now_secs());

    let snap = fetch(&format!("127.0.0.1:{port_b}"), Some("t0ken"))
        .await
        .unwrap();
    assert_eq!(snap.chains["product"].end_to_end.requests, 12);
    assert!(fetch(&format!("127.0.0.1:{port_b}"), Some("wrong"))
        .await
        .unwrap_err()
        .contains("401"));

    let (mut window, secs) = a.lock().window(meshtune_agent::now_secs(), 60);
    merge(&mut window, &snap.chains);
    assert_eq!(window["product"].end_to_end.requests, 42);
    assert_eq!(
        window["product"].end_to_end.latency.count(),
        42,
        "sketches merge exactly"
    );
    let (obs, _) = meshtune_agent::plan::observe::observe(
        &window,
        secs,
        &a.chains(),
        &a.config.services,
        &a.forecast_at_longest_horizon(),
    );
    let reviews = obs.iter().find(|o| o.service == "reviews").unwrap();
    assert!((reviews.rps - 42.0 / secs).abs() < 1e-9, "{reviews:?}");
}

#[tokio::test]
async fn peers_are_the_other_running_agent_pods() {
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/api/v1/namespaces/meshtune-system/pods");
        let query = req.uri().query().unwrap_or("").to_string();
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Fname%3Dmeshtune-agent"),
            "{query}"
        );
        let _ = req.into_body().collect().await;
        let pod = |name: &str, ip: &str, phase: &str| json!({"metadata": {"name": name}, "status": {"phase": phase, "podIP": ip}});
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("a", "10.0.0.1", "Running"), pod("b", "10.0.0.2", "Running"), pod("c", "10.0.0.3", "Pending")]});
        send.send_response(
            http::Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&list).unwrap()))
                .unwrap(),
        );
    });
    let peers = peer_addresses(&client, "meshtune-system", Some("10.0.0.1"), 9090)
        .await
        .unwrap();
    assert_eq!(peers, vec!["10.0.0.2:9090".to_string()]);
    server.await.unwrap();
}
