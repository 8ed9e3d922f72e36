//! The GRU forecaster trained by `models/train_gru.py`, run by tract-onnx.
//! Input: 60 minutes of log-scaled requests/s centred on the window's mean,
//! with time-of-day and day-of-week encodings; output: the next 10 minutes
//! in the same scale (see `models/gru.json`).

use super::gru_plan::{fastest, Plan, PlanForm};
use super::Forecaster;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

pub const INPUT_MINUTES: usize = 60;
pub const OUTPUT_MINUTES: usize = 10;
pub const FEATURES: usize = 5;

/// A loaded model, shared by every chain's forecaster: the parsed graph
/// and one optimized plan per batch size used. tract plans a fixed batch
/// about twice as fast as a symbolic one (its kernels are chosen for the
/// exact shapes), and the agent's batch is its number of chains, which
/// rarely changes; so plans are made on first use and kept, in the faster
/// of two forms for that batch size (see [`super::gru_plan`]).
pub struct GruModel {
    graph: InferenceModel,
    plans: std::sync::Mutex<std::collections::BTreeMap<usize, (Plan, PlanForm)>>,
}

/// Distinct batch sizes kept planned; beyond it the cache starts over.
const PLANS_KEPT: usize = 8;

/// The repository's directory. Cargo sets `CARGO_MANIFEST_DIR` when it
/// runs a test or `cargo run`; that wins over the path compiled in, which
/// is stale when a build cache shared by two checkouts of the repository
/// holds a binary built in the other one.
pub fn repo_dir() -> std::path::PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|d| Path::new(&d).join(".."))
        .filter(|d| d.join("models").is_dir())
        .unwrap_or(compiled)
}

/// The default model shipped in the repository.
pub fn default_model_path() -> std::path::PathBuf {
    repo_dir().join("models/gru.onnx")
}

/// The model input for a window of 60 values whose first minute is
/// `first_minute` (minutes since the Unix epoch); also the window mean.
pub fn features(first_minute: u64, window: &[f64]) -> (Vec<f32>, f64) {
    let logs: Vec<f64> = window.iter().map(|v| v.max(0.0).ln_1p()).collect();
    let mean = logs.iter().sum::<f64>() / logs.len().max(1) as f64;
    let mut x = Vec::with_capacity(window.len() * FEATURES);
    for (i, l) in logs.iter().enumerate() {
        let m = first_minute + i as u64;
        let tod = 2.0 * std::f64::consts::PI * (m % 1440) as f64 / 1440.0;
        // 1970-01-01 was a Thursday: day 0 is weekday 4.
        let dow = 2.0 * std::f64::consts::PI * ((m / 1440 + 4) % 7) as f64 / 7.0;
        x.extend_from_slice(&[
            (l - mean) as f32,
            tod.sin() as f32,
            tod.cos() as f32,
            dow.sin() as f32,
            dow.cos() as f32,
        ]);
    }
    (x, mean)
}

fn input_tensor(batch: usize, input: &[f32]) -> TractResult<Tensor> {
    Ok(
        tract_ndarray::Array3::from_shape_vec((batch, INPUT_MINUTES, FEATURES), input.to_vec())?
            .into(),
    )
}

impl GruModel {
    /// Parses the model and plans a batch of one (so a model tract cannot
    /// run is refused here, not at the first forecast).
    pub fn load(path: &Path) -> TractResult<GruModel> {
        let graph = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(path)?;
        let model = GruModel {
            graph,
            plans: std::sync::Mutex::default(),
        };
        model.run_planned(1, Tensor::zero::<f32>(&[1, INPUT_MINUTES, FEATURES])?)?;
        Ok(model)
    }

    /// Runs `input` through the plan for `batch` windows, made on first use.
    fn run_planned(&self, batch: usize, input: Tensor) -> TractResult<TVec<TValue>> {
        let mut plans = self.plans();
        if !plans.contains_key(&batch) {
            let planned = fastest(&self.graph, batch)?;
            if plans.len() >= PLANS_KEPT {
                plans.clear();
            }
            plans.insert(batch, planned);
        }
        match plans.get_mut(&batch) {
            Some((state, _)) => state.run(tvec!(input.into())),
            None => Err(anyhow::anyhow!("no plan for batch {batch}")),
        }
    }

    /// The form the plan for `batch` took, once planned.
    pub fn plan_form(&self, batch: usize) -> Option<PlanForm> {
        self.plans().get(&batch).map(|(_, form)| *form)
    }

    /// The plans, also after a panic elsewhere poisoned the lock (a plan
    /// holds no invariant a half-done run could break).
    fn plans(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<usize, (Plan, PlanForm)>> {
        match self.plans.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Raw outputs for `batch` windows planned in `form` (not cached): how
    /// tests hold both forms to the same results.
    pub fn run_batch_in(
        &self,
        form: PlanForm,
        batch: usize,
        input: &[f32],
    ) -> TractResult<Vec<f32>> {
        let mut plan = super::gru_plan::plan(&self.graph, batch, form)?;
        let out = plan.run(tvec!(input_tensor(batch, input)?.into()))?;
        Ok(out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }

    /// Raw outputs for `batch` input windows laid end to end.
    pub fn run_batch(&self, batch: usize, input: &[f32]) -> TractResult<Vec<f32>> {
        let out = self.run_planned(batch, input_tensor(batch, input)?)?;
        Ok(out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }

    /// Raw model output for one input tensor (60 × 5, row-major).
    pub fn run(&self, input: &[f32]) -> TractResult<Vec<f32>> {
        self.run_batch(1, input)
    }

    /// Requests/s forecast for the 10 minutes after `window`.
    pub fn forecast(&self, first_minute: u64, window: &[f64]) -> Option<Vec<f64>> {
        let (x, mean) = features(first_minute, window);
        let y = self.run(&x).ok()?;
        Some(
            y.iter()
                .map(|v| (f64::from(*v) + mean).exp_m1().max(0.0))
                .collect(),
        )
    }
}

/// The GRU as an online [`Forecaster`]: once an hour of history is there,
/// every update leaves a window to run. [`run_pending`] runs the windows of
/// many chains in one batch; a forecast asked for before that runs its own.
pub struct Gru {
    model: Arc<GruModel>,
    window: VecDeque<f64>,
    first_minute: u64,
    /// The forecast of the current window, once run.
    next: std::sync::Mutex<Option<Vec<f64>>>,
    seen: usize,
}

impl Gru {
    pub fn new(model: Arc<GruModel>) -> Self {
        Gru {
            model,
            window: VecDeque::new(),
            first_minute: 0,
            next: std::sync::Mutex::new(None),
            seen: 0,
        }
    }

    fn next(&self) -> std::sync::MutexGuard<'_, Option<Vec<f64>>> {
        match self.next.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The model input of a window not yet run, and its mean.
    pub fn pending(&self) -> Option<(Vec<f32>, f64)> {
        if self.window.len() < INPUT_MINUTES || self.next().is_some() {
            return None;
        }
        let w: Vec<f64> = self.window.iter().copied().collect();
        Some(features(self.first_minute, &w))
    }

    fn set_output(&self, y: &[f32], mean: f64) {
        *self.next() = Some(
            y.iter()
                .map(|v| (f64::from(*v) + mean).exp_m1().max(0.0))
                .collect(),
        );
    }
}

/// Runs the pending windows of every GRU in `grus` as one batch; returns
/// how many ran (0 when none was pending or the run failed, in which case
/// each forecaster runs its own when asked).
pub fn run_pending(model: &GruModel, grus: &[&Gru]) -> usize {
    let mut who = Vec::new();
    let mut input = Vec::new();
    for g in grus {
        if let Some((x, mean)) = g.pending() {
            input.extend_from_slice(&x);
            who.push((*g, mean));
        }
    }
    if who.is_empty() {
        return 0;
    }
    let Ok(y) = model.run_batch(who.len(), &input) else {
        return 0;
    };
    for (i, (g, mean)) in who.iter().enumerate() {
        if let Some(out) = y.get(i * OUTPUT_MINUTES..(i + 1) * OUTPUT_MINUTES) {
            g.set_output(out, *mean);
        }
    }
    who.len()
}

impl Forecaster for Gru {
    fn name(&self) -> &'static str {
        "gru"
    }
    fn min_history(&self) -> usize {
        INPUT_MINUTES
    }
    fn update(&mut self, minute: u64, value: f64) {
        self.window.push_back(value);
        if self.window.len() > INPUT_MINUTES {
            self.window.pop_front();
        }
        self.first_minute = minute + 1 - self.window.len() as u64;
        self.seen += 1;
        *self.next() = None;
    }
    fn forecast(&self, h: usize) -> f64 {
        if let Some((x, mean)) = self.pending() {
            match self.model.run(&x) {
                Ok(y) => self.set_output(&y, mean),
                Err(_) => *self.next() = Some(Vec::new()),
            }
        }
        self.next()
            .as_ref()
            .and_then(|n| n.get(h.clamp(1, OUTPUT_MINUTES) - 1).copied())
            .unwrap_or_else(|| self.window.back().copied().unwrap_or(0.0))
    }
    fn as_gru(&self) -> Option<&Gru> {
        Some(self)
    }
    fn seen(&self) -> usize {
        self.seen
    }
}
