//! Learning on the job: the agent's own rows (what it observed of a
//! service, the knobs in force, what the service's tightest chain saw in
//! that window) and the refit that adds them to the shipped prior.
//!
//! A refit trains a new model on the prior plus the own rows except the
//! newest `holdout`, scores the model in use and the new one on those
//! held-out windows (the newest are the nearest to what comes next), and
//! keeps the one with the smaller error. Bounded: at most `max_rows` own
//! rows are kept (in memory and in the store), so a refit trains on at
//! most prior + `max_rows` rows.

use crate::learn::config_model::{
    ConfigModel, Dataset, ModelError, Predict, TrainParams, FEATURES,
};
use serde::{Deserialize, Serialize};

/// One window of one service as the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnRow {
    /// When the window ended (agent clock, seconds).
    pub at_s: u64,
    pub service: String,
    /// In [`FEATURES`] order: the observation, then the knobs in force.
    pub features: Vec<f64>,
    /// p99 (ms), error share, goodput of the service's tightest chain.
    pub p99_ms: f64,
    pub error_share: f64,
    pub goodput: f64,
}

impl OwnRow {
    /// The row as the model learns it (p99 as its log).
    fn outcome(&self) -> [f64; 3] {
        [self.p99_ms.max(1e-3).ln(), self.error_share, self.goodput]
    }

    pub fn is_valid(&self) -> bool {
        self.features.len() == FEATURES.len()
            && self.features.iter().all(|v| v.is_finite())
            && self.p99_ms.is_finite()
            && self.p99_ms > 0.0
    }
}

/// How the agent learns on the job (`config_model.learning`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefitParams {
    /// Own rows kept, newest last.
    pub max_rows: usize,
    /// The newest own rows held out to judge the refit.
    pub holdout: usize,
    pub train: TrainParams,
}

/// What a refit found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefitReport {
    pub prior_rows: usize,
    pub own_rows: usize,
    pub held_out: usize,
    /// Mean absolute error on the held-out windows (log p99 + error share
    /// + goodput, each an absolute difference) of the model in use.
    pub error_in_use: f64,
    /// Likewise of the refitted model.
    pub error_refit: f64,
    pub replaced: bool,
    pub seconds: f64,
}

/// Mean absolute error of `model` on `rows` (log p99, error share and
/// goodput differences summed per row).
pub fn validation_error(model: &impl Predict, rows: &[OwnRow]) -> Result<f64, ModelError> {
    if rows.is_empty() {
        return Ok(0.0);
    }
    let x: Vec<Vec<f64>> = rows.iter().map(|r| r.features.clone()).collect();
    let preds = model.predict(&x)?;
    Ok(rows
        .iter()
        .zip(preds)
        .map(|(r, p)| {
            let o = r.outcome();
            (p.p99_ms.max(1e-3).ln() - o[0]).abs()
                + (p.error_share - o[1]).abs()
                + (p.goodput - o[2]).abs()
        })
        .sum::<f64>()
        / rows.len() as f64)
}

/// Refits as the module says. `Ok((Some(model), report))` when the new
/// model validates better than `in_use`; `Ok((None, report))` keeps it.
/// Too few own rows to hold any out (or to train on) is an error that
/// names the counts.
pub fn refit(
    prior: &Dataset,
    own: &[OwnRow],
    in_use: &ConfigModel,
    params: &RefitParams,
) -> Result<(Option<ConfigModel>, RefitReport), ModelError> {
    let started = std::time::Instant::now();
    let own: Vec<&OwnRow> = own.iter().filter(|r| r.is_valid()).collect();
    if params.holdout == 0 || own.len() <= params.holdout {
        return Err(ModelError::Train(format!(
            "{} usable own rows: a refit needs more than the {} it holds out",
            own.len(),
            params.holdout
        )));
    }
    let split = own.len() - params.holdout;
    let held: Vec<OwnRow> = own[split..].iter().map(|r| (*r).clone()).collect();
    let mut ds = prior.clone();
    for r in &own[..split] {
        ds.features.push(r.features.clone());
        ds.outcomes.push(r.outcome());
        ds.groups.push(format!("own:{}", r.service));
    }
    let new = ConfigModel::train(&ds, &params.train)?;
    let error_in_use = validation_error(in_use, &held)?;
    let error_refit = validation_error(&new, &held)?;
    let replaced = error_refit < error_in_use;
    let report = RefitReport {
        prior_rows: prior.features.len(),
        own_rows: own.len(),
        held_out: held.len(),
        error_in_use,
        error_refit,
        replaced,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((replaced.then_some(new), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world where p99 = 10 ms × the first knob (pools) and nothing
    /// else matters; `shift` multiplies it (the lab is not the cluster).
    fn rows(n: usize, shift: f64, start: u64) -> Vec<OwnRow> {
        (0..n)
            .map(|i| {
                let pool = 1.0 + (i % 8) as f64;
                let mut f = vec![0.0; FEATURES.len()];
                f[0] = 50.0;
                f[8] = pool.exp2();
                OwnRow {
                    at_s: start + i as u64 * 60,
                    service: "reviews".into(),
                    features: f,
                    p99_ms: 10.0 * pool * shift,
                    error_share: 0.0,
                    goodput: 1.0,
                }
            })
            .collect()
    }

    fn dataset(r: &[OwnRow]) -> Dataset {
        Dataset {
            features: r.iter().map(|r| r.features.clone()).collect(),
            outcomes: r.iter().map(|r| r.outcome()).collect(),
            groups: r.iter().map(|_| "prior".to_string()).collect(),
        }
    }

    fn params() -> RefitParams {
        RefitParams {
            max_rows: 1000,
            holdout: 16,
            train: TrainParams {
                trees: 5,
                max_depth: 6,
                min_samples_leaf: 1,
                seed: 3,
            },
        }
    }

    #[test]
    fn a_refit_that_learns_the_new_world_replaces_the_model() {
        let prior = dataset(&rows(64, 1.0, 0));
        let in_use = ConfigModel::train(&prior, &params().train).unwrap();
        // Here every p99 is three times the lab's.
        let own = rows(64, 3.0, 10_000);
        let (new, report) = refit(&prior, &own, &in_use, &params()).unwrap();
        assert!(report.replaced && new.is_some(), "{report:?}");
        assert!(report.error_refit < report.error_in_use, "{report:?}");
        assert_eq!((report.own_rows, report.held_out), (64, 16));
    }

    #[test]
    fn a_refit_on_misleading_rows_keeps_the_model_in_use() {
        let prior = dataset(&rows(64, 1.0, 0));
        let in_use = ConfigModel::train(&prior, &params().train).unwrap();
        // Older own rows say p99 is ten times the lab's (a bad spell that
        // is over); the newest, held out, agree with the lab again.
        let mut own = rows(48, 10.0, 10_000);
        own.extend(rows(16, 1.0, 20_000));
        let (new, report) = refit(&prior, &own, &in_use, &params()).unwrap();
        assert!(!report.replaced && new.is_none(), "{report:?}");
        assert!(report.error_refit >= report.error_in_use, "{report:?}");
    }

    #[test]
    fn too_few_rows_to_hold_out_is_refused_with_the_counts() {
        let prior = dataset(&rows(64, 1.0, 0));
        let in_use = ConfigModel::train(&prior, &params().train).unwrap();
        let e = refit(&prior, &rows(10, 1.0, 0), &in_use, &params()).unwrap_err();
        assert!(e.to_string().contains("10 usable own rows"), "{e}");
    }
}
