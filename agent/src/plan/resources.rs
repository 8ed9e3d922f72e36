//! CPU per service so that every chain meets its objective at the least
//! total CPU, when services are shared by several chains (M9).
//!
//! **Model.** A service doing `demand_s` CPU-seconds of work per request,
//! offered `rps`, under a CPU limit of `c` cores enforced as the kubelet
//! does (a CFS quota of `c × 100 ms` per 100 ms period). A request runs at
//! a whole core's speed; it is delayed (a) behind others at that speed,
//! whose tail at percentile `p` Kingman's approximation puts at
//! `variability × ln(1 / (1 − p)) × demand_s × ρ₁ / (1 − ρ₁)` with
//! `ρ₁ = rps × demand_s` (`variability` = `(ca² + cs²) / 2`: 1 for random
//! arrivals and exponential work; fitted from measurements), and (b) by
//! the quota: when a period brings more work than `c × 100 ms`, the rest
//! waits for the next period. The work a period brings at percentile `p`
//! is `demand_s × N` with `N = rps × T + z_p × sqrt(2 × variability ×
//! rps × T) + 1` (the arrivals of a period at that percentile, normal
//! approximation, plus the request itself), which needs `c_p = demand_s ×
//! N / T` cores; below that, the delay is taken as `T × (1 − c / c_p)` (a
//! whole period when there is no quota, nothing at `c_p`). Plus `fixed_ms`
//! spent off the CPU. The quantile is convex and non-increasing in `c`,
//! and `c` must keep `rps × demand_s / c` at most [`MAX_UTILISATION`].
//! `meshtune-lab bench cpu-model` fits it to a real service under a real
//! CPU limit and reports how well it predicts p99. A chain's latency at
//! its percentile is bounded by the sum of its services' quantiles (the
//! sum of quantiles is at least the quantile of the sum: conservative).
//!
//! **Solver.** A linear programme (`good_lp` on the pure-Rust `microlp`
//! backend): minimise Σ cores subject to, per chain, Σ hop latency ≤ the
//! objective, each hop's latency bounded below by the piecewise-linear
//! interpolation of its convex quantile curve on a grid of core counts
//! (the interpolation lies above the curve, so an allocation the programme
//! accepts meets the objective under the model too). When no allocation
//! within `max_cpu` meets every objective, each chain may exceed its
//! objective by a share `s`, weighted by priority, and the programme first
//! minimises the largest weighted share (a fair degradation that favours
//! the more important chains), then the cores. The services at their
//! `max_cpu` on the chains that still miss are the binding limits.

use good_lp::{
    constraint, microlp, variable, Expression, ProblemVariables, ResolutionError, Solution,
    SolverModel, Variable,
};
use meshtune_filter_core::control::Priority;
use serde::Serialize;
use std::collections::BTreeMap;

/// Highest utilisation an allocation may plan for: above it the queue's
/// latency is too sensitive to the load forecast's error to plan on.
pub const MAX_UTILISATION: f64 = 0.9;
/// Grid points per service on which its quantile curve is interpolated.
const GRID: usize = 32;
/// Cores are allocated in Kubernetes' unit, rounded up to 10 millicores.
const STEP_CORES: f64 = 0.01;

/// What the allocation knows of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    pub name: String,
    /// CPU-seconds of work per request (measured: CPU used ÷ requests).
    pub demand_s: f64,
    /// Latency a request spends off the CPU, ms.
    pub fixed_ms: f64,
    /// How bursty the waiting is: `(ca² + cs²) / 2` in Kingman's
    /// approximation (1: random arrivals, exponential work).
    pub variability: f64,
    /// Load to plan for, requests per second (the forecast's upper quantile).
    pub rps: f64,
    /// Replicas the load and the cores are split over evenly: each has a
    /// quota of its own, so a period's burst is per replica.
    pub replicas: usize,
    pub min_cpu: f64,
    pub max_cpu: f64,
}

impl ServiceModel {
    /// Least cores that keep utilisation at [`MAX_UTILISATION`].
    fn busy_floor(&self) -> f64 {
        (self.rps * self.demand_s / MAX_UTILISATION).max(self.min_cpu)
    }

    /// Cores a 100 ms period's work needs at `percentile`: below them the
    /// tail waits whole periods for the quota (a backlog the linear wait
    /// of [`Self::quantile_ms`] understates), so no allocation plans for
    /// less unless `max_cpu` allows no more.
    pub fn period_cores(&self, percentile: f64) -> f64 {
        let replicas = self.replicas.max(1) as f64;
        let arrivals = self.rps / replicas * PERIOD_S;
        let n = arrivals + z_score(percentile) * (2.0 * self.variability * arrivals).sqrt() + 1.0;
        replicas * self.demand_s * n / PERIOD_S
    }

    /// The least cores an allocation gives the service.
    fn floor_cores(&self, percentile: f64) -> f64 {
        self.busy_floor()
            .max(self.period_cores(percentile).min(self.max_cpu))
    }

    /// The model's latency at `percentile` with `cores`, ms (infinite
    /// when the service cannot keep up).
    pub fn quantile_ms(&self, cores: f64, percentile: f64) -> f64 {
        if cores <= 0.0 || self.rps * self.demand_s >= cores {
            return f64::INFINITY;
        }
        let (queue_s, throttle_s) = self.delays_s(cores, percentile);
        self.fixed_ms + 1000.0 * (self.demand_s + queue_s + throttle_s)
    }

    /// The two delays of the model at `percentile`, seconds: behind other
    /// requests at a core's speed, and waiting for the quota's next period.
    pub fn delays_s(&self, cores: f64, percentile: f64) -> (f64, f64) {
        let rho1 = (self.rps / self.replicas.max(1) as f64 * self.demand_s).min(MAX_UTILISATION);
        let queue =
            self.variability * tail_factor(percentile) * self.demand_s * rho1 / (1.0 - rho1);
        let needed = self.period_cores(percentile);
        let throttle = PERIOD_S * (1.0 - cores / needed).max(0.0);
        (queue, throttle)
    }
}

/// The CFS period the kubelet's quota is set per (100 ms).
pub const PERIOD_S: f64 = crate::data::usage::CFS_PERIOD_S;

/// Largest variability a throttling measurement is read as (a service
/// throttled in most periods with room to spare under the model says its
/// quota is far too small, not how bursty it is: beyond this, it is capped).
pub const MAX_FITTED_VARIABILITY: f64 = 50.0;

/// The variability under which the model's period floor explains the
/// throttling measured: a replica under `limit_cores` (its quota), offered
/// `rps` (per replica, per wall second) of `demand_s` CPU-seconds each,
/// was throttled in `share` of all its 100 ms periods. The model has a
/// period throttled when its arrivals exceed what the quota covers less the
/// request itself (`limit × T / demand − 1`), arrivals normal with mean
/// `λ = rps × T` and variance `2 × variability × λ`; solving
/// `P(throttled) = share` for the variability reads the kernel's own
/// count as the burstiness the quota has to cover (bursts, threads taking
/// the quota in slices, whatever the cause). `None` when the measurement
/// says nothing: no throttling, no load, or a quota the model already
/// expects to be throttled at least half the time. One interval alone:
/// where [`variability_bound_from_periods`]'s likelihood peaks for it (its
/// closed form, which the tests check that against).
#[cfg(test)]
pub fn variability_from_throttling(
    demand_s: f64,
    rps: f64,
    limit_cores: f64,
    share: f64,
) -> Option<f64> {
    let arrivals = rps * PERIOD_S;
    if !(demand_s > 0.0 && arrivals > 0.0 && limit_cores > 0.0 && share > 0.0) {
        return None;
    }
    let room = period_room(demand_s, arrivals, limit_cores);
    if room <= 0.0 {
        return None;
    }
    let z = z_score(100.0 * (1.0 - share.min(0.5)));
    if z <= 1e-6 {
        return Some(MAX_FITTED_VARIABILITY);
    }
    Some(((room / z).powi(2) / (2.0 * arrivals)).min(MAX_FITTED_VARIABILITY))
}

/// How many more arrivals than the mean a period can take before the
/// quota throttles it: the requests its quota covers, less the request
/// itself and the `arrivals` a period brings on average (the model's
/// throttled period, read both ways below).
fn period_room(demand_s: f64, arrivals: f64, limit_cores: f64) -> f64 {
    limit_cores * PERIOD_S / demand_s - 1.0 - arrivals
}

/// A quiet interval: a replica under `limit_cores`, offered `rps` (per
/// replica, per wall second), throttled in none of its `periods`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuietInterval {
    pub rps: f64,
    pub limit_cores: f64,
    pub periods: f64,
}

/// `ln 20`: a variability under which the quiet intervals had less than a
/// 5 % chance of being as quiet as they were is ruled out.
const QUIET_EVIDENCE: f64 = 2.995_732_273_553_991;

/// The largest variability the model can keep while the kernel counted no
/// throttled period in `quiet` (each period throttled with the model's
/// probability at that interval's quota and load, as in
/// [`variability_from_throttling`]; all of them quiet has probability
/// `Π (1 − share)^periods`, which must stay at least 5 %). A service whose
/// bursts are smaller than planned (smoother arrivals, fewer threads
/// contending) shows it this way: the kernel's count corrects the model
/// downward as well as upward. `None` when the quiet periods rule out no
/// variability up to [`MAX_FITTED_VARIABILITY`] (too few, or under quotas
/// so generous that even bursty arrivals would rarely be throttled).
pub fn variability_bound_from_quiet(demand_s: f64, quiet: &[QuietInterval]) -> Option<f64> {
    if demand_s.is_nan() || demand_s <= 0.0 {
        return None;
    }
    // −ln P(every period quiet) under variability `v`.
    let surprise = |v: f64| -> f64 {
        quiet
            .iter()
            .filter(|q| q.rps > 0.0 && q.limit_cores > 0.0 && q.periods > 0.0)
            .map(|q| {
                let arrivals = q.rps * PERIOD_S;
                let room = period_room(demand_s, arrivals, q.limit_cores);
                let share = if room <= 0.0 {
                    // The model expects this quota throttled half the time
                    // or more whatever the variability.
                    0.5
                } else {
                    throttled_chance(room, arrivals, v)
                };
                -q.periods * (1.0 - share.min(1.0 - 1e-12)).ln()
            })
            .sum()
    };
    if surprise(MAX_FITTED_VARIABILITY) <= QUIET_EVIDENCE {
        return None;
    }
    if surprise(0.0) > QUIET_EVIDENCE {
        // Quiet where the model must throttle at any variability: as
        // smooth as it can plan for.
        return Some(0.0);
    }
    let (mut lo, mut hi) = (0.0, MAX_FITTED_VARIABILITY);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if surprise(mid) <= QUIET_EVIDENCE {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// An interval of a replica's 100 ms periods under one quota: offered
/// `rps` (per replica, per wall second), `throttled` of its `periods`
/// counted throttled by the kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodCount {
    pub rps: f64,
    pub limit_cores: f64,
    pub periods: f64,
    pub throttled: f64,
}

/// The model's chance that a period is throttled at `variability`, where
/// arrivals have `room` more than their mean `arrivals` to fill before the
/// quota runs out ([`period_room`]).
fn throttled_chance(room: f64, arrivals: f64, variability: f64) -> f64 {
    if variability <= 0.0 {
        return 0.0;
    }
    normal_upper_tail(room / (2.0 * variability * arrivals).sqrt())
}

/// The largest variability the kernel's counts in `intervals` do not rule
/// out: every interval's periods throttled independently with the model's
/// chance at that interval's quota and load (as the period floor has it),
/// the binomial log-likelihood of the counts is maximised over the
/// variability, and the bound is the upper end of its 1/20 likelihood
/// interval (log-likelihood within `ln 20` of the maximum). All the kept
/// intervals weigh in by their number of periods: a single throttled
/// period among 30 (a 3 % share, read alone as a very bursty service)
/// counts as one of the hundreds the intervals hold, while throttling that
/// repeats interval after interval pins the variability high. With no
/// throttled period this is [`variability_bound_from_quiet`]'s bound (the
/// maximum is then at 0 with likelihood 1). Intervals under a quota the
/// model throttles at any variability (no room) carry nothing on it and
/// are left out. `None` when no interval says anything; at most
/// [`MAX_FITTED_VARIABILITY`].
pub fn variability_bound_from_periods(demand_s: f64, intervals: &[PeriodCount]) -> Option<f64> {
    if demand_s.is_nan() || demand_s <= 0.0 {
        return None;
    }
    let usable: Vec<(f64, f64, f64, f64)> = intervals
        .iter()
        .filter(|c| c.rps > 0.0 && c.limit_cores > 0.0 && c.periods > 0.0)
        .filter_map(|c| {
            let arrivals = c.rps * PERIOD_S;
            let room = period_room(demand_s, arrivals, c.limit_cores);
            (room > 0.0).then_some((room, arrivals, c.periods, c.throttled.clamp(0.0, c.periods)))
        })
        .collect();
    if usable.is_empty() {
        return None;
    }
    let log_likelihood = |v: f64| -> f64 {
        usable
            .iter()
            .map(|&(room, arrivals, n, k)| {
                let p = throttled_chance(room, arrivals, v).clamp(1e-300, 1.0 - 1e-12);
                k * p.ln() + (n - k) * (1.0 - p).ln()
            })
            .sum()
    };
    // The maximum on a log grid (each interval's chance rises with the
    // variability, so the likelihood has one peak), then the bound above it
    // by bisection.
    let grid: Vec<f64> = (0..=200)
        .map(|i| 1e-3 * (MAX_FITTED_VARIABILITY / 1e-3).powf(i as f64 / 200.0))
        .collect();
    let (best_v, best) =
        grid.iter()
            .map(|&v| (v, log_likelihood(v)))
            .fold(
                (0.0, f64::NEG_INFINITY),
                |a, b| if b.1 > a.1 { b } else { a },
            );
    let ruled_out = |v: f64| best - log_likelihood(v) > QUIET_EVIDENCE;
    if !ruled_out(MAX_FITTED_VARIABILITY) {
        return Some(MAX_FITTED_VARIABILITY);
    }
    let (mut lo, mut hi) = (best_v, MAX_FITTED_VARIABILITY);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if ruled_out(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(lo)
}

/// `P(Z > z)` for a standard normal `Z` (Abramowitz and Stegun 7.1.26 on
/// erfc, within 1.5e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * erfc
    } else {
        1.0 - 0.5 * erfc
    }
}

/// `ln(1 / (1 − p))` for a percentile `p` in (0, 100).
fn tail_factor(percentile: f64) -> f64 {
    let p = (percentile / 100.0).clamp(0.5, 0.999_999);
    (1.0 / (1.0 - p)).ln()
}

/// The standard normal quantile at percentile `p` in [50, 100)
/// (Abramowitz and Stegun 26.2.23, within 4.5e-4).
fn z_score(percentile: f64) -> f64 {
    let q = 1.0 - (percentile / 100.0).clamp(0.5, 0.999_999);
    let t = (-2.0 * q.ln()).sqrt();
    t - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
        / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t)
}

/// A chain's objective and the services it goes through.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainObjective {
    pub name: String,
    pub slo_ms: f64,
    pub percentile: f64,
    pub priority: Priority,
    pub services: Vec<String>,
}

/// Weight of a chain's excess over its objective when not every objective
/// can be met: the more important, the smaller the share it is left.
fn priority_weight(p: Priority) -> f64 {
    match p {
        Priority::High => 4.0,
        Priority::Normal => 2.0,
        Priority::Low => 1.0,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainOutcome {
    /// Latency at the chain's percentile the model predicts, ms.
    pub predicted_ms: f64,
    /// Share of requests within the objective the model predicts (the
    /// tail is exponential: `1 − (1 − p)^(slo / predicted)`).
    pub predicted_attainment: f64,
    pub meets: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Allocation {
    /// Cores per service.
    pub cores: BTreeMap<String, f64>,
    pub chains: BTreeMap<String, ChainOutcome>,
    /// Every chain meets its objective.
    pub feasible: bool,
    /// Services at `max_cpu` on a chain that misses: the limits that bind.
    pub binding: Vec<String>,
    /// Jain's fairness index over the chains' predicted attainment
    /// (1: all alike; 1/n: one chain gets everything).
    pub fairness: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocationError {
    #[error("chain {chain}: service {service} has no model")]
    UnknownService { chain: String, service: String },
    #[error("service {service}: {field} {problem}")]
    BadModel {
        service: String,
        field: &'static str,
        problem: &'static str,
    },
    #[error("service {service}: min_cpu cannot serve {rps:.1} req/s under max_cpu {max_cpu}")]
    CannotKeepUp {
        service: String,
        rps: f64,
        max_cpu: f64,
    },
    #[error("solver: {0}")]
    Solver(String),
}

/// Jain's fairness index of `xs`: (Σx)² / (n Σx²).
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if xs.is_empty() || sq <= 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

fn validate(s: &ServiceModel) -> Result<(), AllocationError> {
    let bad = |field, problem| AllocationError::BadModel {
        service: s.name.clone(),
        field,
        problem,
    };
    if !(s.demand_s.is_finite() && s.demand_s > 0.0) {
        return Err(bad("demand_s", "must be a positive number"));
    }
    if !(s.fixed_ms.is_finite() && s.fixed_ms >= 0.0) {
        return Err(bad("fixed_ms", "must be ≥ 0"));
    }
    if !(s.variability.is_finite() && s.variability >= 0.0) {
        return Err(bad("variability", "must be ≥ 0"));
    }
    if !(s.rps.is_finite() && s.rps >= 0.0) {
        return Err(bad("rps", "must be ≥ 0"));
    }
    if !(s.min_cpu >= 0.0 && s.min_cpu <= s.max_cpu && s.max_cpu.is_finite()) {
        return Err(bad("min_cpu", "must be ≥ 0 and ≤ max_cpu"));
    }
    if s.busy_floor() > s.max_cpu {
        return Err(AllocationError::CannotKeepUp {
            service: s.name.clone(),
            rps: s.rps,
            max_cpu: s.max_cpu,
        });
    }
    Ok(())
}

/// Chords of `f` between consecutive grid points from `lo` to `hi`, as
/// `(intercept, slope)`: their maximum is the interpolation of `f`.
fn chords(lo: f64, hi: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    if hi - lo < 1e-9 {
        return vec![(f(lo), 0.0)];
    }
    // Denser where the curve bends most (near the floor): geometric steps.
    let points: Vec<f64> = (0..GRID)
        .map(|i| {
            let t = i as f64 / (GRID - 1) as f64;
            lo + (hi - lo) * (t * t)
        })
        .collect();
    points
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let slope = (f(b) - f(a)) / (b - a);
            (f(a) - slope * a, slope)
        })
        .collect()
}

/// The least-CPU allocation meeting every chain's objective under the
/// model, or, when none does within the limits, the fairest degradation.
pub fn allocate(
    services: &[ServiceModel],
    chains: &[ChainObjective],
) -> Result<Allocation, AllocationError> {
    for s in services {
        validate(s)?;
    }
    let by_name: BTreeMap<&str, &ServiceModel> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    for c in chains {
        for s in &c.services {
            if !by_name.contains_key(s.as_str()) {
                return Err(AllocationError::UnknownService {
                    chain: c.name.clone(),
                    service: s.clone(),
                });
            }
        }
    }
    // The highest percentile any chain through a service declares: its
    // quota must cover a period's work there.
    let percentile = |s: &ServiceModel| {
        chains
            .iter()
            .filter(|c| c.services.contains(&s.name))
            .map(|c| c.percentile)
            .fold(f64::NAN, f64::max)
    };
    let floor = |s: &ServiceModel| {
        let p = percentile(s);
        s.floor_cores(if p.is_nan() { 99.0 } else { p })
    };
    // A service's latency enters each chain at that chain's percentile:
    // one latency variable per (chain, service).
    let mut vars = ProblemVariables::new();
    let cores: BTreeMap<&str, Variable> = services
        .iter()
        .map(|s| {
            let v = vars.add(variable().min(floor(s)).max(s.max_cpu));
            (s.name.as_str(), v)
        })
        .collect();
    let excess: Vec<Variable> = chains
        .iter()
        .map(|_| vars.add(variable().min(0.0)))
        .collect();
    let worst = vars.add(variable().min(0.0));
    let mut latency: Vec<(usize, &ServiceModel, Variable)> = Vec::new();
    for (ci, c) in chains.iter().enumerate() {
        for s in &c.services {
            if let Some(m) = by_name.get(s.as_str()) {
                latency.push((ci, m, vars.add(variable().min(0.0))));
            }
        }
    }
    // Excess weighs far more than cores: degrade only when forced to.
    let total_cores: Expression = cores.values().sum();
    let cpu_scale: f64 = services.iter().map(|s| s.max_cpu).sum::<f64>().max(1.0);
    let mut problem = vars
        .minimise(worst * (1000.0 * cpu_scale) + total_cores)
        .using(microlp);
    for &(ci, m, t) in &latency {
        let p = chains[ci].percentile;
        let c = cores[m.name.as_str()];
        for (a, b) in chords(floor(m), m.max_cpu, |x| m.quantile_ms(x, p)) {
            problem = problem.with(constraint!(t >= a + b * c));
        }
    }
    for (ci, c) in chains.iter().enumerate() {
        let sum: Expression = latency
            .iter()
            .filter(|(i, _, _)| *i == ci)
            .map(|(_, _, t)| *t)
            .sum();
        let e = excess[ci];
        problem = problem.with(constraint!(sum <= c.slo_ms + c.slo_ms * e));
        let w = priority_weight(c.priority);
        problem = problem.with(constraint!(worst >= w * e));
    }
    let solution = problem.solve().map_err(|e| match e {
        ResolutionError::Infeasible => AllocationError::Solver("infeasible".into()),
        other => AllocationError::Solver(other.to_string()),
    })?;
    let alloc: BTreeMap<String, f64> = services
        .iter()
        .map(|s| {
            let raw = solution.value(cores[s.name.as_str()]);
            let rounded = ((raw - 1e-9) / STEP_CORES).ceil() * STEP_CORES;
            (s.name.clone(), rounded.clamp(floor(s), s.max_cpu))
        })
        .collect();
    Ok(judge(services, chains, alloc))
}

/// What the model predicts for each chain under `cores`.
pub fn judge(
    services: &[ServiceModel],
    chains: &[ChainObjective],
    cores: BTreeMap<String, f64>,
) -> Allocation {
    let by_name: BTreeMap<&str, &ServiceModel> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut outcomes = BTreeMap::new();
    let mut binding = Vec::new();
    for c in chains {
        let predicted_ms: f64 = c
            .services
            .iter()
            .filter_map(|s| {
                let m = by_name.get(s.as_str())?;
                Some(m.quantile_ms(*cores.get(s)?, c.percentile))
            })
            .sum();
        // Rounding to the millicore step may only add cores, but allow for
        // the float error of the solver.
        let meets = predicted_ms <= c.slo_ms * (1.0 + 1e-6);
        if !meets {
            for s in &c.services {
                if let (Some(m), Some(v)) = (by_name.get(s.as_str()), cores.get(s)) {
                    if *v >= m.max_cpu - 1e-9 && !binding.contains(s) {
                        binding.push(s.clone());
                    }
                }
            }
        }
        let p = (c.percentile / 100.0).clamp(0.0, 0.999_999);
        let predicted_attainment = if predicted_ms.is_finite() && predicted_ms > 0.0 {
            1.0 - (1.0 - p).powf(c.slo_ms / predicted_ms)
        } else {
            0.0
        };
        outcomes.insert(
            c.name.clone(),
            ChainOutcome {
                predicted_ms,
                predicted_attainment,
                meets,
            },
        );
    }
    let attainments: Vec<f64> = outcomes.values().map(|o| o.predicted_attainment).collect();
    Allocation {
        feasible: outcomes.values().all(|o| o.meets),
        fairness: jain(&attainments),
        chains: outcomes,
        cores,
        binding,
    }
}

/// Headroom over the working set a memory allocation keeps (what VPA's
/// recommender adds to its target: 15 %).
pub const MEMORY_MARGIN: f64 = 0.15;

/// A service's memory allocation, MiB, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryAllocation {
    pub mib: f64,
    /// `max_memory` is below what the service was seen to need: the
    /// allocation stays at the observed peak (no OOM kill), above the bound.
    pub above_max: bool,
}

/// Memory from the observed working set (MiB samples over the history):
/// its 90th percentile plus [`MEMORY_MARGIN`], within `[min, max]`, and
/// never below the highest sample seen plus the margin (what the service
/// has needed would be killed for). `None` without samples.
pub fn memory_allocation(samples_mib: &[f64], min: f64, max: f64) -> Option<MemoryAllocation> {
    let mut v: Vec<f64> = samples_mib
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let peak = v[v.len() - 1];
    let p90 = v[((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1];
    let wanted = (p90 * (1.0 + MEMORY_MARGIN)).clamp(min, max.max(min));
    // The margin over the peak too: a process that grows a little past
    // what was seen must not be killed for it.
    Some(MemoryAllocation {
        mib: wanted.max(peak * (1.0 + MEMORY_MARGIN)).ceil(),
        above_max: peak > max,
    })
}

#[cfg(test)]
mod tests;
