//! The Grafana dashboard (`dashboards/meshtune.json`): every PromQL
//! expression in it runs against a real Prometheus scraping the agent of a
//! lab under load, and each must return data. Grafana's variables are
//! given what Grafana would send: `$chain` all chains (`.*`),
//! `$__rate_interval` one minute.
//!
//! Needs Envoy (`bash scripts/setup.sh`), the built filter
//! (`cargo build --release --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter`)
//! and Prometheus (`apt-get install -y prometheus`). A missing part fails
//! the test with the command that installs it.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_lab::envoy::repo_root;
use meshtune_lab::load::open_loop;
use meshtune_lab::mesh::{Mesh, MeshOptions};
use meshtune_lab::prometheus::Prometheus;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every query of the dashboard: the panels' targets (rows included) and
/// the chain variable's (`label_values(m, chain)` is Grafana's; Prometheus
/// is asked for `m`).
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push((
                p["title"].as_str().unwrap_or("").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let q = v["query"]["query"].as_str().unwrap();
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        out.push((format!("variable {}", v["name"]), metric.trim().to_owned()));
    }
    out
}

fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$chain", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus_scraping_the_lab() {
    let path = repo_root().join("dashboards/meshtune.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        dashboard["__inputs"][0]["pluginId"], "prometheus",
        "importable with a data source input"
    );
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // The agent on trace time (a trace minute every 2 s) forecasts within seconds.
    let mesh = Mesh::start(MeshOptions {
        agent_seconds_per_minute: Some(2.0),
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let prom = Prometheus::start(&[(
        "meshtune-agent".into(),
        format!("127.0.0.1:{}", mesh.agent_port),
    )])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let port = mesh.entry_port;
    let load = tokio::spawn(async move {
        let rates = vec![20.0; 120];
        open_loop(
            port,
            &rates,
            Duration::from_secs(1),
            &[("/productpage", 2), ("/api/v1/ratings/1", 1)],
            &stop,
        )
        .await
    });

    let deadline = Instant::now() + Duration::from_secs(100);
    let mut empty: Vec<(String, String)>;
    loop {
        empty = queries
            .iter()
            .filter(|(_, e)| {
                prom.query(&as_grafana_sends(e))
                    .map_or(true, |r| r.is_empty())
            })
            .cloned()
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = stop_tx.send(true);
    let sent = load.await.unwrap();
    assert!(sent.sent > 0);
    assert!(
        empty.is_empty(),
        "queries without data after {} s of load: {empty:#?}",
        100
    );
    // And the values mean what the panels say: the chains' attainment is a share.
    let att = prom.query("meshtune_chain_slo_attainment").unwrap();
    assert_eq!(att.len(), 2, "{att:?}");
    for s in att {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&v), "{s}");
    }
}
