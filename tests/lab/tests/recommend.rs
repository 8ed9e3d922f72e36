//! `meshtune-agent recommend --prometheus`: a real Prometheus holding
//! Istio-shaped series (backfilled with `promtool tsdb create-blocks-from
//! openmetrics` from series whose shape follows Istio's documented
//! standard metrics) gives the same DestinationRules the agent computes
//! from its own filters' reports of the same traffic. Pools are compared
//! within one request: Istio's histogram buckets (50–100 ms here) give the
//! p99 by interpolation, the filter's sketch within 1 %.
//!
//! Needs Prometheus and promtool (`apt-get install -y prometheus`).

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::plan::observe::observe;
use meshtune_agent::plan::traffic::desired;
use meshtune_agent::AgentConfig;
use meshtune_filter_core::builders::record;
use meshtune_lab::prometheus::Prometheus;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Istio's default latency buckets (ms).
const BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Ten minutes of one service's destination-side series every 15 s,
/// ending at `end` (Unix s): `rps` requests per second, `err` of them 500,
/// every latency in 50–100 ms.
fn istio_series(out: &mut (String, String), service: &str, rps: f64, err: f64, end: f64) {
    let labels = format!(
        "reporter=\"destination\",source_workload=\"productpage-v1\",destination_workload=\"{service}-v1\",destination_service_namespace=\"bookinfo\",destination_service_name=\"{service}\",request_protocol=\"http\""
    );
    let steps = 40;
    for code in ["200", "500"] {
        let share = if code == "500" { err } else { 1.0 - err };
        for i in 0..=steps {
            let t = end - f64::from(steps - i) * 15.0;
            let v = rps * share * f64::from(i) * 15.0;
            writeln!(
                out.0,
                "istio_requests_total{{{labels},response_code=\"{code}\"}} {v} {t}"
            )
            .unwrap();
        }
    }
    for le in BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
    {
        let within = le == "+Inf" || le.parse::<f64>().unwrap() >= 100.0;
        for i in 0..=steps {
            let t = end - f64::from(steps - i) * 15.0;
            let v = if within {
                rps * f64::from(i) * 15.0
            } else {
                0.0
            };
            writeln!(
                out.1,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {v} {t}"
            )
            .unwrap();
        }
    }
    for (suffix, per_request) in [("count", 1.0), ("sum", 75.0)] {
        for i in 0..=steps {
            let t = end - f64::from(steps - i) * 15.0;
            let v = rps * f64::from(i) * 15.0 * per_request;
            writeln!(
                out.1,
                "istio_request_duration_milliseconds_{suffix}{{{labels}}} {v} {t}"
            )
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_metrics_in_prometheus_give_the_rules_the_agent_computes_from_its_own_reports() {
    let end = (meshtune_agent::now_secs() - 600) as f64;
    let mut series = (String::new(), String::new());
    istio_series(&mut series, "reviews", 200.0, 0.01, end);
    istio_series(&mut series, "ratings", 40.0, 0.0, end);
    istio_series(&mut series, "unlisted", 5.0, 0.0, end);
    let om = format!(
        "# HELP istio_requests Requests\n# TYPE istio_requests counter\n{}# HELP istio_request_duration_milliseconds Duration\n# TYPE istio_request_duration_milliseconds histogram\n{}# EOF\n",
        series.0, series.1
    );
    let prom = Prometheus::start_backfilled(&om).unwrap_or_else(|e| panic!("{e:#}"));
    let cfg = AgentConfig::parse(
        "chains:\n  product:\n    slo_ms: 300\nservices:\n  reviews: {namespace: bookinfo, chains: [product]}\n  ratings: {namespace: bookinfo, chains: [product]}\n",
        "agent.yaml",
    )
    .unwrap();
    let from_istio = meshtune_agent::app::recommend::recommend(
        &cfg,
        &format!("http://127.0.0.1:{}", prom.port),
        "bookinfo",
        "5m",
        Some(end),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_istio.unknown, ["unlisted"]);

    // The same traffic as the filters report it: a minute of each service,
    // latencies spread evenly over 50-100 ms.
    let spread = |n: usize| -> Vec<u64> { (0..n).map(|i| 51 + (i % 50) as u64).collect() };
    let mut agg = meshtune_agent::data::aggregate::ChainAgg::default();
    agg.add_record(&record("product", "reviews", &spread(12_000)).with_errors(120));
    agg.add_record(&record("product", "ratings", &spread(2_400)));
    let window = BTreeMap::from([("product".to_string(), agg)]);
    let (own_obs, _) = observe(&window, 60.0, &cfg.chains, &cfg.services, &BTreeMap::new());
    let own = desired(&own_obs, &[], &cfg.traffic);

    assert_eq!(from_istio.objects.len(), 2, "{:?}", from_istio.observations);
    for (a, b) in from_istio.objects.iter().zip(&own) {
        assert_eq!(a.name, b.name);
        let (ta, tb) = (
            &a.object["spec"]["trafficPolicy"],
            &b.object["spec"]["trafficPolicy"],
        );
        assert_eq!(ta["outlierDetection"], tb["outlierDetection"], "{}", a.name);
        for f in ["http2MaxRequests", "http1MaxPendingRequests", "maxRetries"] {
            let (x, y) = (
                ta["connectionPool"]["http"][f].as_i64().unwrap(),
                tb["connectionPool"]["http"][f].as_i64().unwrap(),
            );
            assert!(
                (x - y).abs() <= 1,
                "{} {f}: {x} from Istio's metrics, {y} from the filters'",
                a.name
            );
        }
        assert_eq!(
            a.reasons.keys().collect::<Vec<_>>(),
            b.reasons.keys().collect::<Vec<_>>()
        );
    }
    let reviews = &from_istio.observations[1];
    assert_eq!(reviews.service, "reviews");
    assert!(
        (reviews.rps - 200.0).abs() < 0.5 && (reviews.error_rate - 0.01).abs() < 1e-6,
        "{reviews:?}"
    );
}
