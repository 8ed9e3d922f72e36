//! The decision log end to end: a tuning round that writes through the
//! directory sink logs each field it changed with its reason, a repeated
//! round logs nothing new, the effect is measured one window later, the
//! log survives a restart, and `/v1/decisions` filters, pages and names a
//! bad parameter.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meshtune_agent::app::api;
use meshtune_agent::app::tuner::{guard_config, Tuner};
use meshtune_agent::write::dir::DirSink;
use meshtune_agent::{Agent, AgentConfig};
use meshtune_filter_core::builders::{record, report};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

fn agent(data: &std::path::Path) -> Arc<Agent> {
    agent_with(data, "")
}

/// The test agent, with `kubernetes` settings added to `mode: apply`.
fn agent_with(data: &std::path::Path, kubernetes: &str) -> Arc<Agent> {
    let yaml = format!(
        "data_dir: {}\nwindow_seconds: 10\nchains:\n  product:\n    slo_ms: 50\nservices:\n  productpage: {{namespace: bookinfo}}\n  reviews: {{namespace: bookinfo}}\nkubernetes:\n  mode: apply\n{kubernetes}",
        data.display()
    );
    Agent::open(
        AgentConfig::parse(&yaml, "agent.yaml").unwrap(),
        meshtune_agent::now_secs(),
    )
    .unwrap()
}

fn traffic(agent: &Agent, seq: u64, now: u64, slow_ms: u64) {
    let records = vec![
        record("product", "productpage", &[20; 100]).at_entry(),
        record("product", "reviews", &[slow_ms; 100]),
    ];
    agent.lock().ingest(&report("vm", seq, records), now);
}

async fn get(agent: &Arc<Agent>, uri: &str) -> (StatusCode, serde_json::Value) {
    let resp = api::router(agent.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn each_change_is_logged_once_with_its_reason_measured_later_and_kept_across_restarts() {
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = agent(data.path());
    let mut tuner = Tuner::new(DirSink::new(out.path()).unwrap(), guard_config(&a));
    let now = meshtune_agent::now_secs();
    traffic(&a, 1, now, 10);
    let (w, secs) = a.window(now);
    tuner.round(&a, &w, secs, &BTreeSet::new(), true, now).await;

    let (status, body) = get(
        &a,
        "/v1/decisions?object=DestinationRule%20bookinfo/reviews",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let decisions = body["decisions"].as_array().unwrap();
    let pool = decisions
        .iter()
        .find(|d| d["field"] == ".spec.trafficPolicy.connectionPool.http.http2MaxRequests")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(pool["mode"], "applied");
    assert_eq!(pool["old"], serde_json::Value::Null, "a new object");
    assert!(pool["new"].as_u64().is_some(), "{pool}");
    assert!(
        pool["reason"].as_str().unwrap().contains("Little's law"),
        "{pool}"
    );
    assert!(
        pool["predicted"].as_str().unwrap().contains("rule"),
        "{pool}"
    );
    assert_eq!(pool["attainment_before"], 1.0);
    assert!(pool["measured"].is_null());
    let total = get(&a, "/v1/decisions").await.1["total"].as_u64().unwrap();
    assert!(
        total >= 10,
        "a route and two rules, field by field: {total}"
    );
    assert!(
        !body["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["field"] == ".spec.host"),
        "the host is the object's identity, not a decision"
    );

    // The same window again: nothing new to log.
    tuner.round(&a, &w, secs, &BTreeSet::new(), true, now).await;
    assert_eq!(
        get(&a, "/v1/decisions").await.1["total"].as_u64().unwrap(),
        total
    );
    // One window later, the first round's decisions are measured.
    traffic(&a, 2, now + 11, 10);
    let (w, secs) = a.window(now + 11);
    tuner
        .round(&a, &w, secs, &BTreeSet::new(), true, now + 11)
        .await;
    // The filters' policy is logged too, judged by the chain's attainment
    // (measured on the agent's minute tick).
    let (_, policy) = get(
        &a,
        "/v1/decisions?object=policy%20chain%20product&field=budget_ms",
    )
    .await;
    let budget = &policy["decisions"][0];
    assert_eq!(budget["new"], 200, "{policy}");
    assert_eq!(budget["host"], "chain product");
    assert!(
        budget["reason"].as_str().unwrap().contains("deadline"),
        "{budget}"
    );
    assert!(budget["measured"].is_null());
    a.assure(now + 11);
    let (_, body) = get(&a, "/v1/decisions?limit=1000").await;
    let first: Vec<&serde_json::Value> = body["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["at_s"] == now)
        .collect();
    assert_eq!(first.len() as u64, total, "{body}");
    assert!(
        first.iter().all(|d| d["measured"]["effect"] == "unchanged"),
        "attainment stayed 1: {body}"
    );

    // Paging, filters and a bad parameter.
    let (_, page) = get(&a, "/v1/decisions?limit=2&offset=1").await;
    assert_eq!(page["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(page["offset"], 1);
    let (status, bad) = get(&a, "/v1/decisions?mode=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["message"].as_str().unwrap().starts_with("mode:"),
        "{bad}"
    );
    let (status, bad) = get(&a, "/v1/decisions?objet=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad["message"].as_str().unwrap().contains("objet"), "{bad}");

    // Counted in metrics, and kept across a restart.
    let mut m = String::new();
    prometheus_client::encoding::text::encode(&mut m, a.registry()).unwrap();
    assert!(
        m.contains(&format!(
            "meshtune_decisions_total{{mode=\"applied\"}} {}",
            body["total"]
        )),
        "{m}"
    );
    drop(tuner);
    drop(a);
    let again = agent(data.path());
    let (_, restored) = get(&again, "/v1/decisions?limit=1000").await;
    assert_eq!(restored["decisions"], body["decisions"]);
}

#[tokio::test]
async fn an_objective_breached_for_k_windows_replans_at_once_and_says_so_in_the_log() {
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Rounds an hour apart: only the assurance loop can bring one sooner.
    let a = agent_with(
        data.path(),
        "  interval_seconds: 3600\n  replan_after_breached_windows: 2\n",
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let looping = tokio::spawn(meshtune_agent::app::tuner::run_local(
        a.clone(),
        DirSink::new(out.path()).unwrap(),
        stop,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let files = || std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(files(), 0, "nothing measured before the first round");

    // The chain takes 100 ms end to end against its 50 ms objective (reviews
    // 90 of them): two breached windows.
    let slow = |seq: u64, at: u64| {
        let records = vec![
            record("product", "productpage", &[100; 100]).at_entry(),
            record("product", "reviews", &[90; 100]),
        ];
        a.lock().ingest(&report("vm", seq, records), at);
    };
    let now = meshtune_agent::now_secs();
    slow(1, now);
    assert!(a.assure(now).is_empty(), "one window is not a trend");
    slow(2, now + 10);
    let breaches = a.assure(now + 10);
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(breaches[0].chain, "product");

    // The tuning round ran at once and wrote the chain's objects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while files() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no round after the breach"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, body) = get(&a, "/v1/decisions?mode=replanned").await;
    assert_eq!(body["total"], 1, "{body}");
    let d = &body["decisions"][0];
    assert_eq!(d["object"], "chain product");
    assert_eq!(d["new"]["replanned_at_s"], now + 10);
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("2 windows in a row below the p99 objective"),
        "{reason}"
    );
    let mut m = String::new();
    prometheus_client::encoding::text::encode(&mut m, a.registry()).unwrap();
    assert!(m.contains("meshtune_replans_total 1"), "{m}");
    let _ = stop_tx.send(true);
    looping.await.unwrap();
}
