//! The fault schedule: what goes wrong in the lab, and when.
//!
//! A YAML (or JSON) file, times in seconds from the start of the run:
//!
//! ```yaml
//! description: one reviews replica answers 500
//! faults:
//!   - {from: 10, replica: reviews-2, errors: 0.9}            # status 500 unless `status:`
//!   - {from: 30, to: 60, replica: reviews-3, slow: 4}        # work takes 4 × as long
//!   - {from: 40, to: 50, replica: ratings, down: true}       # killed, restarted at `to`
//!   - {from: 60, to: 90, surge: 2}                           # offered load × 2
//!   - {from: 70, to: 75, kill_agent: true}                   # agent killed (-9), restarted at `to`
//! ```
//!
//! Each entry has exactly one of `errors`, `slow`, `down`, `surge`,
//! `kill_agent`; without `to` it lasts to the end of the run. Errors default
//! to 500: Istio's default retries re-send 503s to another host and would
//! hide them.

use crate::services::Fault;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    description: String,
    #[serde(default)]
    faults: Vec<EntryFormat>,
    /// A scenario also says what load to run (for `meshtune-lab eval`).
    #[serde(default)]
    trace: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    minutes: Option<usize>,
    #[serde(default)]
    peak_rps: Option<f64>,
    #[serde(default)]
    seconds_per_minute: Option<f64>,
    /// A service's worker pool and work time, replacing the lab's defaults.
    #[serde(default)]
    capacity: BTreeMap<String, ServiceCapacity>,
    /// Chains' objectives and priorities, as users declare them.
    #[serde(default)]
    chains: BTreeMap<String, ChainFormat>,
    /// Every service's work is CPU (no waiting off the CPU), so the CPU a
    /// replica is given decides its latency.
    #[serde(default)]
    cpu_bound: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFormat {
    slo_ms: Option<f64>,
    priority: Option<String>,
}

/// A chain as a scenario declares it (each field replaces the lab's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChainSettings {
    /// The p99 objective, ms.
    pub slo_ms: Option<f64>,
    /// One of [`PRIORITIES`].
    pub priority: Option<&'static str>,
}

/// A service's worker pool as a scenario sets it: `workers` at a time,
/// `queue` waiting, each request taking `work_ms` (the service's own work
/// time otherwise).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCapacity {
    pub workers: usize,
    pub queue: usize,
    pub work_ms: Option<f64>,
}

/// The priorities a chain can be declared with.
pub const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// The load a scenario file names (each optional; the command line wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunSettings {
    /// A trace file, relative to `../shared/data/traces` unless absolute.
    pub trace: Option<String>,
    pub offset: Option<usize>,
    pub minutes: Option<usize>,
    pub peak_rps: Option<f64>,
    pub seconds_per_minute: Option<f64>,
    /// Per service (by name): the pool that replaces the lab's default.
    pub capacity: BTreeMap<String, ServiceCapacity>,
    /// Per chain (by name): its objective and priority.
    pub chains: BTreeMap<String, ChainSettings>,
    /// Every service's work is CPU.
    pub cpu_bound: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    from: f64,
    to: Option<f64>,
    replica: Option<String>,
    errors: Option<f64>,
    status: Option<u16>,
    slow: Option<f64>,
    down: Option<bool>,
    surge: Option<f64>,
    kill_agent: Option<bool>,
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// `share` of the replica's requests are answered `status` at once.
    Errors {
        replica: String,
        share: f64,
        status: u16,
    },
    /// The replica's work takes `factor` times as long.
    Slow { replica: String, factor: f64 },
    /// The replica's process is killed, and started again at `to`.
    Down { replica: String },
    /// The offered load is multiplied by `factor`.
    Surge { factor: f64 },
    /// The agent is killed with `-9`, and started again at `to` (at once
    /// without `to`).
    KillAgent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub from_s: f64,
    pub to_s: Option<f64>,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    pub description: String,
    pub faults: Vec<Entry>,
    pub run: RunSettings,
}

/// A fault file that cannot be run, naming the entry and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ScheduleError {
    pub file: String,
    pub message: String,
}

impl Schedule {
    /// Reads and checks a fault file against the lab's replicas.
    pub fn load(path: &Path, replicas: &[String]) -> Result<Schedule, ScheduleError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScheduleError {
            file: file.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        Schedule::parse(&text, replicas).map_err(|message| ScheduleError { file, message })
    }

    /// Parses a fault file's text; the error names the entry and field.
    pub fn parse(text: &str, replicas: &[String]) -> Result<Schedule, String> {
        let f: FileFormat = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut faults = Vec::new();
        if f.peak_rps.is_some_and(|p| !(p > 0.0 && p.is_finite())) {
            return Err("peak_rps: requests per second above 0".into());
        }
        if f.seconds_per_minute
            .is_some_and(|p| !(p > 0.0 && p.is_finite()))
        {
            return Err("seconds_per_minute: seconds above 0".into());
        }
        if f.minutes == Some(0) {
            return Err("minutes: at least 1".into());
        }
        let mut capacity = BTreeMap::new();
        for (service, c) in &f.capacity {
            let at = format!("capacity.{service}");
            let known = replicas.iter().any(|r| {
                r == service
                    || r.strip_prefix(service.as_str())
                        .is_some_and(|t| t.starts_with('-'))
            });
            if !known {
                return Err(format!("{at}: no service {service} in the lab"));
            }
            if c.workers == 0 {
                return Err(format!("{at}.workers: at least 1"));
            }
            if c.work_ms.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
                return Err(format!("{at}.work_ms: milliseconds above 0"));
            }
            capacity.insert(service.clone(), c.clone());
        }
        let mut chains = BTreeMap::new();
        for (chain, c) in &f.chains {
            let at = format!("chains.{chain}");
            if c.slo_ms.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
                return Err(format!("{at}.slo_ms: milliseconds above 0"));
            }
            let priority = match &c.priority {
                None => None,
                Some(p) => Some(*PRIORITIES.iter().find(|k| *k == p).ok_or_else(|| {
                    format!(
                        "{at}.priority: {p:?} is not one of {}",
                        PRIORITIES.join(", ")
                    )
                })?),
            };
            chains.insert(
                chain.clone(),
                ChainSettings {
                    slo_ms: c.slo_ms,
                    priority,
                },
            );
        }
        for (i, e) in f.faults.clone().into_iter().enumerate() {
            let at = format!("faults[{i}]");
            if !(e.from >= 0.0 && e.from.is_finite()) {
                return Err(format!("{at}.from: seconds from the start, at least 0"));
            }
            if let Some(to) = e.to {
                if to.is_nan() || to <= e.from {
                    return Err(format!("{at}.to: after `from` ({})", e.from));
                }
            }
            let replica = || -> Result<String, String> {
                let r = e.replica.clone().ok_or_else(|| {
                    format!(
                        "{at}.replica: which replica (one of {})",
                        replicas.join(", ")
                    )
                })?;
                if replicas.contains(&r) {
                    Ok(r)
                } else {
                    Err(format!(
                        "{at}.replica: no replica {r} (the lab runs {})",
                        replicas.join(", ")
                    ))
                }
            };
            let mut kinds = Vec::new();
            if let Some(share) = e.errors {
                if !(0.0..=1.0).contains(&share) {
                    return Err(format!("{at}.errors: a share of requests, 0 to 1"));
                }
                let status = e.status.unwrap_or(500);
                if !(400..=599).contains(&status) {
                    return Err(format!("{at}.status: an error status, 400 to 599"));
                }
                kinds.push(FaultKind::Errors {
                    replica: replica()?,
                    share,
                    status,
                });
            } else if e.status.is_some() {
                return Err(format!("{at}.status: only with `errors`"));
            }
            if let Some(factor) = e.slow {
                if !(factor >= 1.0 && factor.is_finite()) {
                    return Err(format!("{at}.slow: a factor of at least 1"));
                }
                kinds.push(FaultKind::Slow {
                    replica: replica()?,
                    factor,
                });
            }
            if e.down == Some(true) {
                kinds.push(FaultKind::Down {
                    replica: replica()?,
                });
            }
            if let Some(factor) = e.surge {
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(format!("{at}.surge: a factor above 0"));
                }
                kinds.push(FaultKind::Surge { factor });
            }
            if e.kill_agent == Some(true) {
                kinds.push(FaultKind::KillAgent);
            }
            if kinds.len() != 1 {
                return Err(format!(
                    "{at}: exactly one of errors, slow, down, surge, kill_agent (found {})",
                    kinds.len()
                ));
            }
            let needs_replica = matches!(
                kinds[0],
                FaultKind::Errors { .. } | FaultKind::Slow { .. } | FaultKind::Down { .. }
            );
            if !needs_replica && e.replica.is_some() {
                return Err(format!("{at}.replica: not used by this fault"));
            }
            faults.push(Entry {
                from_s: e.from,
                to_s: e.to,
                kind: kinds.remove(0),
            });
        }
        Ok(Schedule {
            description: f.description,
            faults,
            run: RunSettings {
                trace: f.trace,
                offset: f.offset,
                minutes: f.minutes,
                peak_rps: f.peak_rps,
                seconds_per_minute: f.seconds_per_minute,
                capacity,
                chains,
                cpu_bound: f.cpu_bound,
            },
        })
    }

    /// The offered load per step (`step_s` seconds each) with the surges applied.
    pub fn surged(&self, rates: &[f64], step_s: f64) -> Vec<f64> {
        rates
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let t = i as f64 * step_s;
                self.faults
                    .iter()
                    .filter(|e| e.from_s <= t && e.to_s.is_none_or(|to| t < to))
                    .filter_map(|e| match e.kind {
                        FaultKind::Surge { factor } => Some(factor),
                        _ => None,
                    })
                    .fold(*r, |r, f| r * f)
            })
            .collect()
    }

    /// The periods (from, to) a fault is in force, for plots; `end_s` for
    /// a fault without `to`.
    pub fn periods(&self, end_s: f64) -> Vec<(f64, f64)> {
        self.faults
            .iter()
            .map(|e| (e.from_s, e.to_s.unwrap_or(end_s)))
            .collect()
    }

    /// The schedule as timed actions, in time order.
    pub fn actions(&self) -> Vec<(f64, Action)> {
        let mut v = Vec::new();
        for e in &self.faults {
            let (start, end) = match &e.kind {
                FaultKind::Errors {
                    replica,
                    share,
                    status,
                } => (
                    Action::SetFault(
                        replica.clone(),
                        Fault {
                            error_share: *share,
                            status: *status,
                            ..Fault::default()
                        },
                    ),
                    Some(Action::SetFault(replica.clone(), Fault::default())),
                ),
                FaultKind::Slow { replica, factor } => (
                    Action::SetFault(
                        replica.clone(),
                        Fault {
                            slow: *factor,
                            ..Fault::default()
                        },
                    ),
                    Some(Action::SetFault(replica.clone(), Fault::default())),
                ),
                FaultKind::Down { replica } => (
                    Action::Kill(replica.clone()),
                    Some(Action::Restart(replica.clone())),
                ),
                FaultKind::Surge { factor } => (
                    Action::Note(format!("offered load × {factor}")),
                    Some(Action::Note("surge over".into())),
                ),
                FaultKind::KillAgent => (Action::KillAgent, Some(Action::RestartAgent)),
            };
            v.push((e.from_s, start));
            match (e.to_s, end) {
                (Some(to), Some(end)) => v.push((to, end)),
                // Without `to`, the agent comes back at once (as a pod would).
                (None, Some(Action::RestartAgent)) => v.push((e.from_s, Action::RestartAgent)),
                _ => {}
            }
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SetFault(String, Fault),
    Kill(String),
    Restart(String),
    KillAgent,
    RestartAgent,
    Note(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::SetFault(r, x) if *x == Fault::default() => write!(f, "{r} healthy again"),
            Action::SetFault(r, x) if x.error_share > 0.0 => {
                write!(
                    f,
                    "{r} answers {} to {:.0} % of requests",
                    x.status,
                    x.error_share * 100.0
                )
            }
            Action::SetFault(r, x) => write!(f, "{r} works {} × slower", x.slow),
            Action::Kill(r) => write!(f, "{r} killed (down)"),
            Action::Restart(r) => write!(f, "{r} restarted"),
            Action::KillAgent => write!(f, "agent killed (-9)"),
            Action::RestartAgent => write!(f, "agent restarted"),
            Action::Note(n) => write!(f, "{n}"),
        }
    }
}

/// Hands out the actions that are due as the run goes on.
pub struct Runner {
    actions: Vec<(f64, Action)>,
    next: usize,
}

impl Runner {
    pub fn new(s: &Schedule) -> Runner {
        Runner {
            actions: s.actions(),
            next: 0,
        }
    }

    /// The actions due at `elapsed_s` not handed out before.
    pub fn due(&mut self, elapsed_s: f64) -> Vec<(f64, Action)> {
        let mut out = Vec::new();
        while let Some((t, a)) = self.actions.get(self.next) {
            if *t > elapsed_s {
                break;
            }
            out.push((*t, a.clone()));
            self.next += 1;
        }
        out
    }
}

/// Carries out one action on the mesh.
pub fn apply(mesh: &mut crate::mesh::Mesh, action: &Action) -> anyhow::Result<()> {
    let replica = |mesh: &mut crate::mesh::Mesh, r: &str| -> anyhow::Result<()> {
        anyhow::ensure!(mesh.replicas.contains_key(r), "no replica {r}");
        Ok(())
    };
    match action {
        Action::SetFault(r, f) => {
            replica(mesh, r)?;
            mesh.replicas[r].set_fault(*f)
        }
        Action::Kill(r) => {
            replica(mesh, r)?;
            if let Some(x) = mesh.replicas.get_mut(r) {
                x.kill();
            }
            Ok(())
        }
        Action::Restart(r) => {
            replica(mesh, r)?;
            match mesh.replicas.get_mut(r) {
                Some(x) => x.restart(),
                None => Ok(()),
            }
        }
        Action::KillAgent => {
            mesh.agent.kill();
            Ok(())
        }
        Action::RestartAgent => mesh.agent.restart(),
        Action::Note(_) => Ok(()),
    }
}

/// The scenarios shipped with the lab (`tests/lab/scenarios`).
pub fn scenarios_dir() -> std::path::PathBuf {
    crate::envoy::repo_root().join("tests/lab/scenarios")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas() -> Vec<String> {
        ["reviews", "reviews-2", "ratings"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_schedule_becomes_timed_actions_and_surged_load() {
        let s = Schedule::parse(
            "faults:\n- {from: 10, replica: reviews-2, errors: 0.5}\n- {from: 5, to: 8, replica: ratings, down: true}\n- {from: 2, to: 4, surge: 3}\n- {from: 6, kill_agent: true}\n",
            &replicas(),
        )
        .unwrap();
        let a = s.actions();
        assert_eq!(a[0], (2.0, Action::Note("offered load × 3".into())));
        assert_eq!(a[2], (5.0, Action::Kill("ratings".into())));
        assert_eq!(a[3], (6.0, Action::KillAgent));
        assert_eq!(a[4], (6.0, Action::RestartAgent));
        assert_eq!(a[5], (8.0, Action::Restart("ratings".into())));
        assert_eq!(
            a[6],
            (
                10.0,
                Action::SetFault(
                    "reviews-2".into(),
                    Fault {
                        error_share: 0.5,
                        status: 500,
                        slow: 1.0
                    }
                )
            )
        );
        assert_eq!(s.surged(&[1.0; 5], 1.0), vec![1.0, 1.0, 3.0, 3.0, 1.0]);
        let mut r = Runner::new(&s);
        assert_eq!(r.due(5.5).len(), 3);
        assert!(r.due(5.9).is_empty());
        assert_eq!(r.due(100.0).len(), 4);
    }

    #[test]
    fn a_bad_entry_is_named_by_its_index_and_field() {
        let bad = [
            (
                "faults:\n- {from: 1, replica: reviews-9, errors: 0.5}\n",
                "faults[0].replica: no replica reviews-9",
            ),
            (
                "faults:\n- {from: 1, replica: reviews, errors: 1.5}\n",
                "faults[0].errors",
            ),
            ("faults:\n- {from: 1, to: 1, surge: 2}\n", "faults[0].to"),
            (
                "faults:\n- {from: 1, replica: reviews, slow: 2, down: true}\n",
                "faults[0]: exactly one",
            ),
            (
                "faults:\n- {from: 1, surge: 2, replica: reviews}\n",
                "faults[0].replica: not used",
            ),
            (
                "faults:\n- {from: 1, slowness: 2}\n",
                "unknown field `slowness`",
            ),
            (
                "capacity:\n  review: {workers: 1, queue: 4}\n",
                "capacity.review: no service review",
            ),
            (
                "capacity:\n  ratings: {workers: 0, queue: 4}\n",
                "capacity.ratings.workers",
            ),
            (
                "capacity:\n  ratings: {workers: 1, queue: 4, work_ms: -1}\n",
                "capacity.ratings.work_ms",
            ),
            (
                "chains:\n  product-page: {priority: urgent}\n",
                "chains.product-page.priority: \"urgent\" is not one of high, normal, low",
            ),
            (
                "chains:\n  product-page: {slo_ms: 0}\n",
                "chains.product-page.slo_ms",
            ),
        ];
        for (text, want) in bad {
            let e = Schedule::parse(text, &replicas()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_scenario_sets_service_pools_and_chain_objectives_and_priorities() {
        let s = Schedule::parse(
            "capacity:\n  reviews: {workers: 2, queue: 8}\n  ratings: {workers: 1, queue: 100, work_ms: 8}\nchains:\n  ratings-api: {slo_ms: 50, priority: high}\n",
            &replicas(),
        )
        .unwrap();
        assert_eq!(
            s.run.capacity["ratings"],
            ServiceCapacity {
                workers: 1,
                queue: 100,
                work_ms: Some(8.0)
            }
        );
        assert_eq!(s.run.capacity["reviews"].work_ms, None);
        assert_eq!(
            s.run.chains["ratings-api"],
            ChainSettings {
                slo_ms: Some(50.0),
                priority: Some("high")
            }
        );
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let replicas = crate::replicas::replica_names(&crate::services::bookinfo_with_versions());
        let mut n = 0;
        for f in std::fs::read_dir(scenarios_dir()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                Schedule::load(&p, &replicas).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "shipped scenarios: {n}");
    }
}
