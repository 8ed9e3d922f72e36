//! The HTTP API, built as a plain `Router` so tests drive it without a socket.

use crate::app::agent::Agent;
use crate::data::aggregate::stats_view;
use crate::data::state::Ingested;
use crate::now_ms;
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshtune_filter_core::{Report, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// Largest report body accepted.
pub const MAX_REPORT_BYTES: usize = 1 << 20;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/reports", post(post_report))
        .route("/v1/chains", get(get_chains))
        .route("/v1/policy", get(get_policy))
        .route("/v1/recommendations", get(get_recommendations))
        .route("/v1/decisions", get(get_decisions))
        .route("/v1/window", get(get_window))
        .route("/v1/chains/{chain}/history", get(get_history))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_ready))
        .merge(crate::app::ui::routes())
        .with_state(agent)
}

fn reject(agent: &Agent, status: StatusCode, reason: &str, message: String) -> Response {
    agent.metrics.reject(reason);
    tracing::debug!(reason, "report rejected: {message}");
    (status, Json(json!({"error": reason, "message": message}))).into_response()
}

fn authorized(agent: &Agent, headers: &HeaderMap) -> bool {
    let Some(expected) = &agent.config.token else {
        return true;
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare every byte so the time taken says nothing about the token.
    got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: Option<serde_json::Value>,
}

async fn post_report(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&agent, &headers) {
        return reject(
            &agent,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token".into(),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES) {
        return reject(
            &agent,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body exceeds {MAX_REPORT_BYTES} bytes"),
        );
    }
    let bytes: Bytes = match to_bytes(body, MAX_REPORT_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return reject(
                &agent,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body exceeds {MAX_REPORT_BYTES} bytes"),
            )
        }
    };
    let probe: VersionProbe = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return reject(&agent, StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
    };
    if probe.schema_version != Some(json!(SCHEMA_VERSION)) {
        let got = probe
            .schema_version
            .map_or("none".to_string(), |v| v.to_string());
        return reject(
            &agent,
            StatusCode::BAD_REQUEST,
            "unsupported_schema_version",
            format!(
                "schema_version {got} is not supported; this agent reads version {SCHEMA_VERSION}"
            ),
        );
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let report: Report = match serde_path_to_error::deserialize(de) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("at `{}`: {}", e.path(), e.inner());
            return reject(
                &agent,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_report",
                msg,
            );
        }
    };
    if let Err(msg) = report.validate() {
        return reject(
            &agent,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
            msg,
        );
    }
    let outcome = agent.lock().ingest(&report, crate::now_secs());
    match outcome {
        Ingested::Counted {
            records,
            dropped_records,
        } => {
            agent.metrics.reports_accepted.inc();
            agent.metrics.records_dropped.inc_by(dropped_records as u64);
            // The answer carries the policy, so filters need no separate fetch.
            let policy = agent.current_policy(now_ms());
            let body = json!({"status": "counted", "records": records, "dropped_records": dropped_records, "policy": policy});
            (StatusCode::OK, Json(body)).into_response()
        }
        Ingested::Duplicate => {
            agent.metrics.reports_duplicate.inc();
            let policy = agent.current_policy(now_ms());
            (
                StatusCode::OK,
                Json(json!({"status": "duplicate", "policy": policy})),
            )
                .into_response()
        }
    }
}

/// The policy for the filters (they fetch it when they have no report to send).
async fn get_policy(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    if !authorized(&agent, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "message": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    Json(json!({"policy": agent.current_policy(now_ms())})).into_response()
}

/// This agent's window, raw and mergeable, for the leader (bearer token).
async fn get_window(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    if !authorized(&agent, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "message": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let (chains, covered_seconds) = agent.window(crate::now_secs());
    Json(crate::data::window::WindowSnapshot {
        covered_seconds,
        chains,
    })
    .into_response()
}

/// What the tuning loop decides: per object (`Kind namespace/name`) the
/// desired object, the changes against the live one and the reason for
/// every value; the hosts users' own objects cover; services it cannot
/// place. Empty until the first tuning round (or without a sink).
async fn get_recommendations(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let mut report = agent.tuning_report();
    if report.is_null() {
        report = json!({"mode": agent.config.kubernetes.mode, "objects": {}, "conflicts": {}, "errors": []});
    }
    Json(report)
}

/// A 500 answer naming what could not be encoded.
fn encode_error(what: &str, e: serde_json::Error) -> Response {
    tracing::error!("encoding {what}: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "encoding", "message": format!("{what}: {e}")})),
    )
        .into_response()
}

#[derive(Serialize)]
struct ChainsBody {
    window_seconds: u64,
    chains: Vec<serde_json::Value>,
}

async fn get_chains(State(agent): State<Arc<Agent>>) -> Response {
    let now = crate::now_secs();
    let window = agent.config.window.as_secs();
    let specs = agent.chains();
    let views = agent.lock().views(&specs, now, window);
    let forecasts = agent.forecasts();
    let mut chains = Vec::with_capacity(views.len());
    for c in views {
        let mut v = match serde_json::to_value(&c) {
            Ok(v) => v,
            Err(e) => return encode_error(&format!("chain {}", c.chain), e),
        };
        v["forecast"] = match serde_json::to_value(forecasts.get(&c.chain)) {
            Ok(f) => f,
            Err(e) => return encode_error(&format!("the forecast of chain {}", c.chain), e),
        };
        if let Some(s) = specs.get(&c.chain) {
            v["deadline_ms"] = json!(s.deadline_ms());
        }
        // Whether the window met the objective, by the one rule the
        // rollback and the eval use.
        v["objective_met"] = json!(c
            .stats
            .slo_attainment
            .zip(c.slo_percentile)
            .map(|(a, p)| crate::data::attainment::meets(a, p)));
        chains.push(v);
    }
    Json(ChainsBody {
        window_seconds: window,
        chains,
    })
    .into_response()
}

/// The decision log, newest first: `object`, `field` (substrings), `mode`
/// (`applied`, `recommended`, `rolled_back`), `since` (agent-clock
/// seconds), `offset`, `limit` (default 100, at most 1000).
async fn get_decisions(
    State(agent): State<Arc<Agent>>,
    q: Result<
        Query<crate::data::decisions::DecisionQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_query", "message": message})),
        )
            .into_response()
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad(e.body_text()),
    };
    match agent.decisions(&q) {
        Ok((total, decisions)) => Json(json!({
            "total": total,
            "offset": q.offset.unwrap_or(0),
            "decisions": decisions,
        }))
        .into_response(),
        Err(message) => bad(message),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// How many minutes back (default 60, at most the retention).
    minutes: Option<u64>,
}

async fn get_history(
    State(agent): State<Arc<Agent>>,
    Path(chain): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let now_minute = crate::now_secs() / 60;
    let max = agent.config.retention.as_secs() / 60;
    let minutes = q.minutes.unwrap_or(60).min(max);
    let from = now_minute.saturating_sub(minutes);
    let mut rows = match agent.store().minutes(&chain, from, now_minute + 1) {
        Ok(r) => r,
        Err(e) => {
            agent.metrics.store_errors.inc();
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "store", "message": e.to_string()})),
            )
                .into_response();
        }
    };
    // Minutes not yet persisted come from memory and take precedence.
    let recent = agent.lock().minutes(&chain, from, now_minute + 1);
    for (m, agg) in recent {
        match rows.iter_mut().find(|(rm, _)| *rm == m) {
            Some(row) => row.1 = agg,
            None => rows.push((m, agg)),
        }
    }
    rows.sort_by_key(|(m, _)| *m);
    let slo = agent.chains().get(&chain).map(|c| c.slo_ms);
    let points: Vec<serde_json::Value> = rows
        .iter()
        .map(|(m, agg)| {
            // Rates are per wall second, as in `/v1/chains` (see `crate::clock`).
            let s = stats_view(
                &agg.end_to_end,
                agg.end_to_end.requests,
                crate::clock::wall_seconds(60.0),
                slo,
            );
            json!({"minute_start": m * 60, "partial": *m == now_minute, "requests": agg.end_to_end.requests, "rps": s.rps,
                   "error_rate": s.error_rate, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "slo_attainment": s.slo_attainment})
        })
        .collect();
    Json(json!({"chain": chain, "resolution_seconds": 60, "points": points})).into_response()
}

async fn get_metrics(State(agent): State<Arc<Agent>>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, agent.registry()) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn get_ready(State(agent): State<Arc<Agent>>) -> Response {
    if agent.metrics.ready.get() == 1 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
