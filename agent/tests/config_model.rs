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
