//! `meshtune-lab eval`: does the tuning help? The same trace and fault
//! schedule run through the lab once per *arm*, from a clean start each
//! time, judged from the load generator's own records:
//!
//! - `static`: Istio's defaults, no meshtune filter (what users run today);
//! - `native`: Istio's defaults plus Envoy's adaptive concurrency filter on
//!   every inbound sidecar, no meshtune filter;
//! - `meshtune`: the filter's data-path control and the agent writing
//!   DestinationRules and VirtualServices (`apply` mode);
//! - `meshtune-dataplane`: the filter's control only, the agent recommending;
//! - `meshtune-model`: as `meshtune`, the agent choosing pools, outlier
//!   detection and route timeouts with the configuration model
//!   (`models/config-model.json`) and learning on the job;
//! - `static-resources`, `vpa-like`, `meshtune-resources`: how each
//!   replica's CPU is sized, everything else as `meshtune` ([`resources`]).

pub mod plot;
pub mod resources;
pub mod verdict;

use crate::faults::{self, Runner, Schedule};
use crate::load::{open_loop_arrivals, Arrivals, Record};
use crate::mesh::{Mesh, MeshOptions, CHAINS};
use crate::replicas::replica_names;
use crate::services::bookinfo_with_versions;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use verdict::{chain_windows, ChainWindow, Objective, Sample};

/// One way of running the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arm {
    Static,
    Native,
    Meshtune,
    MeshtuneDataplane,
    MeshtuneModel,
    StaticResources,
    VpaLike,
    MeshtuneResources,
}

/// The arms run when none are named.
pub const ARMS: [Arm; 4] = [
    Arm::Static,
    Arm::Native,
    Arm::Meshtune,
    Arm::MeshtuneDataplane,
];

/// Every arm `--arms` accepts.
pub const ALL_ARMS: [Arm; 8] = [
    Arm::Static,
    Arm::Native,
    Arm::Meshtune,
    Arm::MeshtuneDataplane,
    Arm::MeshtuneModel,
    Arm::StaticResources,
    Arm::VpaLike,
    Arm::MeshtuneResources,
];

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Static => "static",
            Arm::Native => "native",
            Arm::Meshtune => "meshtune",
            Arm::MeshtuneDataplane => "meshtune-dataplane",
            Arm::MeshtuneModel => "meshtune-model",
            Arm::StaticResources => "static-resources",
            Arm::VpaLike => "vpa-like",
            Arm::MeshtuneResources => "meshtune-resources",
        }
    }

    pub fn parse(s: &str) -> Result<Arm, String> {
        ALL_ARMS
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown arm {s:?}: one of {}",
                    ALL_ARMS.map(Arm::name).join(", ")
                )
            })
    }

    /// One of the arms that size the replicas' CPU.
    pub fn sizes_resources(self) -> bool {
        matches!(
            self,
            Arm::StaticResources | Arm::VpaLike | Arm::MeshtuneResources
        )
    }

    /// Runs meshtune's filter (with its data-path control) in the sidecars.
    pub fn runs_filter(self) -> bool {
        matches!(
            self,
            Arm::Meshtune | Arm::MeshtuneDataplane | Arm::MeshtuneModel
        ) || self.sizes_resources()
    }

    /// The lab for this arm: the scenario's service pools and chain
    /// priorities, the agent's clock on trace time (one trace minute per
    /// `seconds_per_minute` wall seconds).
    pub fn mesh_options(self, o: &EvalOptions) -> MeshOptions {
        let meshtune = self.runs_filter();
        let mut services = bookinfo_with_versions();
        for s in &mut services {
            if o.cpu_bound {
                s.cpu_us = s.base_us;
                s.tail_us = 0;
            }
            if let Some(c) = o.capacity.get(s.name) {
                s.capacity = Some(crate::services::Capacity {
                    workers: c.workers,
                    queue: c.queue,
                });
                if let Some(ms) = c.work_ms {
                    // A fixed work time: the pool's capacity is workers / work_ms.
                    s.base_us = (ms * 1000.0) as u64;
                    s.tail_us = 0;
                }
            }
        }
        let chains = o.chain_defs();
        MeshOptions {
            services,
            chains,
            agent_window_secs: 60,
            filter: meshtune,
            control: meshtune,
            tune: matches!(self, Arm::Meshtune | Arm::MeshtuneModel) || self.sizes_resources(),
            agent_sizes_resources: self == Arm::MeshtuneResources,
            native_adaptive_everywhere: self == Arm::Native,
            agent_seconds_per_minute: Some(o.seconds_per_minute),
            agent_config_model: (self == Arm::MeshtuneModel)
                .then(|| crate::envoy::repo_root().join("models/config-model.json")),
            ..MeshOptions::default()
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub trace: PathBuf,
    pub offset: usize,
    pub minutes: usize,
    pub peak_rps: f64,
    pub seconds_per_minute: f64,
    /// The fault schedule (and its name for the settings line).
    pub faults: Option<(String, Schedule)>,
    pub arms: Vec<Arm>,
    pub repeat: usize,
    pub out: PathBuf,
    /// Service pools the scenario sets (by service name).
    pub capacity: BTreeMap<String, faults::ServiceCapacity>,
    /// Chain objectives and priorities the scenario declares (by chain name).
    pub chains: BTreeMap<String, faults::ChainSettings>,
    /// Every service's work is CPU (the scenario says so).
    pub cpu_bound: bool,
    /// Poll each sidecar's concurrency limit once a second (`limits-ARM-RUN.csv`).
    pub record_limits: bool,
    /// `static-resources` sizes each replica at this many times its busiest
    /// calibration second.
    pub static_headroom: f64,
    /// How the requests of each trace minute are spread: evenly (the
    /// replayed count) or as a Poisson process (seeded per run, the same
    /// for every arm of a run).
    pub poisson_arrivals: bool,
}

/// The paths the load generator sends, with their weights and chains.
pub const LOAD_MIX: [(&str, u32); 2] = [("/productpage", 7), ("/api/v1/ratings/0", 3)];

/// The chain a request path enters (the lab's entry rules).
pub fn chain_of(path: &str) -> Option<&'static str> {
    CHAINS
        .iter()
        .find(|(_, prefix, _)| path.starts_with(prefix))
        .map(|(c, _, _)| *c)
}

impl EvalOptions {
    /// The lab's chains with what the scenario declares for them.
    pub fn chain_defs(&self) -> Vec<crate::mesh::ChainDef> {
        let mut chains = crate::mesh::default_chains();
        for c in &mut chains {
            if let Some(d) = self.chains.get(c.name) {
                c.slo_ms = d.slo_ms.unwrap_or(c.slo_ms);
                c.priority = d.priority.unwrap_or(c.priority);
            }
        }
        chains
    }

    /// The chains' objectives (p99), as the verdict judges them.
    pub fn objectives(&self) -> Vec<Objective> {
        self.chain_defs()
            .iter()
            .map(|c| Objective {
                chain: c.name.to_owned(),
                percentile: 99.0,
                slo_ms: c.slo_ms,
            })
            .collect()
    }
}

/// What one run of one arm measured.
#[derive(Debug, Clone)]
pub struct ArmRun {
    pub arm: Arm,
    pub run: usize,
    pub windows: Vec<ChainWindow>,
    /// Per chain: requests, mean and p99 end-to-end latency (ms).
    pub latency: BTreeMap<String, (usize, f64, f64)>,
    pub offered: usize,
    pub good: usize,
    /// CPU seconds: services, sidecars, agent.
    pub cpu_s: (f64, f64, f64),
    /// Objects the agent applied (DestinationRules, VirtualServices).
    pub changes: u64,
    /// productpage's sidecar's cluster for reviews as Envoy ran it at the
    /// end (from `/config_dump`): what this arm's configuration was.
    pub reviews_cluster: serde_json::Value,
    /// Quota × time over the replicas, CPU-seconds (an unlimited replica
    /// counts the machine's cores).
    pub allocated_cpu_s: f64,
    /// Each replica's CPU per second (what `static-resources` and
    /// `vpa-like` are computed from).
    pub usage: resources::Usage,
    /// Jain's index over the chains' attainment.
    pub fairness: f64,
}

/// How the replicas' CPU is sized during a run.
#[derive(Debug, Clone, Default)]
pub struct Sizing {
    /// Quotas put on the replicas before the load starts (`None`: unlimited).
    pub start: Option<BTreeMap<String, f64>>,
    /// VPA-like: recomputed every trace minute from this usage plus the run's own.
    pub vpa_history: Option<resources::Usage>,
}

impl ArmRun {
    pub fn violating(&self) -> usize {
        self.windows.iter().filter(|w| w.violates).count()
    }

    /// Requests answered 200 within their chain's objective ÷ offered: the
    /// agent's SLO attainment rule (one function for the agent's view, its
    /// rollback and this verdict).
    pub fn goodput(&self) -> f64 {
        meshtune_agent::data::attainment::attainment(self.offered as u64, self.good as u64)
            .unwrap_or(0.0)
    }

    pub fn cpu_total(&self) -> f64 {
        self.cpu_s.0 + self.cpu_s.1 + self.cpu_s.2
    }
}

/// The records of a run as samples: window = the trace minute it was sent in.
pub fn samples(records: &[Record]) -> Vec<Sample> {
    records
        .iter()
        .filter_map(|r| {
            Some(Sample {
                window: r.step,
                chain: chain_of(&r.path)?.to_owned(),
                ok: r.failure.is_none(),
                latency_ms: r.latency_ms,
            })
        })
        .collect()
}

/// CPU microseconds of the lab's processes: (services, sidecars, agent).
fn cpu_us(mesh: &Mesh) -> (u64, u64, u64) {
    let services = mesh
        .replicas
        .values()
        .filter_map(|r| r.pid())
        .map(crate::proc::cpu_micros)
        .sum();
    let sidecars = mesh
        .envoys
        .values()
        .map(|e| crate::proc::cpu_micros(e.child.id()))
        .sum();
    let agent = mesh.agent.pid().map_or(0, crate::proc::cpu_micros);
    (services, sidecars, agent)
}

/// Objects the agent applied so far (its counter; 0 without the agent).
fn changes(mesh: &Mesh) -> u64 {
    crate::http::get_blocking(mesh.agent_port, "/metrics")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("meshtune_destinationrule_applies_total"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .unwrap_or(0)
}

/// Writes one run's `KIND-ARM-RUN.EXT` into `out`; a failure is reported,
/// not fatal (the verdict does not depend on these files).
fn write_run_file(out: &std::path::Path, kind: &str, ext: &str, arm: Arm, run: usize, text: &[u8]) {
    let path = out.join(format!("{kind}-{}-{}.{ext}", arm.name(), run + 1));
    if let Err(e) = std::fs::write(&path, text) {
        println!("  {}: not written: {e}", path.display());
    }
}

/// The agent's decision log of one run (`/v1/decisions`, newest 1,000),
/// kept beside the verdict as `decisions-ARM-RUN.json`: what it wrote, when
/// and why, for a reader asking how an arm came to its outcome.
fn write_decisions(mesh: &Mesh, out: &std::path::Path, arm: Arm, run: usize) {
    match crate::http::get_blocking(mesh.agent_port, "/v1/decisions?limit=1000") {
        Some((200, body)) => write_run_file(out, "decisions", "json", arm, run, body.as_bytes()),
        other => println!(
            "  the agent's decisions for {} run {}: not read ({:?})",
            arm.name(),
            run + 1,
            other.map(|(code, _)| code)
        ),
    }
}

/// Each sidecar's `meshtune_concurrency_limit` gauge now, as CSV rows.
fn concurrency_limits(mesh: &Mesh, at_s: f64) -> String {
    const GAUGE: &str = "/stats?filter=meshtune_concurrency_limit";
    let mut rows = String::new();
    for (name, envoy) in &mesh.envoys {
        if let Some((200, body)) = crate::http::get_blocking(envoy.admin_port, GAUGE) {
            for value in body.lines().filter_map(|l| l.rsplit(": ").next()) {
                if let Ok(v) = value.trim().parse::<u64>() {
                    rows.push_str(&format!("{at_s:.1},{name},{v}\n"));
                }
            }
        }
    }
    rows
}

/// Every request the load generator sent in one run, kept as
/// `requests-ARM-RUN.csv`: a window's verdict read second by second (when
/// in the minute its slow or failed requests came).
fn write_requests(records: &[Record], out: &std::path::Path, arm: Arm, run: usize) {
    let mut text = String::from(
        "# one row per request: wall seconds from the run's start it was sent at, trace minute, \
chain (empty: a path no chain covers), HTTP status (0: no answer), latency ms, what failed (empty: answered 200)\n\
at_s,minute,chain,status,latency_ms,failure\n",
    );
    for r in records {
        let failure = r.failure.as_deref().unwrap_or("").replace([',', '\n'], ";");
        text.push_str(&format!(
            "{:.4},{},{},{},{:.2},{}\n",
            r.at_s,
            r.step,
            chain_of(&r.path).unwrap_or(""),
            r.status,
            r.latency_ms,
            failure
        ));
    }
    write_run_file(out, "requests", "csv", arm, run, text.as_bytes());
}

/// Every sidecar's non-zero statistics at the end of a run (Envoy's
/// `/stats`: requests, 5xx, retries, timeouts, pools, ejections, the
/// filter's own counters), kept as `stats-ARM-RUN.txt`: where an arm's
/// failures and waiting came from, hop by hop.
fn write_sidecar_stats(mesh: &Mesh, out: &std::path::Path, arm: Arm, run: usize) {
    let mut text = String::new();
    for (name, envoy) in &mesh.envoys {
        text.push_str(&format!("== {name}\n"));
        match crate::http::get_blocking(envoy.admin_port, "/stats") {
            Some((200, body)) => {
                for line in body.lines() {
                    let zero = line.ends_with(": 0") || line.ends_with(": No recorded values");
                    if !zero && !line.starts_with("server.") && !line.contains("admin") {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
            other => text.push_str(&format!("(not read: {:?})\n", other.map(|(code, _)| code))),
        }
    }
    write_run_file(out, "stats", "txt", arm, run, text.as_bytes());
}

/// Runs one arm once: a fresh lab, the load and the faults, the verdict.
pub async fn run_arm(
    arm: Arm,
    run: usize,
    rates: &[f64],
    o: &EvalOptions,
    sizing: &Sizing,
) -> anyhow::Result<ArmRun> {
    let mut mesh = Mesh::start(arm.mesh_options(o))
        .await
        .with_context(|| format!("starting the lab for arm {}", arm.name()))?;
    if let Some(start) = &sizing.start {
        resources::apply(&mut mesh, start)?;
    }
    let mut meter = resources::Meter::default();
    meter.tick(&mesh, 1.0);
    let mut metered = Instant::now();
    let spm = o.seconds_per_minute;
    let entry = mesh.entry_port;
    let cpu_start = cpu_us(&mesh);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load_rates = rates.to_vec();
    let arrivals = if o.poisson_arrivals {
        Arrivals::Poisson(run as u64 + 1)
    } else {
        Arrivals::Even
    };
    let load = tokio::spawn(async move {
        open_loop_arrivals(
            entry,
            &load_rates,
            Duration::from_secs_f64(spm),
            &LOAD_MIX,
            &stop_rx,
            arrivals,
        )
        .await
    });
    let mut runner = o.faults.as_ref().map(|(_, s)| Runner::new(s));
    let started = Instant::now();
    let mut last_minute = usize::MAX;
    let record_limits = o.record_limits && arm.runs_filter();
    let mut limits = String::from(
        "# each sidecar's inbound concurrency limit once a wall second (the filter's gauge; \
with several worker VMs the one that set it last)\nat_s,sidecar,limit\n",
    );
    while !load.is_finished() {
        let elapsed = started.elapsed().as_secs_f64();
        if let Some(r) = runner.as_mut() {
            for (t, action) in r.due(elapsed) {
                let done = tokio::task::block_in_place(|| faults::apply(&mut mesh, &action));
                match done {
                    Ok(()) => println!("  [{:>9} {t:>4.0} s] fault: {action}", arm.name()),
                    Err(e) => println!(
                        "  [{:>9} {t:>4.0} s] fault: {action}: not done: {e:#}",
                        arm.name()
                    ),
                }
            }
        }
        if metered.elapsed() >= Duration::from_secs(1) {
            let dt = metered.elapsed().as_secs_f64();
            metered = Instant::now();
            tokio::task::block_in_place(|| meter.tick(&mesh, dt));
            if record_limits {
                tokio::task::block_in_place(|| {
                    limits.push_str(&concurrency_limits(&mesh, elapsed))
                });
            }
        }
        let minute = (elapsed / spm) as usize;
        if minute != last_minute && minute < rates.len() {
            last_minute = minute;
            if let Some(history) = &sizing.vpa_history {
                let mut seen = history.clone();
                for (r, v) in &meter.usage {
                    seen.entry(r.clone()).or_default().extend(v);
                }
                let limits = resources::vpa_limits(&seen);
                tokio::task::block_in_place(|| resources::apply(&mut mesh, &limits))?;
            }
            println!(
                "  [{:>9} run {}] minute {}/{} · {:.0} req/s",
                arm.name(),
                run + 1,
                minute + 1,
                rates.len(),
                rates[minute]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = load.await.context("the load generator")?;
    let cpu_end = cpu_us(&mesh);
    let changes = changes(&mesh);
    write_decisions(&mesh, &o.out, arm, run);
    write_sidecar_stats(&mesh, &o.out, arm, run);
    write_requests(&records, &o.out, arm, run);
    if record_limits {
        write_run_file(&o.out, "limits", "csv", arm, run, limits.as_bytes());
    }
    let reviews_cluster = mesh
        .envoys
        .get("productpage")
        .map(|e| {
            crate::envoy::cluster_in_force(
                e.admin_port,
                "outbound|9080||reviews.bookinfo.svc.cluster.local",
            )
        })
        .unwrap_or_default();
    let samples = samples(&records);
    let windows = chain_windows(&samples, &o.objectives());
    let mut latency = BTreeMap::new();
    for ob in o.objectives() {
        let mut l: Vec<f64> = samples
            .iter()
            .filter(|s| s.chain == ob.chain)
            .map(|s| s.latency_ms)
            .collect();
        l.sort_by(f64::total_cmp);
        let mean = if l.is_empty() {
            0.0
        } else {
            l.iter().sum::<f64>() / l.len() as f64
        };
        latency.insert(
            ob.chain.clone(),
            (l.len(), mean, verdict::percentile(&l, 99.0)),
        );
    }
    let good = windows.iter().map(|w| w.good).sum();
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    Ok(ArmRun {
        arm,
        run,
        latency,
        offered: records.len(),
        good,
        cpu_s: (
            d(cpu_end.0, cpu_start.0),
            d(cpu_end.1, cpu_start.1),
            d(cpu_end.2, cpu_start.2),
        ),
        changes,
        reviews_cluster,
        allocated_cpu_s: meter.allocated_cpu_s,
        usage: meter.usage,
        fairness: resources::fairness(&windows),
        windows,
    })
}

/// The first line: what ran.
pub fn settings_line(o: &EvalOptions) -> String {
    let chains = o
        .chain_defs()
        .iter()
        .map(|c| format!("{}:{}ms/{}", c.name, c.slo_ms, c.priority))
        .collect::<Vec<_>>()
        .join(",");
    let mut line = format!(
        "settings trace={} offset={} minutes={} peak_rps={} seconds_per_minute={} arms={} repeat={} faults={} chains={chains}",
        o.trace.display(),
        o.offset,
        o.minutes,
        o.peak_rps,
        o.seconds_per_minute,
        o.arms.iter().map(|a| a.name()).collect::<Vec<_>>().join(","),
        o.repeat,
        o.faults.as_ref().map_or("none", |(n, _)| n.as_str()),
    );
    if o.cpu_bound {
        line.push_str(" cpu_bound=true");
    }
    if o.poisson_arrivals {
        line.push_str(" arrivals=poisson");
    }
    if o.arms.contains(&Arm::StaticResources) || o.arms.contains(&Arm::MeshtuneResources) {
        line.push_str(&format!(" static_headroom={}", o.static_headroom));
    }
    for (service, c) in &o.capacity {
        line.push_str(&format!(
            " capacity.{service}=workers:{},queue:{}{}",
            c.workers,
            c.queue,
            c.work_ms.map_or(String::new(), |w| format!(",work_ms:{w}"))
        ));
    }
    line
}

/// The table of one run of one arm.
pub fn table(r: &ArmRun) -> String {
    let mut s = format!(
        "run {} · arm {}\n{:<14} {:>8} {:>10} {:>9} {:>7} {:>8} {:>8}\n",
        r.run + 1,
        r.arm.name(),
        "chain",
        "windows",
        "violating",
        "requests",
        "failed",
        "mean ms",
        "p99 ms"
    );
    for (chain, (n, mean, p99)) in &r.latency {
        let w: Vec<&ChainWindow> = r.windows.iter().filter(|w| &w.chain == chain).collect();
        s.push_str(&format!(
            "{chain:<14} {:>8} {:>10} {:>9} {:>7} {:>8.1} {:>8.1}\n",
            w.len(),
            w.iter().filter(|w| w.violates).count(),
            n,
            w.iter().map(|w| w.failed).sum::<usize>(),
            mean,
            p99
        ));
    }
    s.push_str(&format!(
        "goodput {:.3} · cpu {:.1} s (services {:.1}, sidecars {:.1}, agent {:.1}) · configuration changes {}\n",
        r.goodput(),
        r.cpu_total(),
        r.cpu_s.0,
        r.cpu_s.1,
        r.cpu_s.2,
        r.changes
    ));
    if r.arm.sizes_resources() {
        s.push_str(&format!(
            "services' CPU allocated {:.1} s, used {:.1} s · fairness {:.3}\n",
            r.allocated_cpu_s, r.cpu_s.0, r.fairness
        ));
    }
    s
}

/// The resource arms' line (`None` when none ran): chain-windows judged,
/// allocated and used CPU-seconds, violating chain-windows, fairness.
pub fn resources_line(runs: &[ArmRun], arms: &[Arm]) -> Option<String> {
    let arms: Vec<Arm> = arms
        .iter()
        .copied()
        .filter(|a| a.sizes_resources())
        .collect();
    if arms.is_empty() {
        return None;
    }
    let section = |name: &str, value: &dyn Fn(&ArmRun) -> f64, fmt: &dyn Fn(f64) -> String| {
        section(runs, &arms, name, value, fmt)
    };
    let windows = runs
        .iter()
        .find(|r| r.arm.sizes_resources())
        .map_or(0, |r| r.windows.len());
    let one = |x: f64| format!("{x:.1}");
    let int = |x: f64| format!("{x:.0}");
    let three = |x: f64| format!("{x:.3}");
    let mut line = format!(
        "resources windows={windows} {} {} {} {}",
        section("cpu_allocated", &|r| r.allocated_cpu_s, &one),
        section("cpu_used", &|r| r.cpu_s.0, &one),
        section("violating", &|r| r.violating() as f64, &int),
        section("fairness", &|r| r.fairness, &three),
    );
    // Each arm's allocation over static's in the same run (the same
    // calibration, the same machine minutes): the ratio the goal is about.
    if arms.contains(&Arm::StaticResources) {
        let others: Vec<Arm> = arms
            .iter()
            .copied()
            .filter(|a| *a != Arm::StaticResources)
            .collect();
        let ratio = |r: &ArmRun| {
            runs.iter()
                .find(|s| s.arm == Arm::StaticResources && s.run == r.run)
                .filter(|s| s.allocated_cpu_s > 0.0)
                .map_or(f64::NAN, |s| r.allocated_cpu_s / s.allocated_cpu_s)
        };
        let two = |x: f64| format!("{x:.2}");
        if !others.is_empty() {
            line.push(' ');
            line.push_str(&self::section(
                runs,
                &others,
                "cpu_allocated_vs_static",
                &ratio,
                &two,
            ));
        }
    }
    Some(line)
}

/// `NAME arm=value …` for every arm in `arms` (min–max over its runs).
fn section(
    runs: &[ArmRun],
    arms: &[Arm],
    name: &str,
    value: &dyn Fn(&ArmRun) -> f64,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let parts: Vec<String> = arms
        .iter()
        .map(|a| {
            let v: Vec<f64> = runs.iter().filter(|r| r.arm == *a).map(value).collect();
            format!("{}={}", a.name(), range(&v, fmt))
        })
        .collect();
    format!("{name} {}", parts.join(" "))
}

/// `min` or `min–max` of the values, formatted with `f`.
fn range(v: &[f64], f: impl Fn(f64) -> String) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".into()
    } else if (hi - lo).abs() < 1e-12 {
        f(lo)
    } else {
        format!("{}–{}", f(lo), f(hi))
    }
}

/// The last line: every arm that ran, in each section.
pub fn outcome_line(runs: &[ArmRun], arms: &[Arm]) -> String {
    let section = |name: &str, value: &dyn Fn(&ArmRun) -> f64, fmt: &dyn Fn(f64) -> String| {
        section(runs, arms, name, value, fmt)
    };
    let int = |x: f64| format!("{x:.0}");
    let three = |x: f64| format!("{x:.3}");
    let one = |x: f64| format!("{x:.1}");
    let mut line = format!(
        "outcome {} {} {}",
        section("violating_windows", &|r| r.violating() as f64, &int),
        section("goodput", &|r| r.goodput(), &three),
        section("cpu_s", &|r| r.cpu_total(), &one),
    );
    let mean_cpu = |a: Arm| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.arm == a)
            .map(ArmRun::cpu_total)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(m), Some(s)) = (mean_cpu(Arm::Meshtune), mean_cpu(Arm::Static)) {
        if s > 0.0 {
            line.push_str(&format!(" cpu_ratio_meshtune_vs_static={:.2}", m / s));
        }
    }
    if let (Some(m), Some(r)) = (mean_cpu(Arm::MeshtuneModel), mean_cpu(Arm::Meshtune)) {
        if r > 0.0 {
            line.push_str(&format!(" cpu_ratio_model_vs_meshtune={:.2}", m / r));
        }
    }
    line
}

/// The per-window CSV.
pub fn csv(runs: &[ArmRun], objectives: &[Objective]) -> String {
    let mut s = String::from(
        "# one row per chain-window: arm, run, chain, first and last trace minute (windows with <100 requests merged), requests, failed, p99 ms (declared percentile), objective ms, answered 200 within the objective, violates (1/0)\narm,run,chain,first_minute,last_minute,requests,failed,percentile_ms,slo_ms,good,violates\n",
    );
    let slo: BTreeMap<String, f64> = objectives
        .iter()
        .map(|o| (o.chain.clone(), o.slo_ms))
        .collect();
    for r in runs {
        for w in &r.windows {
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{:.2},{},{},{}\n",
                r.arm.name(),
                r.run + 1,
                w.chain,
                w.first,
                w.last,
                w.requests,
                w.failed,
                w.percentile_ms,
                slo.get(&w.chain).copied().unwrap_or(0.0),
                w.good,
                u8::from(w.violates)
            ));
        }
    }
    s
}

/// Runs every arm `repeat` times and writes the CSV and the plot; returns
/// the runs (the caller prints the outcome line).
pub async fn eval(o: &EvalOptions) -> anyhow::Result<Vec<ArmRun>> {
    let counts = crate::trace::read_counts(&o.trace)?;
    anyhow::ensure!(
        o.offset + o.minutes <= counts.len(),
        "--offset {} + {} minutes is past the trace's {} minutes",
        o.offset,
        o.minutes,
        counts.len()
    );
    let mut rates = crate::trace::scaled(&counts, o.offset, o.minutes, o.peak_rps);
    if let Some((_, s)) = &o.faults {
        rates = s.surged(&rates, o.seconds_per_minute);
        let names = replica_names(&bookinfo_with_versions());
        for f in &s.faults {
            if let faults::FaultKind::Errors { replica, .. }
            | faults::FaultKind::Slow { replica, .. }
            | faults::FaultKind::Down { replica } = &f.kind
            {
                anyhow::ensure!(names.contains(replica), "no replica {replica}");
            }
        }
    }
    for chain in o.chains.keys() {
        anyhow::ensure!(
            CHAINS.iter().any(|(c, _, _)| c == chain),
            "chains.{chain}: no chain {chain} in the lab ({})",
            CHAINS.map(|c| c.0).join(", ")
        );
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("--out {}: cannot create it", o.out.display()))?;
    let mut runs = Vec::new();
    for run in 0..o.repeat {
        // The resource arms start from what an unlimited run used.
        let calibration = if o.arms.iter().any(|a| a.sizes_resources()) {
            println!(
                "calibration for the resource arms: meshtune, no CPU limits (run {}/{}) ...",
                run + 1,
                o.repeat
            );
            let c = run_arm(Arm::StaticResources, run, &rates, o, &Sizing::default()).await?;
            Some(c.usage)
        } else {
            None
        };
        for arm in &o.arms {
            println!("arm {} (run {}/{}) ...", arm.name(), run + 1, o.repeat);
            let sizing = match (arm, &calibration) {
                (Arm::StaticResources | Arm::MeshtuneResources, Some(u)) => Sizing {
                    start: Some(resources::static_limits(u, o.static_headroom)),
                    vpa_history: None,
                },
                (Arm::VpaLike, Some(u)) => Sizing {
                    start: Some(resources::vpa_limits(u)),
                    vpa_history: Some(u.clone()),
                },
                _ => Sizing::default(),
            };
            let r = run_arm(*arm, run, &rates, o, &sizing).await?;
            print!("{}", table(&r));
            runs.push(r);
        }
    }
    let csv_path = o.out.join("windows.csv");
    std::fs::write(&csv_path, csv(&runs, &o.objectives()))?;
    let svg_path = o.out.join("eval.svg");
    let periods = o
        .faults
        .as_ref()
        .map(|(_, s)| s.periods(o.minutes as f64 * o.seconds_per_minute))
        .unwrap_or_default()
        .into_iter()
        .map(|(a, b)| (a / o.seconds_per_minute, b / o.seconds_per_minute))
        .collect::<Vec<_>>();
    plot::write_svg(&svg_path, &runs, &o.objectives(), &periods)?;
    println!("wrote {} and {}", csv_path.display(), svg_path.display());
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arm_runs_the_scenarios_service_pools_and_chains() {
        let o = EvalOptions {
            trace: PathBuf::new(),
            offset: 0,
            minutes: 1,
            peak_rps: 1.0,
            seconds_per_minute: 6.0,
            faults: None,
            arms: vec![],
            repeat: 1,
            out: PathBuf::new(),
            capacity: [(
                "ratings".to_string(),
                faults::ServiceCapacity {
                    workers: 1,
                    queue: 50,
                    work_ms: Some(8.0),
                },
            )]
            .into(),
            chains: [(
                "ratings-api".to_string(),
                faults::ChainSettings {
                    slo_ms: Some(50.0),
                    priority: Some("high"),
                },
            )]
            .into(),
            cpu_bound: false,
            record_limits: false,
            static_headroom: resources::STATIC_HEADROOM,
            poisson_arrivals: false,
        };
        for arm in ARMS {
            let m = arm.mesh_options(&o);
            let ratings = m.services.iter().find(|s| s.name == "ratings").unwrap();
            assert_eq!(
                ratings.capacity.map(|c| (c.workers, c.queue)),
                Some((1, 50))
            );
            assert_eq!((ratings.base_us, ratings.tail_us), (8000, 0));
            let reviews = m.services.iter().find(|s| s.name == "reviews").unwrap();
            assert_eq!(reviews.replicas.len(), 3, "reviews keeps its versions");
            let chain = |n: &str| m.chains.iter().find(|c| c.name == n).unwrap().priority;
            assert_eq!(
                (chain("ratings-api"), chain("product-page")),
                ("high", "normal")
            );
            assert_eq!(m.agent_seconds_per_minute, Some(6.0));
        }
    }
}
