//! The configuration model: what a service's chains will see (p99, error
//! share, goodput) given what the agent observes of the service and the
//! knobs meshtune writes for it. A forward model, so that candidate
//! configurations can be scored before one is written.
//!
//! **Form.** One bagged forest of regression trees (smartcore's CART
//! trees, each fitted on a seeded bootstrap sample of the rows) per
//! outcome: log p99 (latency spans orders of magnitude), error share and
//! goodput. A prediction is the mean over the trees; their spread
//! (standard deviation) is the model's own uncertainty, which a decision
//! takes as its safety margin.
//!
//! **Data.** The rows of `meshtune-lab sweep` (`models/config-sweep.csv.gz`;
//! its header documents every column). **Evaluation**: grouped
//! cross-validation, each group (trace segment × fault kind) held out
//! whole and predicted by a model trained on the others, never random rows
//! (neighbouring minutes of one run would leak into each other).
//!
//! **File.** serde JSON with a format version; a missing, corrupt or
//! other-version file is refused with the reason, and the agent keeps its
//! rule-based decisions.

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::tree::decision_tree_regressor::{
    DecisionTreeRegressor, DecisionTreeRegressorParameters,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

/// The file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// The model's inputs, in order: sweep columns (the knobs that span orders
/// of magnitude enter as log2). What the agent observes is the server
/// side of the hop (the replicas' own inbound sidecars), which the
/// caller's knobs hardly shape: a timeout or a retry cuts what the caller
/// sees, not how long the replicas take or how often they fail — so the
/// model can score knobs other than those in force.
pub const FEATURES: [&str; 15] = [
    "obs_rps",
    "obs_error_rate",
    "obs_p50_ms",
    "obs_p95_ms",
    "obs_p99_ms",
    "obs_inflight",
    "obs_max_replica_error",
    "obs_replicas_up",
    "knob_http2_max_requests",
    "knob_http1_max_pending",
    "knob_max_retries",
    "knob_consecutive_5xx",
    "knob_timeout_ms",
    "knob_retry_attempts",
    "knob_per_try_timeout_ms",
];

/// Features entered as log2 (pool sizes).
const LOG_FEATURES: [&str; 2] = ["knob_http2_max_requests", "knob_http1_max_pending"];

/// The outcomes, in order.
pub const OUTCOMES: [&str; 3] = ["log_p99", "error_share", "goodput"];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error(
        "{path}: format version {found}, this agent reads version {FORMAT_VERSION}: retrain it \
         with `meshtune-agent model train`"
    )]
    Version { path: String, found: u64 },
    #[error("{path}: not a configuration model: {message}")]
    Corrupt { path: String, message: String },
    #[error("training: {0}")]
    Train(String),
}

/// Rows of a sweep: features (as measured, in [`FEATURES`] order),
/// outcomes and cross-validation groups.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub features: Vec<Vec<f64>>,
    /// log p99 (ms), error share, goodput.
    pub outcomes: Vec<[f64; 3]>,
    pub groups: Vec<String>,
}

impl Dataset {
    /// Parses the sweep CSV (`#` lines are its documentation).
    pub fn parse_csv(text: &str) -> Result<Dataset, ModelError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
        let (hl, header) = lines.next().ok_or(ModelError::Parse {
            line: 1,
            message: "no header".into(),
        })?;
        let names: Vec<&str> = header.split(',').collect();
        let col = |n: &str| {
            names
                .iter()
                .position(|c| *c == n)
                .ok_or_else(|| ModelError::Parse {
                    line: hl + 1,
                    message: format!("no column {n}"),
                })
        };
        let feature_cols = FEATURES
            .iter()
            .map(|f| col(f))
            .collect::<Result<Vec<_>, _>>()?;
        let (p99, err, good, group) = (
            col("out_p99_ms")?,
            col("out_error_share")?,
            col("out_goodput")?,
            col("group")?,
        );
        let mut ds = Dataset::default();
        for (i, line) in lines {
            let cells: Vec<&str> = line.split(',').collect();
            let num = |c: usize| -> Result<f64, ModelError> {
                cells
                    .get(c)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| ModelError::Parse {
                        line: i + 1,
                        message: format!("{}: not a number", names[c]),
                    })
            };
            let row = feature_cols
                .iter()
                .map(|c| num(*c))
                .collect::<Result<Vec<f64>, _>>()?;
            let p = num(p99)?;
            // A minute without answers has no p99: nothing to learn from.
            if p <= 0.0 {
                continue;
            }
            ds.features.push(row);
            ds.outcomes.push([p.ln(), num(err)?, num(good)?]);
            ds.groups
                .push(cells.get(group).copied().unwrap_or("").to_owned());
        }
        if ds.features.is_empty() {
            return Err(ModelError::Parse {
                line: hl + 1,
                message: "no rows".into(),
            });
        }
        Ok(ds)
    }

    /// Reads a sweep CSV, gzip-compressed when its name ends in `.gz`.
    pub fn load(path: &Path) -> Result<Dataset, ModelError> {
        let read = |e| ModelError::Read {
            path: path.display().to_string(),
            source: e,
        };
        let bytes = std::fs::read(path).map_err(read)?;
        let text = if path.extension().is_some_and(|x| x == "gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut s)
                .map_err(read)?;
            s
        } else {
            String::from_utf8(bytes).map_err(|e| ModelError::Parse {
                line: 0,
                message: e.to_string(),
            })?
        };
        Dataset::parse_csv(&text)
    }

    fn subset(&self, rows: &[usize]) -> Dataset {
        Dataset {
            features: rows.iter().map(|&i| self.features[i].clone()).collect(),
            outcomes: rows.iter().map(|&i| self.outcomes[i]).collect(),
            groups: rows.iter().map(|&i| self.groups[i].clone()).collect(),
        }
    }
}

/// How forests are grown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub trees: usize,
    pub max_depth: u16,
    pub min_samples_leaf: usize,
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            trees: 30,
            max_depth: 12,
            min_samples_leaf: 2,
            seed: 1,
        }
    }
}

type Tree = DecisionTreeRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// splitmix64, for reproducible bootstrap samples.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn matrix(rows: &[Vec<f64>]) -> Result<DenseMatrix<f64>, ModelError> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).map_err(|e| ModelError::Train(e.to_string()))
}

/// A feature's value as the trees see it: pool sizes as log2.
fn prepared(v: f64, feature: &str) -> f64 {
    if LOG_FEATURES.contains(&feature) {
        v.max(1.0).log2()
    } else {
        v
    }
}

/// Inputs the trees see besides [`FEATURES`]: what the knobs do to the
/// observed service, by the mechanism each knob acts through. Trees split
/// one feature at a time, so a product such as "the share of tries a
/// timeout cuts" needs many splits (and rows) to be learned from its
/// parts; from a few hundred rows it is learned only where it is given.
pub const DERIVED: [&str; 7] = [
    // The share of one try that the per-try timeout cuts (the observed
    // latency distribution's tail past it). Istio sets no retry policy
    // without retry attempts, and then no per-try timeout either.
    "try_cut_share",
    // How many tries fit: 1 + retries, as many failed ones as fit in the
    // route timeout (an error fails at about the median latency, a cut
    // try at the per-try timeout; each retry waits Envoy's back-off).
    "tries_in_time",
    // The share of requests whose every try fails: a try fails by an
    // error or a cut, independently.
    "all_tries_fail_share",
    // The share of requests the route timeout cuts (0 without one).
    "route_cut_share",
    // The hop's p99 as the caller sees it with retries: when more than 1 %
    // of tries fail, the slowest 1 % are a failed try, a back-off and
    // another try (at the median); otherwise the observed p99. The route
    // timeout caps it.
    "retried_p99_ms",
    // In-flight requests over the connection pool's request limit: past 1
    // the pool queues or refuses.
    "pool_load",
    // The erring replica's error share over the replicas, times the share
    // of time outlier detection leaves it in (see `unejected_share`).
    "unejected_replica_error",
];

/// Envoy's default retry back-off: a first retry waits a random time up
/// to this base interval (25 ms), so half of it on average.
const RETRY_BACKOFF_MS: f64 = 25.0;
const RETRY_BACKOFF_MEAN_MS: f64 = RETRY_BACKOFF_MS / 2.0;

/// The `baseEjectionTime` of the sweep's objects: the agent's default.
const BASE_EJECTION_S: f64 = crate::config::DEFAULT_BASE_EJECTION_SECONDS as f64;

/// The share of time a replica that fails a share `e` of its `rps`
/// requests stays in the load balancer under outlier detection after `k`
/// consecutive 5xx: runs of `k` errors start `rps (1 - e) e^k` times a
/// second, and each ejects it for the base ejection time.
fn unejected_share(e: f64, rps: f64, k: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    let e = e.clamp(0.0, 1.0);
    let runs = rps.max(0.0) * (1.0 - e).max(0.01) * e.powf(k);
    1.0 / (1.0 + runs * BASE_EJECTION_S)
}

/// The width of a row as the trees see it.
pub const WIDTH: usize = FEATURES.len() + DERIVED.len();

/// Index of `name` in `names`, or `names.len()` when it is not there
/// (every use is a constant checked at compile time below).
const fn index_of(names: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < names.len() {
        if str_eq(names[i], name) {
            return i;
        }
        i += 1;
    }
    names.len()
}

const fn at(name: &str) -> usize {
    index_of(&FEATURES, name)
}

const P50: usize = at("obs_p50_ms");
const P95: usize = at("obs_p95_ms");
const P99: usize = at("obs_p99_ms");
const RPS: usize = at("obs_rps");
const ERROR_RATE: usize = at("obs_error_rate");
const INFLIGHT: usize = at("obs_inflight");
const MAX_REPLICA_ERROR: usize = at("obs_max_replica_error");
const REPLICAS_UP: usize = at("obs_replicas_up");
const POOL_REQUESTS: usize = at("knob_http2_max_requests");
const CONSECUTIVE_5XX: usize = at("knob_consecutive_5xx");
const TIMEOUT: usize = at("knob_timeout_ms");
const RETRY_ATTEMPTS: usize = at("knob_retry_attempts");
const PER_TRY_TIMEOUT: usize = at("knob_per_try_timeout_ms");
// A misspelt name does not compile.
const _: () = {
    let all = [
        P50,
        P95,
        P99,
        RPS,
        ERROR_RATE,
        INFLIGHT,
        MAX_REPLICA_ERROR,
        REPLICAS_UP,
        POOL_REQUESTS,
        CONSECUTIVE_5XX,
        TIMEOUT,
        RETRY_ATTEMPTS,
        PER_TRY_TIMEOUT,
    ];
    let mut i = 0;
    while i < all.len() {
        assert!(all[i] < FEATURES.len());
        i += 1;
    }
    assert!(RETRIED_P99 < WIDTH);
};

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The share of a latency distribution above `t` ms, from its p50, p95 and
/// p99: log-linear between the quantiles, the tail past p99 as steep as it
/// is between p95 and p99 (a power law), below p50 linear down to 1 at 0.
/// `t` ≤ 0 (no timeout) cuts nothing.
pub fn tail_share(p50: f64, p95: f64, p99: f64, t: f64) -> f64 {
    if t <= 0.0 || p50.is_nan() || p50 <= 0.0 {
        return 0.0;
    }
    let p95 = p95.max(p50);
    let p99 = p99.max(p95);
    let between = |lo: f64, hi: f64, s_lo: f64, s_hi: f64| {
        if hi <= lo {
            return s_hi;
        }
        let f = (t.ln() - lo.ln()) / (hi.ln() - lo.ln());
        (s_lo.ln() + f * (s_hi.ln() - s_lo.ln())).exp()
    };
    let s = if t <= p50 {
        1.0 - 0.5 * t / p50
    } else if t <= p95 {
        between(p50, p95, 0.5, 0.05)
    } else if t <= p99 {
        between(p95, p99, 0.05, 0.01)
    } else if p99 > p95 {
        let slope = (0.05f64 / 0.01).ln() / (p99 / p95).ln();
        0.01 * (p99 / t).powf(slope)
    } else {
        0.0
    };
    s.clamp(0.0, 1.0)
}

/// Feature `i` of a row of [`FEATURES`] as measured (0 when missing).
fn value(r: &[f64], i: usize) -> f64 {
    r.get(i).copied().unwrap_or(0.0)
}

/// A row as the trees see it: [`FEATURES`] (pools as log2), then [`DERIVED`].
fn model_row(r: &[f64], out: &mut Vec<f64>) {
    out.extend(r.iter().zip(FEATURES).map(|(v, f)| prepared(*v, f)));
    let v = |i: usize| value(r, i);
    let (p50, p95, p99) = (v(P50), v(P95), v(P99));
    let retries = v(RETRY_ATTEMPTS).max(0.0);
    let per_try = if retries > 0.0 {
        v(PER_TRY_TIMEOUT)
    } else {
        0.0
    };
    let try_cut = tail_share(p50, p95, p99, per_try);
    // The observed error rate already holds the tries cut by the timeout
    // in force (the server sees them reset).
    let try_fail = v(ERROR_RATE).max(try_cut).clamp(0.0, 1.0);
    let route = v(TIMEOUT);
    let errors = (try_fail - try_cut).max(0.0);
    let failed_ms = if try_fail > 0.0 {
        (errors * p50 + try_cut * per_try) / try_fail
    } else {
        p50
    };
    let retried_p99 = if retries > 0.0 && try_fail > 0.01 {
        // The back-off quantile that puts this request in the slowest 1 %.
        let q = 1.0 - 0.01 / try_fail;
        (failed_ms + q * RETRY_BACKOFF_MS + p50).max(p99)
    } else {
        p99
    };
    let retried_p99 = if route > 0.0 {
        retried_p99.min(route)
    } else {
        retried_p99
    };
    let tries = if route > 0.0 {
        (1.0 + (route - failed_ms).max(0.0) / (failed_ms + RETRY_BACKOFF_MEAN_MS))
            .min(1.0 + retries)
    } else {
        1.0 + retries
    };
    out.extend([
        try_cut,
        tries,
        try_fail.powf(tries),
        tail_share(p50, p95, p99, route),
        retried_p99,
    ]);
    out.extend(load_terms(r));
}

/// The derived features that change with the load (rps, in-flight): the
/// last of [`DERIVED`], in order.
fn load_terms(r: &[f64]) -> [f64; 2] {
    let v = |i: usize| value(r, i);
    let replicas = v(REPLICAS_UP).max(1.0);
    let worst = v(MAX_REPLICA_ERROR);
    [
        v(INFLIGHT) / v(POOL_REQUESTS).max(1.0),
        worst / replicas * unejected_share(worst, v(RPS) / replicas, v(CONSECUTIVE_5XX)),
    ]
}

/// Whether two rows differ at most in the load (rps, in-flight), as a
/// candidate's horizon steps do.
fn same_but_load(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .enumerate()
            .all(|(i, (x, y))| i == RPS || i == INFLIGHT || x.to_bits() == y.to_bits())
}

/// Appends the rows as the trees see them to `x`. A row that differs from
/// the one before only in the load copies its other values (a candidate's
/// horizon steps: the quantile tails and powers are computed once a run).
fn model_rows(rows: &[Vec<f64>], x: &mut Vec<f64>) {
    let mut prev: Option<&Vec<f64>> = None;
    for r in rows {
        match prev {
            Some(p) if same_but_load(p, r) && x.len() >= WIDTH => {
                let start = x.len() - WIDTH;
                x.extend_from_within(start..);
                let row = &mut x[start + WIDTH..];
                row[RPS] = prepared(r[RPS], FEATURES[RPS]);
                row[INFLIGHT] = prepared(r[INFLIGHT], FEATURES[INFLIGHT]);
                row[WIDTH - 2..].copy_from_slice(&load_terms(r));
            }
            _ => model_row(r, x),
        }
        prev = Some(r);
    }
}

/// Where the log-p99 forest starts from: the hop's p99 as the caller sees
/// it (`retried_p99_ms`). The trees learn the chain's p99 over it, a
/// ratio that holds beyond the latencies the sweep saw, where a tree
/// cannot reach (a tree predicts only values it was trained on).
fn log_p99_base(row: &[f64]) -> f64 {
    row.get(RETRIED_P99).map_or(0.0, |v| v.max(1e-3).ln())
}

/// Index of `retried_p99_ms` in a row as the trees see it.
const RETRIED_P99: usize = FEATURES.len() + index_of(&DERIVED, "retried_p99_ms");

/// Rows as the trees see them.
fn prepare(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let mut out = Vec::with_capacity(WIDTH);
            model_row(r, &mut out);
            out
        })
        .collect()
}

/// A tree as a flat array, for predicting many rows fast (smartcore's own
/// traversal allocates a list per row). Built from the tree's serialised
/// nodes, so it is exactly smartcore's tree: at a split, `x[feature] <=
/// value` goes to the first child, anything else (NaN included) to the
/// second. Laid out in pre-order, so the first child is the next node and
/// a node is 16 bytes: a whole forest stays in cache.
#[derive(Debug, Clone, Default, PartialEq)]
struct FlatTree {
    nodes: Vec<FlatNode>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct FlatNode {
    /// The split value, or a leaf's output.
    value: f64,
    /// The split feature; [`LEAF`] for a leaf.
    feature: u32,
    /// Where the second child is (the first is the next node).
    second: u32,
}

const LEAF: u32 = u32::MAX;

impl FlatTree {
    fn from_tree(t: &Tree) -> Result<FlatTree, String> {
        let v = serde_json::to_value(t).map_err(|e| e.to_string())?;
        let nodes = v["tree_regressor"]["nodes"]
            .as_array()
            .ok_or("a tree without nodes")?;
        if nodes.is_empty() {
            return Err("a tree without nodes".into());
        }
        // (feature, split value, children, output) as smartcore numbers them.
        let mut raw = Vec::with_capacity(nodes.len());
        for n in nodes {
            let child = |k: &str| n[k].as_u64().map(|c| c as usize);
            let children = match (child("true_child"), child("false_child")) {
                (Some(a), Some(b)) if a < nodes.len() && b < nodes.len() => Some((a, b)),
                (None, None) => None,
                _ => return Err("a node with one child or a child out of range".into()),
            };
            raw.push((
                n["split_feature"].as_u64().unwrap_or(0) as u32,
                n["split_value"].as_f64().unwrap_or(f64::NAN),
                children,
                n["output"].as_f64().unwrap_or(0.0),
            ));
        }
        // Pre-order from the root; a node met twice means a cycle (a broken file).
        let mut out: Vec<FlatNode> = Vec::with_capacity(raw.len());
        let mut placed = vec![false; raw.len()];
        // (node, where its parent waits for the second child's index)
        let mut stack: Vec<(usize, Option<usize>)> = vec![(0, None)];
        while let Some((n, parent)) = stack.pop() {
            if std::mem::replace(&mut placed[n], true) {
                return Err("a tree whose nodes form a cycle".into());
            }
            if let Some(p) = parent {
                out[p].second = out.len() as u32;
            }
            let (feature, split, children, output) = raw[n];
            match children {
                Some((a, b)) => {
                    let at = out.len();
                    out.push(FlatNode {
                        value: split,
                        feature,
                        second: 0,
                    });
                    // The first child next (popped first), the second after its subtree.
                    stack.push((b, Some(at)));
                    stack.push((a, None));
                }
                None => out.push(FlatNode {
                    value: output,
                    feature: LEAF,
                    second: 0,
                }),
            }
        }
        Ok(FlatTree { nodes: out })
    }

    /// This tree as it is for a set of rows whose features lie within
    /// `ranges`: a split every row of the set falls on the same side of is
    /// replaced by that side (partial evaluation), so each row of the set
    /// reaches exactly the leaf it reaches in the whole tree, through fewer
    /// nodes. A service's candidates share the observation and the load
    /// steps, so most of the tree's upper splits go.
    fn reduced(&self, ranges: &[Range]) -> FlatTree {
        let mut out: Vec<FlatNode> = Vec::new();
        // (node, where its parent waits for the second child's index)
        let mut stack: Vec<(usize, Option<usize>)> = vec![(0, None)];
        while let Some((mut i, mut parent)) = stack.pop() {
            while let Some(n) = self.nodes.get(i) {
                let side = if n.feature == LEAF {
                    None
                } else {
                    ranges.get(n.feature as usize).map(|g| g.side(n.value))
                };
                match side {
                    Some(Side::First) => i += 1,
                    Some(Side::Second) => i = n.second as usize,
                    _ => {
                        if let Some(p) = parent.take() {
                            out[p].second = out.len() as u32;
                        }
                        out.push(FlatNode { second: 0, ..*n });
                        if n.feature == LEAF {
                            break;
                        }
                        // The first child next, the second after its subtree.
                        stack.push((n.second as usize, Some(out.len() - 1)));
                        i += 1;
                    }
                }
            }
        }
        FlatTree { nodes: out }
    }

    /// Adds this tree's output for each row of a run (at most 64 rows of
    /// `width` values in `x`) to `sum` and its square to `sq`. The run's
    /// rows go down together: a split every row of the run falls on the same
    /// side of (by the run's range of that feature, `ranges`) is decided
    /// once for all of them, and only a split between them parts the rows
    /// (a bit mask). A service's candidates hold every feature but the load
    /// still over their horizon steps, so most splits are decided once a
    /// run. Each row gets exactly the leaf [`Self::predict`] gives it.
    fn add_run(
        &self,
        x: &[f64],
        width: usize,
        ranges: &[Range],
        stack: &mut Vec<(usize, u64)>,
        sum: &mut [f64],
        sq: &mut [f64],
    ) {
        let rows = sum.len();
        let all = if rows >= 64 {
            u64::MAX
        } else {
            (1u64 << rows) - 1
        };
        stack.clear();
        stack.push((0, all));
        while let Some((mut i, mask)) = stack.pop() {
            while let Some(n) = self.nodes.get(i) {
                if n.feature == LEAF {
                    let mut m = mask;
                    while m != 0 {
                        let r = m.trailing_zeros() as usize;
                        m &= m - 1;
                        sum[r] += n.value;
                        sq[r] += n.value * n.value;
                    }
                    break;
                }
                let f = n.feature as usize;
                match ranges.get(f).map(|g| g.side(n.value)) {
                    Some(Side::First) => i += 1,
                    Some(Side::Second) => i = n.second as usize,
                    _ => {
                        let mut first = 0u64;
                        let mut m = mask;
                        while m != 0 {
                            let r = m.trailing_zeros() as usize;
                            m &= m - 1;
                            if x.get(r * width + f).is_some_and(|v| *v <= n.value) {
                                first |= 1 << r;
                            }
                        }
                        let second = mask & !first;
                        match (first, second) {
                            (0, _) => i = n.second as usize,
                            (_, 0) => i += 1,
                            _ => {
                                stack.push((n.second as usize, second));
                                stack.push((i + 1, first));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        // Pre-order: every step moves forward, so this ends within the nodes.
        while let Some(n) = self.nodes.get(i) {
            if n.feature == LEAF {
                return n.value;
            }
            i = if x.get(n.feature as usize).is_some_and(|xf| *xf <= n.value) {
                i + 1
            } else {
                n.second as usize
            };
        }
        f64::NAN
    }
}

/// Where a run's rows fall at a split.
enum Side {
    /// Every row goes to the first child (`x <= value`).
    First,
    /// Every row goes to the second.
    Second,
    /// Some each way.
    Both,
}

/// One feature's values over a run of rows: the least and the greatest of
/// those that are numbers, and whether any is not (NaN goes second).
#[derive(Debug, Clone, Copy)]
struct Range {
    lo: f64,
    hi: f64,
    nan: bool,
}

impl Range {
    fn of(x: &[f64], width: usize, f: usize) -> Range {
        let mut r = Range {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            nan: false,
        };
        for v in x.chunks_exact(width).map(|row| row[f]) {
            if v.is_nan() {
                r.nan = true;
            } else {
                r.lo = r.lo.min(v);
                r.hi = r.hi.max(v);
            }
        }
        r
    }

    fn side(&self, split: f64) -> Side {
        if !self.nan && self.hi <= split {
            Side::First
        } else if self.lo > split {
            // Every number above the split (or none at all): all second.
            Side::Second
        } else {
            Side::Both
        }
    }
}

/// Bagged regression trees for one outcome.
#[derive(Debug, Serialize, Deserialize)]
struct Forest {
    trees: Vec<Tree>,
    /// The same trees, flat (built after fitting and after loading).
    #[serde(skip)]
    flat: Vec<FlatTree>,
}

impl Forest {
    fn fit(x: &[Vec<f64>], y: &[f64], p: &TrainParams, salt: u64) -> Result<Forest, ModelError> {
        let mut state = p.seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407);
        let n = x.len();
        let mut trees = Vec::with_capacity(p.trees);
        for t in 0..p.trees {
            let sample: Vec<usize> = (0..n)
                .map(|_| (next(&mut state) % n as u64) as usize)
                .collect();
            let xs: Vec<Vec<f64>> = sample.iter().map(|&i| x[i].clone()).collect();
            let ys: Vec<f64> = sample.iter().map(|&i| y[i]).collect();
            let params = DecisionTreeRegressorParameters {
                max_depth: Some(p.max_depth),
                min_samples_leaf: p.min_samples_leaf,
                min_samples_split: 2 * p.min_samples_leaf,
                seed: Some(p.seed.wrapping_add(t as u64)),
            };
            trees.push(
                Tree::fit(&matrix(&xs)?, &ys, params)
                    .map_err(|e| ModelError::Train(e.to_string()))?,
            );
        }
        let mut f = Forest {
            trees,
            flat: Vec::new(),
        };
        f.flatten().map_err(ModelError::Train)?;
        Ok(f)
    }

    fn flatten(&mut self) -> Result<(), String> {
        self.flat = self
            .trees
            .iter()
            .map(FlatTree::from_tree)
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Per row: the trees' mean and standard deviation.
    #[cfg(test)]
    fn predict(&self, rows: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let width = rows.first().map_or(1, Vec::len);
        self.predict_flat(&rows.concat(), width, 1)
    }

    /// Per row of `x` (rows of `width` values one after another): the
    /// trees' mean and standard deviation. Rows go in blocks small enough
    /// for the first-level cache, each block through every tree in turn, so
    /// neither the rows nor the trees are fetched from memory again and
    /// again; each row's sum runs over the trees in order (as smartcore's).
    ///
    /// With `run` > 1 the rows go in runs of `run` (at most 64) that share
    /// most features (a candidate's horizon steps), each run down each tree
    /// together ([`FlatTree::add_run`]): the same sums, far fewer nodes.
    fn predict_flat(&self, x: &[f64], width: usize, run: usize) -> Vec<(f64, f64)> {
        const BLOCK: usize = 64;
        let width = width.max(1);
        let n = x.len() / width;
        let k = self.flat.len().max(1) as f64;
        let mut sum = vec![0.0; n];
        let mut sq = vec![0.0; n];
        if run > 1 {
            let run = run.min(64);
            let mut stack = Vec::new();
            // The trees as they are for these rows: what all of them share
            // is decided once, not once a run.
            let all: Vec<Range> = (0..width).map(|f| Range::of(x, width, f)).collect();
            let reduced: Vec<FlatTree> = self.flat.iter().map(|t| t.reduced(&all)).collect();
            for start in (0..n).step_by(run) {
                let end = (start + run).min(n);
                let rows = &x[start * width..end * width];
                let ranges: Vec<Range> = (0..width).map(|f| Range::of(rows, width, f)).collect();
                for t in &reduced {
                    t.add_run(
                        rows,
                        width,
                        &ranges,
                        &mut stack,
                        &mut sum[start..end],
                        &mut sq[start..end],
                    );
                }
            }
        } else {
            for start in (0..n).step_by(BLOCK) {
                let end = (start + BLOCK).min(n);
                for t in &self.flat {
                    for i in start..end {
                        let v = t.predict(&x[i * width..(i + 1) * width]);
                        sum[i] += v;
                        sq[i] += v * v;
                    }
                }
            }
        }
        sum.iter()
            .zip(&sq)
            .map(|(s, q)| {
                let mean = s / k;
                (mean, (q / k - mean * mean).max(0.0).sqrt())
            })
            .collect()
    }

    /// Per row: the trees' mean and standard deviation by smartcore's own
    /// traversal (what the flat trees must equal).
    #[cfg(test)]
    fn predict_smartcore(&self, rows: &[Vec<f64>]) -> Result<Vec<(f64, f64)>, ModelError> {
        let x = matrix(rows)?;
        let n = rows.len();
        let mut sum = vec![0.0; n];
        let mut sq = vec![0.0; n];
        for t in &self.trees {
            let y = t
                .predict(&x)
                .map_err(|e| ModelError::Train(e.to_string()))?;
            for (i, v) in y.iter().enumerate().take(n) {
                sum[i] += v;
                sq[i] += v * v;
            }
        }
        let k = self.trees.len().max(1) as f64;
        Ok(sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| {
                let mean = s / k;
                (mean, (q / k - mean * mean).max(0.0).sqrt())
            })
            .collect())
    }
}

/// What the model predicts for one row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub p99_ms: f64,
    /// The trees' spread of log p99 (a factor of `exp(spread)` either way).
    pub log_p99_spread: f64,
    pub error_share: f64,
    pub error_spread: f64,
    pub goodput: f64,
    pub goodput_spread: f64,
}

/// Grouped cross-validation's measures (each group held out whole).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    pub r2_log_p99: f64,
    pub r2_error_share: f64,
    pub r2_goodput: f64,
    pub mae_p99_ms: f64,
    pub groups: usize,
    pub rows: usize,
}

/// R² of `pred` against `truth`.
pub fn r2(truth: &[f64], pred: &[f64]) -> f64 {
    let n = truth.len().max(1) as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let ss_res: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    if ss_tot <= 0.0 {
        return if ss_res <= 1e-12 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// The trained model as the agent loads it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigModel {
    pub version: u32,
    pub features: Vec<String>,
    pub params: TrainParams,
    pub rows: usize,
    /// How it validated when trained (grouped CV).
    pub cv: Option<CvReport>,
    forests: Vec<Forest>,
}

impl ConfigModel {
    /// Fits one forest per outcome on every row of `ds`.
    pub fn train(ds: &Dataset, params: &TrainParams) -> Result<ConfigModel, ModelError> {
        if ds.features.len() < 2 {
            return Err(ModelError::Train("fewer than two rows".into()));
        }
        let x = prepare(&ds.features);
        let forests = (0..OUTCOMES.len())
            .map(|k| {
                let y: Vec<f64> = ds
                    .outcomes
                    .iter()
                    .zip(&x)
                    .map(|(o, r)| if k == 0 { o[0] - log_p99_base(r) } else { o[k] })
                    .collect();
                Forest::fit(&x, &y, params, k as u64 + 1)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConfigModel {
            version: FORMAT_VERSION,
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            params: *params,
            rows: ds.features.len(),
            cv: None,
            forests,
        })
    }

    /// Predicts every row of `features` (in [`FEATURES`] order, pools as
    /// given: the log is taken here).
    pub fn predict(&self, features: &[Vec<f64>]) -> Result<Vec<Prediction>, ModelError> {
        self.predict_runs(features, 1)
    }

    /// As [`Self::predict`], for rows that come in runs of `run` sharing
    /// most features (a candidate's horizon steps): the same predictions,
    /// computed a run at a time.
    pub fn predict_runs(
        &self,
        features: &[Vec<f64>],
        run: usize,
    ) -> Result<Vec<Prediction>, ModelError> {
        if features.is_empty() {
            return Ok(Vec::new());
        }
        if features.iter().any(|r| r.len() != FEATURES.len()) {
            return Err(ModelError::Train(format!(
                "a row without the model's {} features",
                FEATURES.len()
            )));
        }
        // One buffer for all rows, as the trees were grown.
        let mut x = Vec::with_capacity(features.len() * WIDTH);
        model_rows(features, &mut x);
        self.predict_flat(&x, features.len(), run)
    }

    /// Predicts `n` prepared rows laid one after another in `x`.
    fn predict_flat(&self, x: &[f64], n: usize, run: usize) -> Result<Vec<Prediction>, ModelError> {
        let per: Vec<Vec<(f64, f64)>> = self
            .forests
            .iter()
            .map(|f| f.predict_flat(x, WIDTH, run))
            .collect();
        // The base's logarithm, once per distinct value (once a run).
        let mut base = Vec::with_capacity(n);
        let mut last = (f64::NAN, 0.0);
        for row in x.chunks_exact(WIDTH).take(n) {
            let v = row[RETRIED_P99];
            if v.to_bits() != last.0.to_bits() {
                last = (v, log_p99_base(row));
            }
            base.push(last.1);
        }
        Ok((0..n)
            .map(|i| Prediction {
                p99_ms: (per[0][i].0 + base[i]).exp(),
                log_p99_spread: per[0][i].1,
                error_share: per[1][i].0.clamp(0.0, 1.0),
                error_spread: per[1][i].1,
                goodput: per[2][i].0.clamp(0.0, 1.0),
                goodput_spread: per[2][i].1,
            })
            .collect())
    }

    /// Writes the model as JSON.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string(self).map_err(|e| ModelError::Train(e.to_string()))?;
        std::fs::write(path, text).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a model file, refusing another version or a broken one.
    pub fn load(path: &Path) -> Result<ConfigModel, ModelError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: p.clone(),
            source,
        })?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
                path: p.clone(),
                message: e.to_string(),
            })?;
        match raw["version"].as_u64() {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(found) => return Err(ModelError::Version { path: p, found }),
            None => {
                return Err(ModelError::Corrupt {
                    path: p,
                    message: "no version".into(),
                })
            }
        }
        let mut model: ConfigModel =
            serde_json::from_value(raw).map_err(|e| ModelError::Corrupt {
                path: p.clone(),
                message: e.to_string(),
            })?;
        let corrupt = |message: &str| ModelError::Corrupt {
            path: p.clone(),
            message: message.into(),
        };
        if model.features != FEATURES.map(String::from) {
            return Err(corrupt("its features are not this agent's"));
        }
        if model.forests.len() != OUTCOMES.len() || model.forests.iter().any(|f| f.trees.is_empty())
        {
            return Err(corrupt("a forest is missing"));
        }
        // A tree that does not hold together is refused here, not at
        // decision time.
        for f in &mut model.forests {
            f.flatten().map_err(|e| corrupt(&e))?;
        }
        Ok(model)
    }
}

/// Anything that predicts outcomes for rows of [`FEATURES`] (the trained
/// model, or a hand-written one in tests).
pub trait Predict {
    fn predict(&self, rows: &[Vec<f64>]) -> Result<Vec<Prediction>, ModelError>;

    /// The same predictions, for rows that come in runs of `run` sharing
    /// most features (a model may use that to be quicker).
    fn predict_runs(&self, rows: &[Vec<f64>], run: usize) -> Result<Vec<Prediction>, ModelError> {
        let _ = run;
        self.predict(rows)
    }
}

impl Predict for ConfigModel {
    fn predict(&self, rows: &[Vec<f64>]) -> Result<Vec<Prediction>, ModelError> {
        ConfigModel::predict(self, rows)
    }

    fn predict_runs(&self, rows: &[Vec<f64>], run: usize) -> Result<Vec<Prediction>, ModelError> {
        ConfigModel::predict_runs(self, rows, run)
    }
}

/// Grouped cross-validation: each group predicted by a model trained on
/// every other group. `progress` hears each group as it is held out.
pub fn grouped_cv(
    ds: &Dataset,
    params: &TrainParams,
    progress: impl Fn(usize, usize, &str),
) -> Result<CvReport, ModelError> {
    let groups: BTreeSet<&str> = ds.groups.iter().map(String::as_str).collect();
    if groups.len() < 2 {
        return Err(ModelError::Train(format!(
            "grouped cross-validation needs two groups, the data has {}",
            groups.len()
        )));
    }
    let mut truth: BTreeMap<usize, [f64; 3]> = BTreeMap::new();
    let mut pred: BTreeMap<usize, Prediction> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        progress(gi, groups.len(), g);
        let (held, train): (Vec<usize>, Vec<usize>) =
            (0..ds.groups.len()).partition(|&i| ds.groups[i] == *g);
        let model = ConfigModel::train(&ds.subset(&train), params)?;
        let rows: Vec<Vec<f64>> = held.iter().map(|&i| ds.features[i].clone()).collect();
        for (i, p) in held.iter().zip(model.predict(&rows)?) {
            truth.insert(*i, ds.outcomes[*i]);
            pred.insert(*i, p);
        }
    }
    let col = |k: usize| truth.values().map(|t| t[k]).collect::<Vec<_>>();
    let log_p99: Vec<f64> = pred.values().map(|p| p.p99_ms.ln()).collect();
    let err: Vec<f64> = pred.values().map(|p| p.error_share).collect();
    let good: Vec<f64> = pred.values().map(|p| p.goodput).collect();
    let mae = truth
        .values()
        .zip(pred.values())
        .map(|(t, p)| (t[0].exp() - p.p99_ms).abs())
        .sum::<f64>()
        / truth.len().max(1) as f64;
    Ok(CvReport {
        r2_log_p99: r2(&col(0), &log_p99),
        r2_error_share: r2(&col(1), &err),
        r2_goodput: r2(&col(2), &good),
        mae_p99_ms: mae,
        groups: groups.len(),
        rows: truth.len(),
    })
}

#[cfg(test)]
mod tests;
