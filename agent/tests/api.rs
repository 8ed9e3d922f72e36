//! The agent's HTTP API driven without a socket: every rejection reason,
//! merging, duplicates, the chains view and the metrics.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meshtune_agent::app::api;
use meshtune_agent::{Agent, AgentConfig};
use meshtune_filter_core::builders;
use meshtune_filter_core::Report;
use std::sync::Arc;
use tower::ServiceExt;

fn agent(dir: &std::path::Path) -> Arc<Agent> {
    let yaml = format!(
        "auth:\n  token: t0ken\ndata_dir: {}\nchains:\n  product:\n    slo_ms: 50\nslos:\n  ratings: 0.02\n",
        dir.display()
    );
    let cfg = AgentConfig::parse(&yaml, "test.yaml").unwrap();
    Agent::open(cfg, meshtune_agent::now_secs()).unwrap()
}

fn report(vm: &str, seq: u64, chain: &str, values_ms: &[u64]) -> Report {
    let record = builders::record(chain, "productpage", values_ms)
        .at_entry()
        .with_errors(1);
    builders::report(vm, seq, vec![record])
}

async fn send(agent: &Arc<Agent>, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = api::router(agent.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json)
}

fn post(body: impl Into<Body>, token: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/v1/reports").header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(body.into()).unwrap()
}

async fn metrics(agent: &Arc<Agent>) -> String {
    let resp = api::router(agent.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn each_rejection_reason_is_a_4xx_with_a_json_body_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let good = serde_json::to_vec(&report("vm", 1, "product", &[10])).unwrap();

    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post(good.clone(), None),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            post(good.clone(), Some("wrong")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            post("{not json", Some("t0ken")),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            post(r#"{"schema_version": 99, "anything": 1}"#, Some("t0ken")),
            StatusCode::BAD_REQUEST,
            "unsupported_schema_version",
        ),
        (
            post(vec![b' '; 2 << 20], Some("t0ken")),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            post(r#"{"schema_version": 2, "seq": 1}"#, Some("t0ken")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
        ),
    ];
    for (req, status, reason) in cases {
        let (got, body) = send(&agent, req).await;
        assert_eq!(got, status, "{reason}: {body}");
        assert_eq!(body["error"], reason, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Inconsistent counts are caught too.
    let mut bad = report("vm", 1, "product", &[10, 20]);
    bad.records[0].requests = 5;
    let (got, body) = send(
        &agent,
        post(serde_json::to_vec(&bad).unwrap(), Some("t0ken")),
    )
    .await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["message"].as_str().unwrap().contains("records[0]"),
        "{body}"
    );

    // Nothing else changed.
    let (_, chains) = send(
        &agent,
        Request::get("/v1/chains").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(
        chains["chains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["requests"] == 0),
        "{chains}"
    );

    let text = metrics(&agent).await;
    for (reason, n) in [
        ("unauthorized", 2),
        ("bad_json", 1),
        ("unsupported_schema_version", 1),
        ("too_large", 1),
        ("invalid_report", 2),
    ] {
        let line = format!("meshtune_reports_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "missing `{line}` in\n{text}");
    }
    assert!(text.contains("meshtune_reports_accepted_total 0"), "{text}");
}

#[tokio::test]
async fn reports_from_many_vms_merge_and_duplicates_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let a1 = serde_json::to_vec(&report("vm-a", 1, "product", &[10, 20, 30])).unwrap();
    let b1 = serde_json::to_vec(&report("vm-b", 1, "product", &[60])).unwrap();
    let a2 = serde_json::to_vec(&report("vm-a", 2, "ratings", &[5, 5])).unwrap();
    for body in [&a1, &b1, &a2, &a1, &b1] {
        let (status, _) = send(&agent, post(body.clone(), Some("t0ken"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, chains) = send(
        &agent,
        Request::get("/v1/chains").body(Body::empty()).unwrap(),
    )
    .await;
    let list = chains["chains"].as_array().unwrap();
    let product = list.iter().find(|c| c["chain"] == "product").unwrap();
    assert_eq!(product["requests"], 4);
    assert_eq!(product["window_requests"], 4);
    assert_eq!(product["slo_ms"], 50.0);
    // 3 of 4 within 50 ms, but 2 failed: failures count against the objective.
    assert_eq!(product["slo_attainment"], 0.25);
    assert_eq!(product["error_rate"], 0.5);
    let p99 = product["p99_ms"].as_f64().unwrap();
    assert!((p99 - 60.0).abs() / 60.0 <= 0.02, "{p99}");
    for field in ["rps", "p50_ms", "p95_ms", "hops"] {
        assert!(product.get(field).is_some(), "missing {field}");
    }
    assert_eq!(product["hops"][0]["service"], "productpage");
    assert_eq!(product["hops"][0]["requests"], 4);
    let ratings = list.iter().find(|c| c["chain"] == "ratings").unwrap();
    assert_eq!(ratings["requests"], 2);

    let text = metrics(&agent).await;
    assert!(text.contains("meshtune_reports_accepted_total 3"), "{text}");
    assert!(
        text.contains("meshtune_reports_duplicate_total 2"),
        "{text}"
    );
    assert!(
        text.contains("meshtune_chain_requests_total{chain=\"product\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("meshtune_chain_request_duration_seconds_count{chain=\"product\"} 4"),
        "{text}"
    );
    assert!(
        text.contains(
            "meshtune_chain_request_duration_seconds_bucket{le=\"0.025\",chain=\"product\"} 2"
        ) || text.contains(
            "meshtune_chain_request_duration_seconds_bucket{chain=\"product\",le=\"0.025\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("meshtune_chain_slo_seconds{chain=\"ratings\"} 0.02"),
        "{text}"
    );
}

#[tokio::test]
async fn health_ready_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let (s, _) = send(
        &agent,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&agent, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    send(
        &agent,
        post(
            serde_json::to_vec(&report("vm", 1, "product", &[10, 10])).unwrap(),
            Some("t0ken"),
        ),
    )
    .await;
    let (s, h) = send(
        &agent,
        Request::get("/v1/chains/product/history?minutes=5")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["points"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["points"][0]["requests"], 2);
}

#[tokio::test]
async fn report_answers_carry_the_policy_and_it_can_be_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let (status, body) = send(
        &agent,
        post(
            serde_json::to_vec(&report("vm", 1, "product", &[10, 20])).unwrap(),
            Some("t0ken"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let policy = &body["policy"];
    assert!(policy["version"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(policy["ttl_ms"], 30_000);
    // Deadline budgets are the chains' deadlines: four objectives by default.
    assert_eq!(policy["chains"]["product"]["budget_ms"], 200);
    assert_eq!(policy["chains"]["ratings"]["budget_ms"], 80);
    let parsed = meshtune_filter_core::control::Policy::parse(policy.to_string().as_bytes());
    assert!(parsed.is_ok(), "{parsed:?}");
    let fetch = Request::get("/v1/policy")
        .header("authorization", "Bearer t0ken")
        .body(Body::empty())
        .unwrap();
    let (status, fetched) = send(&agent, fetch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["policy"], *policy);
    let (status, _) = send(
        &agent,
        Request::get("/v1/policy").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// An agent that has counted one report: 30 requests of chain `product`.
async fn agent_with_30_product_requests(dir: &std::path::Path) -> Arc<Agent> {
    let agent = agent(dir);
    send(
        &agent,
        post(
            serde_json::to_vec(&report("vm", 1, "product", &[10; 30])).unwrap(),
            Some("t0ken"),
        ),
    )
    .await;
    agent
}

#[tokio::test]
async fn forecasts_appear_in_the_chain_view_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_30_product_requests(dir.path()).await;
    // The current minute is not complete; forecast from the next one on.
    agent.refresh_forecasts(meshtune_agent::now_secs() + 60);
    let (_, chains) = send(
        &agent,
        Request::get("/v1/chains").body(Body::empty()).unwrap(),
    )
    .await;
    let product = chains["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == "product")
        .unwrap();
    let f = &product["forecast"];
    assert_eq!(f["basis"], "fallback", "one minute of history: {f}");
    assert_eq!(f["rps"]["10"], 0.5, "30 requests in a minute: {f}");
    assert_eq!(f["history_minutes"], 1);
    let text = metrics(&agent).await;
    // Later refreshes feed only the minutes since the last one (a quiet minute is zero).
    agent.refresh_forecasts(meshtune_agent::now_secs() + 120);
    let (_, chains) = send(
        &agent,
        Request::get("/v1/chains").body(Body::empty()).unwrap(),
    )
    .await;
    let later = chains["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == "product")
        .unwrap();
    assert_eq!(
        later["forecast"]["history_minutes"], 2,
        "{}",
        later["forecast"]
    );
    assert_eq!(later["forecast"]["rps"]["1"], 0.0);
    assert!(
        text.contains(
            "meshtune_forecast_requests_per_second{chain=\"product\",horizon=\"10\"} 0.5"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "meshtune_forecast_method{chain=\"product\",method=\"naive\",basis=\"fallback\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_policy_carries_the_load_growth_the_forecast_expects() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_30_product_requests(dir.path()).await;
    let fetch = || {
        Request::get("/v1/policy")
            .header("authorization", "Bearer t0ken")
            .body(Body::empty())
            .unwrap()
    };
    let (_, before) = send(&agent, fetch()).await;
    assert!(
        before["policy"].get("load_growth").is_none(),
        "no forecast, no growth: {before}"
    );
    // A forecast three times the window's rate (30 requests in the window).
    let now_rps = 30.0 / 60.0;
    agent.insert_forecast(
        "product",
        meshtune_agent::forecast::ChainForecast {
            method: "gru",
            basis: "backtest",
            history_minutes: 90,
            rps: [(1, now_rps), (10, 3.0 * now_rps)].into(),
            upper_rps: Default::default(),
        },
    );
    // Policies are recomputed at most every few seconds: ask for a later one.
    let later_ms =
        meshtune_agent::now_secs() * 1000 + meshtune_agent::app::agent::POLICY_REFRESH_MS + 1000;
    let after = agent.current_policy(later_ms).expect("policies are on");
    assert_eq!(
        after.load_growth.get("productpage"),
        Some(&3.0),
        "{after:?}"
    );
    assert!(after.validate().is_ok());
    let text = metrics(&agent).await;
    assert!(
        text.contains("meshtune_policy_load_growth{service=\"productpage\"} 3.0"),
        "{text}"
    );
}

#[tokio::test]
async fn declared_entry_rules_travel_in_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    agent.set_declared(meshtune_agent::config::DeclaredChains {
        chains: Default::default(),
        rules: vec![meshtune_filter_core::rules::ChainRule {
            chain: "cart".into(),
            host: None,
            path_prefix: Some("/cart".into()),
            method: Some("POST".into()),
        }],
    });
    let fetch = Request::get("/v1/policy")
        .header("authorization", "Bearer t0ken")
        .body(Body::empty())
        .unwrap();
    let (_, body) = send(&agent, fetch).await;
    assert_eq!(
        body["policy"]["rules"],
        serde_json::json!([{"chain": "cart", "path_prefix": "/cart", "method": "POST"}])
    );
}
