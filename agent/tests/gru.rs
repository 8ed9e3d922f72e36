//! The committed GRU model (models/gru.onnx) runs in tract and gives what
//! onnxruntime gave when it was trained (models/gru_check.json, written by
//! models/train_gru.py), and the Rust feature builder makes the same input
//! from the trace as the Python one. No Python needed here.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::forecast::eval::read_trace;
use meshtune_agent::forecast::gru::{default_model_path, features, GruModel, INPUT_MINUTES};
use meshtune_agent::forecast::gru_plan::PlanForm;

#[test]
fn tract_matches_onnxruntime_on_evaluation_windows() {
    let model = GruModel::load(&default_model_path()).expect("models/gru.onnx loads in tract");
    let dir = meshtune_agent::forecast::gru::repo_dir().join("models");
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("gru_check.json")).unwrap())
            .unwrap();
    let trace = meshtune_agent::forecast::gru::repo_dir()
        .join("../shared/data/traces")
        .join(check["trace"].as_str().unwrap());
    let (first, values) = read_trace(&trace).unwrap();
    let windows = check["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 8);
    let (mut inputs, mut wants) = (Vec::new(), Vec::new());
    for w in windows {
        let start = w["start"].as_u64().unwrap() as usize;
        let want_in: Vec<f32> = w["input"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let (got_in, _) = features(first + start as u64, &values[start..start + INPUT_MINUTES]);
        for (a, b) in got_in.iter().zip(&want_in) {
            assert!((a - b).abs() <= 1e-5, "window {start}: feature {a} vs {b}");
        }
        let want: Vec<f32> = w["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = model.run(&want_in).unwrap();
        assert_close(
            &got,
            &want,
            &format!("window {start}, the plan the model picked"),
        );
        inputs.extend_from_slice(&want_in);
        wants.extend_from_slice(&want);
    }
    // Each of the two plan forms the model picks from, on all eight at once.
    for form in [PlanForm::SlicesPushedUp, PlanForm::WholeProducts] {
        let got = model.run_batch_in(form, windows.len(), &inputs).unwrap();
        assert_close(&got, &wants, form.as_str());
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4,
            "{what}, output {i}: tract {a} vs onnxruntime {b}"
        );
    }
}

#[test]
fn the_gru_forecasts_a_slice_of_the_trace_sensibly() {
    let model = GruModel::load(&default_model_path()).unwrap();
    let trace =
        meshtune_agent::forecast::gru::repo_dir().join("../shared/data/traces/worldcup98_1min.csv");
    let (first, values) = read_trace(&trace).unwrap();
    // An evaluation-part window: the forecast stays within the range a
    // 10-minute step can plausibly move.
    let start = values.len() * 9 / 10;
    let w = &values[start..start + INPUT_MINUTES];
    let f = model.forecast(first + start as u64, w).unwrap();
    assert_eq!(f.len(), 10);
    let last = w[INPUT_MINUTES - 1];
    for v in f {
        assert!(
            v.is_finite() && v >= 0.0 && v < last * 3.0 + 10.0 && v > last / 3.0 - 10.0,
            "{v} from {last}"
        );
    }
}

/// The agent runs every chain's GRU window in one batch; each chain gets
/// what a run of its own would give.
#[test]
fn a_batch_of_chains_equals_their_runs_one_by_one() {
    use meshtune_agent::forecast::gru::{run_pending, Gru};
    use meshtune_agent::forecast::Forecaster;
    let model = std::sync::Arc::new(GruModel::load(&default_model_path()).unwrap());
    let trace =
        meshtune_agent::forecast::gru::repo_dir().join("../shared/data/traces/worldcup98_1min.csv");
    let (first, values) = read_trace(&trace).unwrap();
    let starts = [
        values.len() * 8 / 10,
        values.len() * 8 / 10 + 333,
        values.len() * 9 / 10,
    ];
    let feed = |g: &mut Gru, s: usize| {
        for (i, v) in values[s..s + INPUT_MINUTES].iter().enumerate() {
            g.update(first + (s + i) as u64, *v);
        }
    };
    let mut batched: Vec<Gru> = starts.iter().map(|_| Gru::new(model.clone())).collect();
    let mut alone: Vec<Gru> = starts.iter().map(|_| Gru::new(model.clone())).collect();
    for (i, s) in starts.iter().enumerate() {
        feed(&mut batched[i], *s);
        feed(&mut alone[i], *s);
    }
    let refs: Vec<&Gru> = batched.iter().collect();
    assert_eq!(run_pending(&model, &refs), 3, "three windows in one run");
    assert!(model.plan_form(3).is_some(), "batch 3 planned and kept");
    assert_eq!(run_pending(&model, &refs), 0, "nothing left to run");
    for (b, a) in batched.iter().zip(&alone) {
        for h in [1, 5, 10] {
            let (x, y) = (b.forecast(h), a.forecast(h));
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "h={h}: {x} vs {y}"
            );
        }
    }
    // Different windows, different forecasts: the batch kept them apart.
    assert_ne!(batched[0].forecast(10), batched[2].forecast(10));
}
