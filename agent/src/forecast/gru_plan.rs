//! How the GRU is planned for one batch size. tract's declutter pass
//! `PushSliceUp` rewrites a slice of a matrix product's output as the
//! product of a slice of its weights: each of the unrolled model's per-step
//! gate and time slices becomes a matrix product of its own (358 of them for
//! 60 steps instead of 61). With many windows per batch that saves copying
//! the slices; with few, the fixed cost of each extra product (packing,
//! dispatch, a kernel picked for a narrow shape) outweighs it. Measured on
//! the committed model: 34.8 vs 24.1 µs per series at batch 100, 22.4 vs
//! 34.7 at batch 1,000 (pushed vs whole). Where the two cross depends on the
//! machine, so both are planned and the faster kept, once per batch size.

use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::optim::Optimizer;

use super::gru::{FEATURES, INPUT_MINUTES};

/// A plan and its run state, kept between runs (a fresh state per run
/// would set up every node's state again each time).
pub type Plan = TypedSimpleState;

/// Which way the model's slices were planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanForm {
    /// tract's default: slices pushed up into the matrix products.
    SlicesPushedUp,
    /// Every matrix product kept whole, its output sliced.
    WholeProducts,
}

impl PlanForm {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanForm::SlicesPushedUp => "slices pushed up",
            PlanForm::WholeProducts => "whole products",
        }
    }
}

/// Plans `graph` for `batch` windows in `form`.
pub fn plan(graph: &InferenceModel, batch: usize, form: PlanForm) -> TractResult<Plan> {
    let mut typed = graph
        .clone()
        .with_input_fact(0, f32::fact([batch, INPUT_MINUTES, FEATURES]).into())?
        .into_typed()?;
    let mut declutter = Optimizer::declutter();
    if form == PlanForm::WholeProducts {
        let before = declutter.passes.len();
        declutter
            .passes
            .retain(|p| format!("{p:?}") != "PushSliceUp");
        anyhow::ensure!(
            declutter.passes.len() + 1 == before,
            "tract's declutter passes no longer include PushSliceUp"
        );
    }
    declutter.optimize(&mut typed)?;
    typed.optimize()?;
    typed.into_runnable()?.spawn()
}

/// Both forms planned for `batch`, each timed on a zero input (the cost
/// does not depend on the values) after a first run that warms it; the
/// faster kept. A form tract cannot plan is skipped; the error of the
/// default form is returned when neither plans.
pub fn fastest(graph: &InferenceModel, batch: usize) -> TractResult<(Plan, PlanForm)> {
    let input = Tensor::zero::<f32>(&[batch, INPUT_MINUTES, FEATURES])?;
    let mut best: Option<(Duration, Plan, PlanForm)> = None;
    let mut first_error = None;
    for form in [PlanForm::SlicesPushedUp, PlanForm::WholeProducts] {
        let timed = plan(graph, batch, form).and_then(|mut p| {
            p.run(tvec!(input.clone().into()))?;
            let mut fastest = Duration::MAX;
            for _ in 0..2 {
                let t0 = Instant::now();
                p.run(tvec!(input.clone().into()))?;
                fastest = fastest.min(t0.elapsed());
            }
            Ok((fastest, p))
        });
        match timed {
            Ok((t, p)) if best.as_ref().is_none_or(|b| t < b.0) => best = Some((t, p, form)),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (best, first_error) {
        (Some((_, p, form)), _) => Ok((p, form)),
        (None, Some(e)) => Err(e),
        (None, None) => Err(anyhow::anyhow!("no plan for batch {batch}")),
    }
}
