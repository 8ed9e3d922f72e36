//! The configuration model trained from the shipped sweep (a few groups,
//! few trees: a check that learning happened, not the accuracy goal, which
//! `meshtune-agent model train` measures on all of it): held-out groups
//! are predicted better than their mean, training is deterministic, and
//! the file the agent loads round-trips.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::learn::config_model::{grouped_cv, ConfigModel, Dataset, TrainParams};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn shipped() -> Dataset {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/config-sweep.csv.gz");
    Dataset::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_shipped_sweep_trains_a_model_that_predicts_held_out_groups() {
    let ds = shipped();
    let groups: BTreeSet<&String> = ds.groups.iter().collect();
    assert!(groups.len() >= 8, "{} groups", groups.len());
    let params = TrainParams {
        trees: 8,
        ..TrainParams::default()
    };
    let cv = grouped_cv(&ds, &params, |_, _, _| {}).unwrap();
    println!("{cv:?}");
    assert!(cv.r2_log_p99 >= 0.5, "held-out R² of log p99: {cv:?}");
    let a = ConfigModel::train(&ds, &params).unwrap();
    let b = ConfigModel::train(&ds, &params).unwrap();
    let rows: Vec<Vec<f64>> = ds.features.iter().take(5).cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    a.save(&dir.path().join("m.json")).unwrap();
    let back = ConfigModel::load(&dir.path().join("m.json")).unwrap();
    assert_eq!(a.predict(&rows).unwrap(), b.predict(&rows).unwrap());
    assert_eq!(a.predict(&rows).unwrap(), back.predict(&rows).unwrap());
}

/// An agent with `product` measured through productpage → reviews →
/// ratings (reviews' replicas r1 and r2, r2 failing a tenth), the
/// configuration model at `model` (if any).
fn agent_with_model(
    data: &std::path::Path,
    model: Option<&std::path::Path>,
) -> std::sync::Arc<meshtune_agent::Agent> {
    use meshtune_filter_core::builders::{record, report};
    let model = model
        .map(|p| format!("config_model:\n  path: {}\n", p.display()))
        .unwrap_or_default();
    let yaml = format!(
        "data_dir: {}\nchains:\n  product:\n    slo_ms: 60\nservices:\n  productpage: {{namespace: bookinfo}}\n  reviews: {{namespace: bookinfo}}\n  ratings: {{namespace: bookinfo}}\nkubernetes:\n  mode: recommend\n{model}",
        data.display()
    );
    let cfg = meshtune_agent::AgentConfig::parse(&yaml, "agent.yaml").unwrap();
    let agent = meshtune_agent::Agent::open(cfg, meshtune_agent::now_secs()).unwrap();
    let now = meshtune_agent::now_secs();
    let mut entry = report(
        "pp",
        1,
        vec![
            record("product", "productpage", &[20; 200]).at_entry(),
            record("product", "ratings", &[3; 200]),
        ],
    );
    entry.source.pod = "productpage-1".into();
    agent.lock().ingest(&entry, now);
    for (pod, errors) in [("reviews-1", 0), ("reviews-2", 10)] {
        let mut r = report(
            pod,
            1,
            vec![record("product", "reviews", &[10; 100]).with_errors(errors)],
        );
        r.source.pod = pod.into();
        agent.lock().ingest(&r, now);
    }
    agent
}

fn metrics_text(agent: &meshtune_agent::Agent) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, agent.registry()).unwrap();
    s
}

async fn one_round(agent: &meshtune_agent::Agent, out: &std::path::Path) -> serde_json::Value {
    use meshtune_agent::app::tuner::{guard_config, Tuner};
    use meshtune_agent::write::dir::DirSink;
    let mut tuner = Tuner::new(DirSink::new(out).unwrap(), guard_config(agent));
    let now = meshtune_agent::now_secs();
    let (window, secs) = agent.window(now);
    tuner
        .round(agent, &window, secs, &BTreeSet::new(), true, now)
        .await;
    agent.tuning_report()
}

#[tokio::test]
async fn a_missing_corrupt_or_other_version_model_is_named_and_the_agent_decides_by_rules() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, "{\"version\": 1, \"features\": ").unwrap();
    let other = dir.path().join("v99.json");
    std::fs::write(&other, "{\"version\": 99}").unwrap();
    let missing = dir.path().join("missing.json");
    for (path, says) in [
        (&corrupt, "not a configuration model"),
        (&other, "format version 99, this agent reads version "),
        (&missing, "No such file"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let agent = agent_with_model(data.path(), Some(path));
        let m = metrics_text(&agent);
        assert!(m.contains("meshtune_config_model_in_use 0"), "{m}");
        assert!(
            m.contains("meshtune_config_model_load_errors_total 1"),
            "{m}"
        );
        let out = tempfile::tempdir().unwrap();
        let report = one_round(&agent, out.path()).await;
        let model = &report["config_model"];
        assert_eq!(model["in_use"], false, "{model}");
        let error = model["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&path.display().to_string()) && error.contains(says),
            "{error}"
        );
        // The rules still decide.
        assert!(
            report["objects"]["DestinationRule bookinfo/reviews"]["desired"].is_object(),
            "{report}"
        );
    }
}

#[tokio::test]
async fn with_a_model_each_service_is_chosen_by_looking_ahead_and_its_rows_are_kept_across_restarts(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let params = TrainParams {
        trees: 4,
        ..TrainParams::default()
    };
    ConfigModel::train(&shipped(), &params)
        .unwrap()
        .save(&path)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let agent = agent_with_model(data.path(), Some(&path));
    assert!(metrics_text(&agent).contains("meshtune_config_model_in_use 1"));
    let out = tempfile::tempdir().unwrap();
    let report = one_round(&agent, out.path()).await;
    let model = &report["config_model"];
    assert_eq!(model["in_use"], true, "{model}");
    let services = model["services"].as_array().unwrap();
    let reviews = services
        .iter()
        .find(|s| s["service"] == "reviews")
        .unwrap_or_else(|| panic!("{model}"));
    for field in [
        "current",
        "chosen",
        "current_score",
        "chosen_score",
        "reason",
    ] {
        assert!(!reviews[field].is_null(), "{field}: {reviews}");
    }
    assert_eq!(reviews["chain"], "product");
    assert_eq!(reviews["p99_budget_ms"], 60.0);
    assert_eq!(reviews["margin"], 1.0);
    // The desired rule carries the model's knobs and says so.
    let desired = &report["objects"]["DestinationRule bookinfo/reviews"];
    let pool =
        &desired["desired"]["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"];
    assert_eq!(pool, &reviews["chosen"]["http2_max_requests"], "{desired}");
    // One row per service with a chain outcome, r2's errors seen per replica.
    let rows = agent.learning.own_rows();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let r = rows.iter().find(|r| r.service == "reviews").unwrap();
    assert!(
        (r.features[6] - 0.1).abs() < 1e-9,
        "worst replica: {:?}",
        r.features
    );
    assert_eq!(r.features[7], 2.0, "two replicas answered");
    drop(agent);
    let again = agent_with_model(data.path(), Some(&path));
    assert_eq!(
        again.learning.own_rows(),
        rows,
        "the rows survive a restart"
    );
}
