use super::*;

/// A sweep-shaped CSV whose outcomes are a known function of the
/// features: p99 grows with service time and load, errors with the worst
/// replica's error share unless outlier detection is on; groups of 20 rows.
fn synthetic_csv(rows: usize) -> String {
    let mut s = String::from("# synthetic\npoint,group,");
    s.push_str(&FEATURES.join(","));
    s.push_str(",out_p99_ms,out_error_share,out_goodput\n");
    let mut state = 7u64;
    let mut u = || (next(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
    for i in 0..rows {
        let service_ms = 1.0 + 9.0 * u();
        let f: Vec<f64> = vec![
            20.0 + 100.0 * u(), // rps
            u() * 0.1,          // error rate
            service_ms,         // p50
            service_ms * 2.0,   // p95
            service_ms * 3.0,   // p99
            u() * 4.0,          // inflight
            u() * 0.5,          // max replica error
            3.0,                // replicas up
            2f64.powf(1.0 + 9.0 * u()),
            2f64.powf(10.0 * u()),
            (u() * 20.0).floor(),
            [0.0, 1.0, 5.0][(u() * 3.0) as usize],
            (u() * 500.0).floor(),
            (u() * 4.0).floor(),
            10.0 + (u() * 490.0).floor(),
        ];
        let p99 = 5.0 + f[2] * (1.0 + f[0] / 40.0);
        let err = if f[11] > 0.0 { 0.0 } else { f[6] / 3.0 };
        let good = (1.0 - err) * if p99 < 60.0 { 1.0 } else { 0.5 };
        s.push_str(&format!(
            "{i},g{},{},{p99},{err},{good}\n",
            i / 20,
            f.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    s
}

fn small() -> TrainParams {
    TrainParams {
        trees: 10,
        ..TrainParams::default()
    }
}

#[test]
fn a_known_function_is_learned_and_held_out_groups_are_predicted() {
    let ds = Dataset::parse_csv(&synthetic_csv(200)).unwrap();
    assert_eq!(ds.features.len(), 200);
    let cv = grouped_cv(&ds, &small(), |_, _, _| {}).unwrap();
    assert_eq!(cv.groups, 10);
    assert_eq!(cv.rows, 200);
    assert!(cv.r2_log_p99 > 0.8, "{cv:?}");
    assert!(cv.r2_error_share > 0.5, "{cv:?}");
    // Training is seeded: the same data, the same model.
    let a = ConfigModel::train(&ds, &small()).unwrap();
    let b = ConfigModel::train(&ds, &small()).unwrap();
    let row = vec![vec![
        60.0, 0.05, 5.0, 10.0, 15.0, 1.0, 0.3, 3.0, 64.0, 16.0, 3.0, 0.0, 0.0, 0.0, 50.0,
    ]];
    assert_eq!(a.predict(&row).unwrap(), b.predict(&row).unwrap());
    // Outlier detection on: the model says errors drop.
    let mut with_od = row.clone();
    with_od[0][11] = 5.0;
    let (off, on) = (a.predict(&row).unwrap()[0], a.predict(&with_od).unwrap()[0]);
    assert!(on.error_share < off.error_share, "{on:?} vs {off:?}");
    assert!(off.log_p99_spread >= 0.0);
}

#[test]
fn a_saved_model_loads_and_bad_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::parse_csv(&synthetic_csv(60)).unwrap();
    let m = ConfigModel::train(&ds, &small()).unwrap();
    let path = dir.path().join("model.json");
    m.save(&path).unwrap();
    let back = ConfigModel::load(&path).unwrap();
    let row = vec![ds.features[0].clone()];
    assert_eq!(m.predict(&row).unwrap(), back.predict(&row).unwrap());
    let missing = ConfigModel::load(&dir.path().join("nope.json")).unwrap_err();
    assert!(matches!(missing, ModelError::Read { .. }), "{missing}");
    std::fs::write(
        dir.path().join("bad.json"),
        "{\"version\": 1, \"features\": [",
    )
    .unwrap();
    let corrupt = ConfigModel::load(&dir.path().join("bad.json")).unwrap_err();
    assert!(corrupt.to_string().contains("bad.json"), "{corrupt}");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["version"] = 99.into();
    std::fs::write(dir.path().join("old.json"), v.to_string()).unwrap();
    let old = ConfigModel::load(&dir.path().join("old.json")).unwrap_err();
    assert!(
        old.to_string().contains("version 99") && old.to_string().contains("model train"),
        "{old}"
    );
    v["version"] = 1.into();
    v["forests"] = serde_json::json!([]);
    std::fs::write(dir.path().join("empty.json"), v.to_string()).unwrap();
    let empty = ConfigModel::load(&dir.path().join("empty.json")).unwrap_err();
    assert!(empty.to_string().contains("forest"), "{empty}");
}

#[test]
fn a_bad_sweep_row_is_named_by_line_and_column() {
    let mut csv = synthetic_csv(3);
    csv.push_str("9,g9,x");
    let e = Dataset::parse_csv(&csv).unwrap_err().to_string();
    assert!(e.starts_with("line 6:") && e.contains("obs_rps"), "{e}");
    let e = Dataset::parse_csv("point,group\n1,a\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column obs_rps"), "{e}");
}

#[test]
fn the_flat_trees_predict_exactly_what_smartcore_does() {
    let ds = Dataset::parse_csv(&synthetic_csv(120)).unwrap();
    let m = ConfigModel::train(&ds, &small()).unwrap();
    let rows = prepare(&ds.features);
    for f in &m.forests {
        assert_eq!(f.predict(&rows), f.predict_smartcore(&rows).unwrap());
        // Rows go through the trees in blocks of 64: a short block too.
        for n in [1, 3, 67] {
            let few = &rows[..n];
            assert_eq!(
                f.predict(few),
                f.predict_smartcore(few).unwrap(),
                "{n} rows"
            );
        }
    }
    // A row of the wrong width is refused, not misread.
    assert!(m.predict(&[vec![1.0; 3]]).is_err());
}

#[test]
fn rows_going_down_in_runs_get_exactly_what_one_at_a_time_gives() {
    // A service's situation: its observation fixed, the knobs varying by
    // candidate and the load by step, runs of 10 steps per candidate; and
    // runs of unrelated rows, a short last run, NaNs, and runs over 64.
    let ds = Dataset::parse_csv(&synthetic_csv(200)).unwrap();
    let m = ConfigModel::train(&ds, &small()).unwrap();
    let rows = ds.features.clone();
    let mut shared: Vec<Vec<f64>> = Vec::new();
    for cand in rows.iter().take(23) {
        for step in 0..10 {
            let mut x = rows[0].clone();
            x[0] = rows[0][0] * (1.0 + 0.05 * step as f64);
            x[8..].copy_from_slice(&cand[8..]);
            shared.push(x);
        }
    }
    let one = m.predict(&shared).unwrap();
    assert_eq!(m.predict_runs(&shared, 10).unwrap(), one);
    for run in [2, 7, 64, 100] {
        assert_eq!(
            m.predict_runs(&rows, run).unwrap(),
            m.predict(&rows).unwrap(),
            "runs of {run}"
        );
    }
    let mut holes = rows[..30].to_vec();
    for (i, r) in holes.iter_mut().enumerate() {
        r[i % 15] = f64::NAN;
    }
    holes[3] = vec![f64::NAN; 15];
    assert_eq!(
        m.predict_runs(&holes, 8).unwrap(),
        m.predict(&holes).unwrap()
    );
}

#[test]
fn a_tree_reduced_for_a_services_rows_is_smaller_and_leads_each_row_to_its_leaf() {
    // One observation, every knob set the sweep saw, loads over a span:
    // the splits on the observation go, the others stay.
    let ds = Dataset::parse_csv(&synthetic_csv(200)).unwrap();
    let m = ConfigModel::train(&ds, &small()).unwrap();
    let rows = prepare(&ds.features);
    let mut service: Vec<f64> = Vec::new();
    for cand in &rows {
        let mut x = rows[0].clone();
        x[0] = rows[0][0] * (1.0 + 0.1 * (cand[1] * 7.0).fract());
        x[8..].copy_from_slice(&cand[8..]);
        service.extend(x);
    }
    let width = FEATURES.len();
    let ranges: Vec<Range> = (0..width).map(|f| Range::of(&service, width, f)).collect();
    let (mut before, mut after) = (0, 0);
    for t in m.forests.iter().flat_map(|f| &f.flat) {
        let r = t.reduced(&ranges);
        before += t.nodes.len();
        after += r.nodes.len();
        for row in service.chunks_exact(width) {
            assert_eq!(r.predict(row), t.predict(row));
        }
    }
    assert!(after < before, "{after} nodes of {before}");
    // Rows of no common side keep the whole tree.
    let all: Vec<Range> = (0..width)
        .map(|f| Range::of(&rows.concat(), width, f))
        .collect();
    let t = &m.forests[0].flat[0];
    assert_eq!(t.reduced(&all).nodes.len(), t.nodes.len());
}
