//! End to end with real Envoy 1.40 sidecars: the filter measures each chain
//! inside the proxies, the agent merges the reports, and Envoy, the agent and
//! a real Prometheus server all show the same chains.
//!
//! Needs Envoy (`bash scripts/setup.sh`), the built filter
//! (`cargo build --release --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter`)
//! and Prometheus (`apt-get install -y prometheus`). A missing part fails
//! the test with the command that installs it.

use meshtune_filter_core::sketch::{nearest_rank, RELATIVE_ERROR};
use meshtune_lab::load::closed_loop;
use meshtune_lab::mesh::{chain, Mesh, MeshOptions};
use meshtune_lab::prometheus::Prometheus;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PRODUCT: &str = "product-page";
const RATINGS: &str = "ratings-api";

fn exact_quantile(sorted: &[u64], q: f64) -> f64 {
    sorted[(nearest_rank(q, sorted.len() as u64) - 1) as usize] as f64
}

/// Polls `f` until it returns `Some`, or fails after `secs`.
async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `metric{labels...} value` lines of an Envoy `/stats/prometheus` page.
fn envoy_value(stats: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    stats
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .find_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            labels
                .iter()
                .all(|(k, v)| head.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// Per request id, the durations the filter logged at the entry hop.
fn entry_durations(log: &str) -> HashMap<String, (String, u64)> {
    log.lines()
        .filter_map(|l| l.split_once("meshtune-debug hop ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let kv: HashMap<&str, &str> =
                rest.split(' ').filter_map(|p| p.split_once('=')).collect();
            (kv.get("entry") == Some(&"true")).then_some(())?;
            Some((
                kv.get("request_id")?.to_string(),
                (
                    kv.get("chain")?.to_string(),
                    kv.get("duration_ns")?.parse().ok()?,
                ),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_latency_is_measured_in_envoy_merged_by_the_agent_and_scraped_by_prometheus() {
    let opts = MeshOptions {
        report_interval_ms: 500,
        debug_log_durations: true,
        envoy_concurrency: 2,
        agent_window_secs: 600,
        per_side_plugins: true,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let prom = Prometheus::start(&[(
        "meshtune-agent".into(),
        format!("127.0.0.1:{}", mesh.agent_port),
    )])
    .unwrap_or_else(|e| panic!("{e:#}"));

    let (n_product, n_ratings) = (400usize, 250usize);
    let mut plan: Vec<String> = Vec::new();
    for i in 0..(n_product + n_ratings) {
        // Interleave the chains; query strings must not change the chain.
        plan.push(
            if i % 13 < 8
                && plan
                    .iter()
                    .filter(|p| p.starts_with("/productpage"))
                    .count()
                    < n_product
                || plan.iter().filter(|p| p.starts_with("/api")).count() >= n_ratings
            {
                format!("/productpage?u={i}")
            } else {
                format!("/api/v1/ratings/{i}")
            },
        );
    }
    let outcomes = closed_loop(mesh.entry_port, plan, 6, "e2e").await;
    assert_eq!(outcomes.len(), n_product + n_ratings);
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed: {:?}",
        &failed[..failed.len().min(5)]
    );

    // The agent's counts are exact once every VM of every sidecar has
    // reported: per chain at the entry hop, and per service on each chain.
    let hop = |c: &serde_json::Value, svc: &str| -> u64 {
        c["hops"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["service"] == svc)
            .map_or(0, |h| h["requests"].as_u64().unwrap_or(0))
    };
    let counts = |c: &serde_json::Value| -> Option<Vec<u64>> {
        let (p, r) = (chain(c, PRODUCT)?, chain(c, RATINGS)?);
        Some(vec![
            p["requests"].as_u64()?,
            hop(p, "productpage"),
            hop(p, "details"),
            hop(p, "reviews"),
            hop(p, "ratings"),
            r["requests"].as_u64()?,
            hop(r, "productpage"),
            hop(r, "ratings"),
            hop(r, "reviews"),
        ])
    };
    let (np, nr) = (n_product as u64, n_ratings as u64);
    let want = vec![np, np, np, np, np, nr, nr, nr, 0];
    let mut last = None;
    let settled = wait_for(30, "the agent's counts to settle", || {
        let c = mesh.chains_json()?;
        last = counts(&c);
        (last.as_ref() == Some(&want)).then_some(c)
    })
    .await;
    let chains = settled;
    // Nothing more arrives later: counts stay exact (no double counting).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        counts(&mesh.chains_json().unwrap()),
        Some(want),
        "counts changed after settling"
    );
    let product = chain(&chains, PRODUCT).unwrap();
    let ratings = chain(&chains, RATINGS).unwrap();
    assert_eq!(product["error_rate"], 0.0);

    // Quantiles agree with the exact durations the filter measured, within
    // the sketch's error bound.
    let log = mesh.envoys["productpage"].log();
    let exact = entry_durations(&log);
    assert_eq!(
        exact.len(),
        n_product + n_ratings,
        "one debug line per request at the entry hop"
    );
    for (name, view) in [(PRODUCT, product), (RATINGS, ratings)] {
        let mut d: Vec<u64> = exact
            .values()
            .filter(|(c, _)| c == name)
            .map(|(_, d)| *d)
            .collect();
        d.sort_unstable();
        for (q, field) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
            let want = exact_quantile(&d, q) / 1e6;
            let got = view[field].as_f64().unwrap();
            // The agent rounds to the microsecond.
            let tol = want * RELATIVE_ERROR + 0.0006;
            assert!(
                (got - want).abs() <= tol,
                "{name} {field}: agent {got} ms, exact {want} ms (tolerance {tol})"
            );
        }
    }
    // Each client-measured latency covers the entry hop's recorded one.
    for o in &outcomes {
        let (_, d) = exact
            .get(&o.request_id)
            .unwrap_or_else(|| panic!("no entry record for {}", o.request_id));
        assert!(
            o.latency.as_nanos() as u64 >= *d,
            "{}: client {:?} < entry {d} ns",
            o.request_id,
            o.latency
        );
    }

    // Every sidecar exports the chain metrics on /stats/prometheus.
    let expect: [(&str, &str, &str, &str, usize); 7] = [
        ("productpage", PRODUCT, "productpage", "inbound", n_product),
        ("productpage", PRODUCT, "details", "outbound", n_product),
        ("productpage", PRODUCT, "reviews", "outbound", n_product),
        ("productpage", RATINGS, "ratings", "outbound", n_ratings),
        ("reviews", PRODUCT, "reviews", "inbound", n_product),
        ("reviews", PRODUCT, "ratings", "outbound", n_product),
        ("ratings", RATINGS, "ratings", "inbound", n_ratings),
    ];
    for (sidecar, c, svc, dir, n) in expect {
        let stats = mesh.envoys[sidecar].stats_prometheus();
        let labels = [("chain", c), ("service", svc), ("direction", dir)];
        assert_eq!(
            envoy_value(&stats, "meshtune_requests_total", &labels),
            Some(n as f64),
            "{sidecar}: {labels:?}"
        );
    }
    // Histograms appear after Envoy's stats flush (1 s in the lab bootstrap).
    let details = &mesh.envoys["details"];
    wait_for(10, "the details sidecar's histogram", || {
        let stats = details.stats_prometheus();
        let labels = [
            ("chain", PRODUCT),
            ("service", "details"),
            ("direction", "inbound"),
        ];
        (envoy_value(
            &stats,
            "meshtune_request_duration_milliseconds_count",
            &labels,
        ) == Some(n_product as f64))
        .then_some(())
    })
    .await;

    // A real Prometheus server scraping the agent returns the chain series.
    let series = wait_for(30, "prometheus to scrape the chain series", || {
        let r = prom.query("meshtune_chain_requests_total").ok()?;
        let get = |c: &str| {
            r.iter()
                .find(|s| s["metric"]["chain"] == c)
                .map(|s| s["value"][1].as_str().unwrap_or("").to_owned())
        };
        (get(PRODUCT) == Some(n_product.to_string()) && get(RATINGS) == Some(n_ratings.to_string()))
            .then_some(r)
    })
    .await;
    assert_eq!(series.len(), 2, "{series:?}");
    let hist = prom
        .query("meshtune_chain_request_duration_seconds_count{chain=\"product-page\"}")
        .unwrap();
    assert_eq!(hist[0]["value"][1], n_product.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_mid_load_fails_no_request_and_drops_are_counted() {
    // One plugin on both sides this time: hops are told apart by cluster name.
    let opts = MeshOptions {
        report_interval_ms: 200,
        debug_log_durations: false,
        envoy_concurrency: 2,
        agent_window_secs: 60,
        per_side_plugins: false,
        ..MeshOptions::default()
    };
    let mut mesh = Mesh::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let port = mesh.entry_port;
    let first = closed_loop(port, vec!["/productpage".into(); 300], 4, "before").await;
    wait_for(
        20,
        "the agent to count every hop of the first batch",
        || {
            let c = mesh.chains_json()?;
            let p = chain(&c, PRODUCT)?;
            let hops: Vec<(String, String, u64)> = p["hops"]
                .as_array()?
                .iter()
                .map(|h| {
                    (
                        h["service"].as_str().unwrap_or("").to_owned(),
                        h["direction"].as_str().unwrap_or("").to_owned(),
                        h["requests"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            let want: Vec<(String, String, u64)> = ["details", "productpage", "ratings", "reviews"]
                .iter()
                .map(|s| (s.to_string(), "inbound".to_string(), 300))
                .collect();
            (p["requests"] == 300 && hops == want).then_some(())
        },
    )
    .await;
    let load = tokio::spawn(closed_loop(
        port,
        vec!["/productpage".into(); 1500],
        4,
        "during",
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !load.is_finished(),
        "the load run must still be going when the agent stops"
    );
    mesh.stop_agent().await;
    let during = load.await.unwrap();
    let after = closed_loop(port, vec!["/api/v1/ratings/1".into(); 300], 4, "after").await;
    for batch in [&first, &during, &after] {
        let failed = batch.iter().filter(|o| o.status != 200).count();
        assert_eq!(failed, 0, "requests failed while the agent was down");
    }
    // Reports that found no agent are dropped and counted, never queued.
    let stats = mesh.envoys["productpage"].stats_prometheus();
    let dropped = wait_for(10, "dropped reports on the productpage sidecar", || {
        let s = mesh.envoys["productpage"].stats_prometheus();
        let v = s
            .lines()
            .find(|l| l.starts_with("meshtune_reports_dropped_total"))?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()?;
        (v > 0.0).then_some(v)
    })
    .await;
    assert!(dropped >= 1.0, "{stats}");
    let sent: f64 = stats
        .lines()
        .find(|l| l.starts_with("meshtune_reports_sent_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(sent >= 1.0, "reports were delivered while the agent was up");
}
