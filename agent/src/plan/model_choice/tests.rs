use super::*;
use crate::plan::traffic::{desired, desired_routes};

use crate::plan::lookahead::tiny::Tiny;

fn observation(rps: f64) -> crate::plan::observe::ServiceObservation {
    crate::plan::observe::ServiceObservation {
        namespace: "bookinfo".into(),
        service: "reviews".into(),
        rps,
        percentile: 99.0,
        latency_ms: 10.0,
        error_rate: 0.1,
        attainment: None,
        replica_latency_ms: Vec::new(),
        replicas_known: 0,
        chain_objectives: Vec::new(),
    }
}

const HOST: &str = "reviews.bookinfo.svc.cluster.local";

#[test]
fn unset_fields_are_istios_defaults_and_set_ones_are_read() {
    let none = knobs_in_force(None, None);
    assert_eq!(none.http2_max_requests, UNLIMITED_POOL);
    assert_eq!(none.consecutive_5xx, 0, "no outlier detection");
    assert_eq!(none.timeout_ms, 0, "no route timeout");
    assert_eq!(none.retry_attempts, 2, "Istio retries twice by default");
    let dr = json!({"spec": {"trafficPolicy": {
        "connectionPool": {"http": {"http2MaxRequests": 40, "http1MaxPendingRequests": 20, "maxRetries": 8}},
        "outlierDetection": {"consecutive5xxErrors": 5}}}});
    let vs = json!({"spec": {"http": [{"timeout": "1.5s", "retries": {"attempts": 1, "perTryTimeout": "200ms"}}]}});
    let k = knobs_in_force(Some(&dr), Some(&vs));
    assert_eq!(
        k,
        Knobs {
            http2_max_requests: 40,
            http1_max_pending: 20,
            max_retries: 8,
            consecutive_5xx: 5,
            timeout_ms: 1500,
            retry_attempts: 1,
            per_try_timeout_ms: 200,
        }
    );
}

#[test]
fn the_model_turns_on_what_it_predicts_keeps_the_objective_and_says_which_knob_did_it() {
    let o = observation(50.0);
    let mut objects = desired(std::slice::from_ref(&o), &[], &Default::default());
    objects.extend(desired_routes(
        std::slice::from_ref(&o),
        &[("reviews".to_string(), 400)].into(),
    ));
    let rule = rule_based_knobs(&objects, HOST);
    assert_eq!(rule.timeout_ms, 400);
    let input = ServiceInput {
        service: "reviews".into(),
        host: HOST.into(),
        observed: {
            let mut v = vec![0.0; FEATURES.len() - 7];
            v[0] = 50.0;
            v
        },
        forecast_rps: vec![50.0, 55.0],
        chain: "product-page".into(),
        spec: ChainSpec {
            slo_ms: 45.0,
            percentile: 98.0,
            description: String::new(),
            priority: Default::default(),
            deadline_ms: None,
        },
        // In force: nothing (Istio's defaults): 50 ms and 10 % errors.
        in_force: knobs_in_force(None, None),
    };
    // Candidates without outlier detection or without a timeout break a
    // budget; the rule-based knobs keep both (22 ms, 1 % ≤ 2 %).
    let cands = [Knobs {
        consecutive_5xx: 0,
        ..rule
    }];
    let params = ChoiceParams {
        margin: 1.0,
        threshold: 0.01,
    };
    let c = choose_for(&Tiny, &input, &rule, &cands, params, true).unwrap();
    assert!(c.choice.change, "{c:?}");
    assert_eq!(c.choice.chosen, rule);
    assert!((c.error_budget - 0.02).abs() < 1e-12);
    let names: Vec<&str> = c.top_features.iter().map(|e| e.feature).collect();
    // Outlier detection moves errors 9 points (size 9), the timeout p99
    // by 30 ms (size 3); the pools change nothing the tiny model sees.
    assert_eq!(&names[..2], ["knob_consecutive_5xx", "knob_timeout_ms"]);
    assert!((c.top_features[1].p99_ms_delta + 30.0).abs() < 1e-9);

    // Without a route written, the timeout cannot be chosen: nothing keeps
    // p99 within 45 ms, and ejection's gain in goodput decides.
    let c2 = choose_for(&Tiny, &input, &rule, &cands, params, false).unwrap();
    assert_eq!(c2.choice.chosen.timeout_ms, 0, "{c2:?}");

    let mut patched = objects.clone();
    let off = ServiceChoice {
        choice: Choice {
            chosen: Knobs {
                consecutive_5xx: 0,
                timeout_ms: 0,
                http2_max_requests: 77,
                ..rule
            },
            ..c.choice.clone()
        },
        ..c.clone()
    };
    apply_choice(&mut patched, HOST, &off);
    let dr = &patched[0];
    assert_eq!(
        dr.object["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"],
        77
    );
    assert!(dr.object["spec"]["trafficPolicy"]
        .get("outlierDetection")
        .is_none());
    assert!(
        dr.reasons["trafficPolicy.connectionPool.http.http2MaxRequests"]
            .starts_with("configuration model (chain product-page")
    );
    assert!(!dr.reasons.keys().any(|k| k.contains("outlierDetection")));
    let vs = &patched[1];
    assert!(vs.object["spec"]["http"][0].get("timeout").is_none());
    assert_eq!(
        vs.object["spec"]["http"][0]["retries"], objects[1].object["spec"]["http"][0]["retries"],
        "retries stay rule-based"
    );
}

#[test]
fn features_show_the_worst_replica_and_the_replicas_that_answered() {
    use meshtune_filter_core::{Direction, HopRecord};
    let mut agg = ChainAgg::default();
    let mut latency = meshtune_filter_core::sketch::Sketch::default();
    for ms in [10u64, 20, 30, 40] {
        latency.record(ms * 1_000_000);
    }
    agg.add_record(&HopRecord {
        chain: "c".into(),
        service: "reviews".into(),
        direction: Direction::Inbound,
        entry: false,
        requests: 4,
        errors: 1,
        latency,
        shed: 0,
        deadline_exceeded: 0,
        retries: 0,
    });
    let window: BTreeMap<String, ChainAgg> = [("c".to_string(), agg)].into();
    let replicas = [(
        "reviews".to_string(),
        [
            (
                "r1".to_string(),
                ReplicaCounts {
                    requests: 2,
                    errors: 0,
                    ..Default::default()
                },
            ),
            (
                "r2".to_string(),
                ReplicaCounts {
                    requests: 2,
                    errors: 1,
                    ..Default::default()
                },
            ),
            (
                "r3".to_string(),
                ReplicaCounts {
                    requests: 0,
                    errors: 0,
                    ..Default::default()
                },
            ),
        ]
        .into(),
    )]
    .into();
    let f = &service_features(&window, 2.0, &replicas)["reviews"];
    assert_eq!(f.len() + 7, FEATURES.len());
    assert_eq!(f[0], 2.0, "4 requests in 2 s");
    assert_eq!(f[1], 0.25);
    assert_eq!(f[6], 0.5, "r2 failed one of two");
    assert_eq!(f[7], 2.0, "r3 answered nothing");
}
