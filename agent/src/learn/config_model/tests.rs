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
    v["version"] = FORMAT_VERSION.into();
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
    let width = WIDTH;
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

/// A row of [`FEATURES`]: a service answering at p50/p95/p99 = 10/20/30 ms
/// with no errors, and knobs set by name.
fn observed_row(knobs: &[(&str, f64)]) -> Vec<f64> {
    let mut r = vec![
        50.0, 0.0, 10.0, 20.0, 30.0, 0.5, 0.0, 3.0, 1024.0, 1024.0, 3.0, 0.0, 0.0, 0.0, 0.0,
    ];
    for (name, v) in knobs {
        let i = FEATURES.iter().position(|f| f == name).unwrap();
        r[i] = *v;
    }
    r
}

fn derived(row: &[f64], name: &str) -> f64 {
    let mut out = Vec::new();
    model_row(row, &mut out);
    assert_eq!(out.len(), WIDTH);
    out[FEATURES.len() + DERIVED.iter().position(|d| *d == name).unwrap()]
}

#[test]
fn the_tail_past_a_timeout_is_read_off_the_observed_quantiles() {
    let share = |t| tail_share(10.0, 20.0, 30.0, t);
    assert_eq!(share(0.0), 0.0, "no timeout cuts nothing");
    assert!((share(10.0) - 0.5).abs() < 1e-9);
    assert!((share(20.0) - 0.05).abs() < 1e-9);
    assert!((share(30.0) - 0.01).abs() < 1e-9);
    let mut last = 1.0;
    for t in [1.0, 5.0, 12.0, 25.0, 40.0, 100.0, 1000.0] {
        assert!(share(t) < last, "falls with the timeout: {t} ms");
        last = share(t);
    }
    assert!(share(100.0) < 0.01 && share(100.0) > 0.0);
}

#[test]
fn a_per_try_timeout_cuts_only_when_there_are_retries() {
    // Istio writes no retry policy without attempts, and so no per-try timeout.
    let none = observed_row(&[("knob_per_try_timeout_ms", 15.0)]);
    assert_eq!(derived(&none, "try_cut_share"), 0.0);
    let two = observed_row(&[
        ("knob_per_try_timeout_ms", 15.0),
        ("knob_retry_attempts", 2.0),
    ]);
    let cut = derived(&two, "try_cut_share");
    assert!(cut > 0.05 && cut < 0.5, "{cut}");
    // Three tries, each failing with the cut share.
    assert!((derived(&two, "all_tries_fail_share") - cut.powi(3)).abs() < 1e-12);
    // A route timeout that leaves room for one try only: all fail with it.
    let tight = observed_row(&[
        ("knob_per_try_timeout_ms", 15.0),
        ("knob_retry_attempts", 2.0),
        ("knob_timeout_ms", 16.0),
    ]);
    assert!(derived(&tight, "tries_in_time") < 1.1);
    // The slowest 1 % wait a cut try and a back-off: the caller's p99 is past
    // the server's 30 ms, and a route timeout caps it.
    assert!(derived(&two, "retried_p99_ms") > 30.0);
    assert_eq!(derived(&tight, "retried_p99_ms"), 16.0);
    assert_eq!(derived(&none, "retried_p99_ms"), 30.0);
}

#[test]
fn outlier_detection_leaves_an_erring_replica_in_less_the_fewer_errors_it_waits_for() {
    assert_eq!(unejected_share(0.5, 20.0, 0.0), 1.0, "off: always in");
    let quick = unejected_share(0.5, 20.0, 2.0);
    let slow = unejected_share(0.5, 20.0, 10.0);
    assert!(quick < 0.05, "{quick}");
    assert!(slow > quick && slow < 1.0, "{slow}");
    // A replica that hardly errs is hardly ever ejected.
    assert!(unejected_share(0.01, 20.0, 5.0) > 0.99);
}

#[test]
fn the_p99_model_carries_past_the_latencies_it_was_trained_on() {
    // The chain's p99 is 1.5 × the hop's; training sees hop p99s of 10–40
    // ms, the question is about 120 ms. A tree alone answers at most what it
    // saw (about 60 ms); a ratio to the hop's p99 carries.
    let mut s = String::from("# synthetic\npoint,group,");
    s.push_str(&FEATURES.join(","));
    s.push_str(",out_p99_ms,out_error_share,out_goodput\n");
    for i in 0..120 {
        let p99 = 10.0 + (i % 31) as f64;
        let mut r = observed_row(&[]);
        r[2] = p99 / 3.0;
        r[3] = p99 / 1.5;
        r[4] = p99;
        let cells: Vec<String> = r.iter().map(|v| v.to_string()).collect();
        s.push_str(&format!(
            "{i},g{},{},{},0,1\n",
            i / 20,
            cells.join(","),
            1.5 * p99
        ));
    }
    let ds = Dataset::parse_csv(&s).unwrap();
    let m = ConfigModel::train(&ds, &small()).unwrap();
    let mut far = observed_row(&[]);
    far[2] = 40.0;
    far[3] = 80.0;
    far[4] = 120.0;
    let p = m.predict(&[far]).unwrap()[0].p99_ms;
    assert!((p - 180.0).abs() < 10.0, "{p}");
}

#[test]
fn rows_that_differ_only_in_load_are_prepared_as_each_alone() {
    let base = observed_row(&[
        ("knob_per_try_timeout_ms", 15.0),
        ("knob_retry_attempts", 2.0),
        ("knob_consecutive_5xx", 3.0),
        ("obs_max_replica_error", 0.3),
    ]);
    let mut rows = Vec::new();
    for step in 0..5 {
        let mut r = base.clone();
        r[0] *= 1.0 + step as f64 / 4.0;
        r[5] *= 1.0 + step as f64 / 3.0;
        rows.push(r);
    }
    // Another candidate's run after it.
    rows.push(observed_row(&[("knob_timeout_ms", 20.0)]));
    let mut together = Vec::new();
    model_rows(&rows, &mut together);
    let alone: Vec<f64> = prepare(&rows).concat();
    assert_eq!(together, alone);
}
