//! A local mesh: the Bookinfo-shaped services, each replica its own
//! process with its own real Envoy sidecar running the meshtune filter,
//! the lab's control plane, and the node agent.

use crate::control_plane::{self, Endpoint, SidecarXds, UpstreamService};
use crate::envoy::{
    find_envoy, find_wasm, Envoy, FilterKind, Pod, SidecarSpec, Upstream, AGENT_CLUSTER,
};
use crate::replicas::{replica_name, AgentProcess, Replica};
use crate::services::{self, ServiceSpec, StatsSnapshot};
use anyhow::Context;
use meshtune_agent::AgentConfig;
use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::sync::Arc;

pub const NAMESPACE: &str = "bookinfo";
pub const TOKEN: &str = "lab-token";

/// A chain of the lab: its entry rule, objective and priority.
#[derive(Debug, Clone)]
pub struct ChainDef {
    pub name: &'static str,
    pub path_prefix: &'static str,
    pub slo_ms: f64,
    pub priority: &'static str,
}

pub fn default_chains() -> Vec<ChainDef> {
    CHAINS
        .iter()
        .map(|(name, path_prefix, slo_ms)| ChainDef {
            name,
            path_prefix,
            slo_ms: *slo_ms,
            priority: "normal",
        })
        .collect()
}

/// The chains of the lab and their objectives (ms).
pub const CHAINS: [(&str, &str, f64); 2] = [
    ("product-page", "/productpage", 60.0),
    ("ratings-api", "/api/v1/ratings", 20.0),
];

#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub report_interval_ms: u64,
    pub debug_log_durations: bool,
    pub envoy_concurrency: u32,
    pub agent_window_secs: u64,
    /// One plugin per side (recommended) or one plugin on both sides.
    pub per_side_plugins: bool,
    pub chains: Vec<ChainDef>,
    pub services: Vec<ServiceSpec>,
    /// Turn on the filter's data-path control (deadlines, retries, concurrency).
    pub control: bool,
    /// Put Envoy's native adaptive concurrency filter in front of this service.
    pub native_adaptive: Option<&'static str>,
    /// Put it in front of every service (Envoy's documented defaults).
    pub native_adaptive_everywhere: bool,
    /// Run meshtune's filter in the sidecars (off: sidecars as users have
    /// them before installing meshtune).
    pub filter: bool,
    pub policy_ttl_s: u64,
    /// The agent tunes the mesh: it writes DestinationRules through the
    /// directory sink in `apply` mode, and the lab's control plane applies
    /// them to the sidecars.
    pub tune: bool,
    /// A directory of the user's own DestinationRules and VirtualServices,
    /// applied as `kubectl apply` would (and seen by the agent's guard).
    pub istio_config_dir: Option<std::path::PathBuf>,
    /// The agent's clock runs on trace time, this many wall seconds per
    /// trace minute from the mesh's start (`None`: wall time).
    pub agent_seconds_per_minute: Option<f64>,
    /// The agent sizes the services' CPU and memory: every replica runs in
    /// its own cgroup, the agent reads them and writes each service's
    /// Deployment resources through its sink, and the control plane applies
    /// them to the replicas' cgroups as the kubelet would (needs `tune`).
    pub agent_sizes_resources: bool,
    /// The agent chooses knobs with this configuration model (and refits
    /// it on the sweep it was trained on, `models/config-sweep.csv.gz`).
    pub agent_config_model: Option<std::path::PathBuf>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            report_interval_ms: 1000,
            debug_log_durations: false,
            envoy_concurrency: 2,
            agent_window_secs: 60,
            per_side_plugins: true,
            chains: default_chains(),
            services: services::bookinfo(),
            control: false,
            native_adaptive: None,
            native_adaptive_everywhere: false,
            filter: true,
            policy_ttl_s: 30,
            tune: false,
            istio_config_dir: None,
            agent_seconds_per_minute: None,
            agent_sizes_resources: false,
            agent_config_model: None,
        }
    }
}

/// A port for a listener started later (by Envoy, say). Taken below the
/// kernel's ephemeral range (32768 and up on Linux), where port-0 binds and
/// outgoing connections take theirs: a port from there can be taken by a
/// connection between this check and the listener's bind. Each port is
/// handed out once per process, starting at an offset from the process id
/// so parallel test processes rarely probe the same ones.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The filter's plugin configuration, as a `WasmPlugin.pluginConfig` renders.
pub fn filter_config(opts: &MeshOptions) -> String {
    let rules: Vec<serde_json::Value> = opts
        .chains
        .iter()
        .map(|c| serde_json::json!({"chain": c.name, "path_prefix": c.path_prefix}))
        .collect();
    let mut cfg = serde_json::json!({
        "rules": rules,
        "report_interval_ms": opts.report_interval_ms,
        "agent": {"cluster": AGENT_CLUSTER, "token": TOKEN, "timeout_ms": 1000},
        "debug_log_durations": opts.debug_log_durations,
    });
    if opts.control {
        // Static defaults: each chain's budget is its deadline (the agent's
        // default, four objectives), until the agent's policy adds per-hop caps.
        let chains: serde_json::Map<String, serde_json::Value> = opts
            .chains
            .iter()
            .map(|c| {
                let deadline = meshtune_agent::config::ChainSpec::with_objective(c.slo_ms).deadline_ms();
                (c.name.to_string(), serde_json::json!({"budget_ms": deadline.ceil() as u64, "priority": c.priority}))
            })
            .collect();
        // Each of the sidecar's worker threads runs its own filter VM.
        cfg["control"] = serde_json::json!({
            "hop_reserve_ms": 2,
            "chains": chains,
            "concurrency": {"vms_per_sidecar": opts.envoy_concurrency},
        });
    }
    cfg.to_string()
}

/// The agent configuration of the lab, in the DTA-SLO shape plus meshtune's.
pub fn agent_config_yaml(port: u16, data_dir: &std::path::Path, opts: &MeshOptions) -> String {
    let mut y = format!(
        "listen: 127.0.0.1:{port}\nauth:\n  token: {TOKEN}\ndata_dir: {}\nwindow_seconds: {}\npersist_interval_seconds: 2\npolicy:\n  ttl_seconds: {}\nchains:\n",
        data_dir.display(),
        opts.agent_window_secs,
        opts.policy_ttl_s
    );
    for c in &opts.chains {
        y.push_str(&format!(
            "  {}:\n    slo_ms: {}\n    percentile: 99\n    priority: {}\n",
            c.name, c.slo_ms, c.priority
        ));
    }
    if opts.chains.iter().map(|c| c.name).collect::<Vec<_>>()
        != CHAINS.iter().map(|c| c.0).collect::<Vec<_>>()
    {
        return y;
    }
    if opts.agent_sizes_resources {
        // Every service within the machine's two cores, from a twentieth of one.
        let dir = crate::cgroup::lab_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        // The control plane puts a Deployment's resources on its running
        // replicas' cgroups, restarting nothing: a resize in place.
        y.push_str(&format!(
            "resources:\n  cgroup_dir: {dir}\n  in_place_resize: true\nservices:\n"
        ));
        for (svc, chains) in [
            ("productpage", "[product-page, ratings-api]"),
            ("details", "[product-page]"),
            ("reviews", "[product-page]"),
            ("ratings", "[product-page, ratings-api]"),
        ] {
            y.push_str(&format!(
                "  {svc}:\n    namespace: {NAMESPACE}\n    chains: {chains}\n    min_cpu: 0.05\n    max_cpu: 2\n"
            ));
        }
        return y;
    }
    y.push_str(&format!(
        "services:\n  productpage:\n    namespace: {NAMESPACE}\n    chains: [product-page, ratings-api]\n    min_cpu: 0.1\n    max_cpu: 2\n    min_memory: 128\n    max_memory: 1024\n  details:\n    namespace: {NAMESPACE}\n    chains: [product-page]\n  reviews:\n    namespace: {NAMESPACE}\n    chains: [product-page]\n  ratings:\n    namespace: {NAMESPACE}\n    chains: [product-page, ratings-api]\n",
    ));
    y
}

/// The agent's writing settings when it tunes the lab: apply mode; on
/// wall time a round every five seconds (the lab runs minutes, not hours),
/// on trace time the agent's own default period (trace time makes minutes
/// of the lab hours of the trace).
fn tuning_yaml(opts: &MeshOptions) -> String {
    match (opts.tune, opts.agent_seconds_per_minute) {
        (false, _) => String::new(),
        (true, None) => "kubernetes:\n  mode: apply\n  interval_seconds: 5\n".into(),
        (true, Some(_)) => "kubernetes:\n  mode: apply\n".into(),
    }
}

/// The agent's configuration model, with the shipped sweep as its prior.
fn config_model_yaml(opts: &MeshOptions) -> String {
    match &opts.agent_config_model {
        None => String::new(),
        Some(p) => format!(
            "config_model:\n  path: {}\n  prior: {}\n",
            p.display(),
            crate::envoy::repo_root()
                .join("models/config-sweep.csv.gz")
                .display()
        ),
    }
}

/// The services `s` calls, each once, in name order.
fn calls_of(s: &ServiceSpec) -> Vec<&'static str> {
    let mut d: Vec<&'static str> = s
        .routes
        .iter()
        .flat_map(|r| r.calls.iter().map(|c| c.service))
        .collect();
    d.sort_unstable();
    d.dedup();
    d
}

pub struct Mesh {
    /// Applies the agent's and the user's objects to the sidecars (stopped
    /// first: fields drop in order, and it writes into `dir`).
    pub control_plane: ControlPlane,
    /// The replicas (before their sidecars, so none outlives the lab).
    pub replicas: BTreeMap<String, Replica>,
    pub dir: tempfile::TempDir,
    /// The agent's directory sink (its DestinationRules, when it tunes).
    pub desired_dir: std::path::PathBuf,
    /// One sidecar per replica, by replica name (the first replica of a
    /// service has the service's name).
    pub envoys: BTreeMap<String, Envoy>,
    /// Where clients enter: productpage's inbound listener.
    pub entry_port: u16,
    /// Each replica's sidecar outbound listener (where its app calls
    /// others), by replica name.
    pub outbound_ports: BTreeMap<String, u16>,
    pub agent_port: u16,
    /// The agent's process (stopped, killed and restarted by faults).
    pub agent: AgentProcess,
}

/// The ports of one replica and its sidecar.
#[derive(Debug, Clone)]
struct ReplicaPorts {
    name: String,
    index: usize,
    inbound: u16,
    app: u16,
    admin: u16,
    outbound: Option<u16>,
}

impl Mesh {
    pub async fn start(opts: MeshOptions) -> anyhow::Result<Mesh> {
        let envoy = find_envoy()?;
        let wasm = find_wasm("meshtune_filter.wasm")?;
        let mut dir = tempfile::Builder::new().prefix("meshtune-lab-").tempdir()?;
        // MESHTUNE_LAB_KEEP=1 keeps the Envoy configs and logs for a look afterwards.
        if std::env::var_os("MESHTUNE_LAB_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("lab files kept in {}", dir.path().display());
        }

        // The agent, as its own process.
        let agent_port = free_port()?;
        let mut yaml = agent_config_yaml(agent_port, &dir.path().join("agent-data"), &opts);
        yaml.push_str(&tuning_yaml(&opts));
        yaml.push_str(&config_model_yaml(&opts));
        let agent_yaml = dir.path().join("agent.yaml");
        std::fs::write(&agent_yaml, &yaml)?;
        // Checked here, so a bad configuration is this call's error.
        AgentConfig::parse(&yaml, "agent.yaml")?;
        // Where the agent's objects go when it tunes, read by the control
        // plane; it sees the user's directory as it would see the cluster.
        let desired_dir = dir.path().join("desired");
        let agent = {
            let (d, y, sink, user) = (
                dir.path().to_owned(),
                agent_yaml.clone(),
                opts.tune.then(|| desired_dir.clone()),
                opts.istio_config_dir.clone(),
            );
            let trace_time = opts
                .agent_seconds_per_minute
                .map(crate::replicas::TraceTime::from_now);
            tokio::task::spawn_blocking(move || {
                AgentProcess::start(
                    &d,
                    &y,
                    agent_port,
                    sink.as_deref(),
                    user.as_deref(),
                    trace_time,
                )
            })
            .await??
        };

        // Ports: each replica has an app port and a sidecar (inbound,
        // outbound when it calls others, admin).
        let specs: Vec<ServiceSpec> = opts.services.clone();
        let mut ports: BTreeMap<&'static str, Vec<ReplicaPorts>> = BTreeMap::new();
        for s in &specs {
            anyhow::ensure!(!s.replicas.is_empty(), "service {} has no replica", s.name);
            let calls = !calls_of(s).is_empty();
            let mut v = Vec::new();
            for index in 0..s.replicas.len() {
                v.push(ReplicaPorts {
                    name: replica_name(s.name, index),
                    index,
                    inbound: free_port()?,
                    app: free_port()?,
                    admin: free_port()?,
                    outbound: if calls { Some(free_port()?) } else { None },
                });
            }
            ports.insert(s.name, v);
        }
        let endpoints_of = |service: &str| -> Vec<Endpoint> {
            let spec = specs.iter().find(|s| s.name == service);
            ports[service]
                .iter()
                .map(|p| {
                    let def = spec.and_then(|s| s.replicas.get(p.index));
                    Endpoint {
                        address: "127.0.0.1".into(),
                        port: p.inbound,
                        version: def.map_or("v1", |d| d.version).to_owned(),
                        locality: def
                            .map_or(services::DEFAULT_LOCALITY, |d| d.locality)
                            .to_owned(),
                    }
                })
                .collect()
        };
        let config_json = filter_config(&opts);
        // Every sidecar's outbound side comes from the control plane's
        // files, starting from Istio's defaults.
        let mut xds_sidecars = Vec::new();
        for s in &specs {
            let upstreams = calls_of(s);
            if upstreams.is_empty() {
                continue;
            }
            for p in &ports[s.name] {
                let xds_dir = dir.path().join("xds").join(&p.name);
                std::fs::create_dir_all(&xds_dir)?;
                xds_sidecars.push(SidecarXds {
                    name: p.name.clone(),
                    locality: s.replicas[p.index].locality.to_owned(),
                    xds_dir,
                    upstreams: upstreams
                        .iter()
                        .map(|u| UpstreamService {
                            service: (*u).to_owned(),
                            namespace: NAMESPACE.to_owned(),
                            port: 9080,
                            endpoints: endpoints_of(u),
                        })
                        .collect(),
                });
            }
        }
        let mut config_dirs = vec![desired_dir.clone()];
        config_dirs.extend(opts.istio_config_dir.clone());
        // Each service's replica cgroups, where its Deployment's resources go.
        let groups: BTreeMap<String, Vec<String>> = if opts.agent_sizes_resources {
            specs
                .iter()
                .map(|s| {
                    (
                        s.name.to_owned(),
                        ports[s.name].iter().map(|p| p.name.clone()).collect(),
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let control_plane = ControlPlane::start(xds_sidecars, config_dirs, groups);
        let mut envoys = BTreeMap::new();
        let mut replicas = BTreeMap::new();
        for s in specs.iter() {
            let downstream = calls_of(s);
            for p in &ports[s.name] {
                let def = &s.replicas[p.index];
                let sidecar = SidecarSpec {
                    service: s.name.to_owned(),
                    namespace: NAMESPACE.to_owned(),
                    admin_port: p.admin,
                    inbound_port: p.inbound,
                    app_port: p.app,
                    outbound_port: p.outbound,
                    upstreams: downstream
                        .iter()
                        .map(|d| Upstream {
                            service: (*d).to_owned(),
                            port: ports[d][0].inbound,
                        })
                        .collect(),
                    agent_port: Some(agent_port),
                    filter: if !opts.filter {
                        FilterKind::None
                    } else if opts.per_side_plugins {
                        FilterKind::WasmPerSide {
                            path: wasm.clone(),
                            config_json: config_json.clone(),
                        }
                    } else {
                        FilterKind::Wasm {
                            path: wasm.clone(),
                            config_json: config_json.clone(),
                        }
                    },
                    concurrency: opts.envoy_concurrency,
                    extra_inbound_filters: if opts.native_adaptive_everywhere
                        || opts.native_adaptive == Some(s.name)
                    {
                        vec![crate::envoy::native_adaptive_concurrency()]
                    } else {
                        vec![]
                    },
                    xds_dir: p.outbound.map(|_| dir.path().join("xds").join(&p.name)),
                    pod: Pod {
                        name: format!("{}-{}", s.name, p.index + 1),
                        version: def.version.to_owned(),
                        locality: def.locality.to_owned(),
                    },
                };
                let (spec, dir_path, pp) = (s.clone(), dir.path().to_owned(), p.clone());
                let replica = tokio::task::spawn_blocking(move || {
                    Replica::start(&dir_path, &spec, pp.index, pp.app, pp.outbound)
                })
                .await??;
                let mut replica = replica;
                if opts.agent_sizes_resources {
                    replica.join_cgroup()?;
                }
                replicas.insert(p.name.clone(), replica);
                let (envoy_bin, dir_path, boot) =
                    (envoy.clone(), dir.path().to_owned(), sidecar.bootstrap());
                let (conc, admin) = (sidecar.concurrency, sidecar.admin_port);
                let n = p.name.clone();
                let e = tokio::task::spawn_blocking(move || {
                    Envoy::start(&envoy_bin, &dir_path, &n, &boot, conc, admin)
                })
                .await??;
                envoys.insert(p.name.clone(), e);
            }
        }
        let entry_port = ports
            .get("productpage")
            .and_then(|v| v.first())
            .map(|p| p.inbound)
            .context("the lab needs a productpage service")?;
        let outbound_ports = ports
            .values()
            .flatten()
            .filter_map(|p| Some((p.name.clone(), p.outbound?)))
            .collect();
        Ok(Mesh {
            control_plane,
            outbound_ports,
            replicas,
            desired_dir,
            entry_port,
            dir,
            envoys,
            agent_port,
            agent,
        })
    }

    /// What the replicas of `service` saw, summed (a replica that is down
    /// adds nothing).
    pub fn service_stats(&self, service: &str) -> StatsSnapshot {
        self.replicas
            .values()
            .filter(|r| r.service == service)
            .filter_map(Replica::stats)
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }

    /// Limits every replica of `service` to `cores` CPUs each (`None`
    /// lifts the limit), as a Deployment's `resources.limits.cpu` does.
    pub fn limit_service_cpu(&mut self, service: &str, cores: Option<f64>) -> anyhow::Result<()> {
        let mut found = false;
        for r in self.replicas.values_mut().filter(|r| r.service == service) {
            r.limit_cpu(cores)?;
            found = true;
        }
        anyhow::ensure!(found, "no service {service} in the lab");
        Ok(())
    }

    /// Stops the agent (its port closes); the sidecars keep running.
    pub async fn stop_agent(&mut self) {
        tokio::task::block_in_place(|| self.agent.stop());
    }

    pub fn chains_json(&self) -> Option<serde_json::Value> {
        crate::http::get_blocking(self.agent_port, "/v1/chains")
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
    }
}

/// What the kubelet does with a Deployment's container resources, for the
/// lab's replicas: each replica of the Deployment's service (its cgroup)
/// gets the container's CPU quota and, where the memory controller can be
/// written, its memory limit. Only changes are written; what cannot be is
/// returned as problems.
fn apply_resources(
    dirs: &[std::path::PathBuf],
    groups: &BTreeMap<String, Vec<String>>,
    applied: &mut BTreeMap<String, control_plane::ContainerResources>,
) -> Vec<String> {
    let (objects, _) = control_plane::read_objects(dirs);
    let mut problems = Vec::new();
    for (deployment, res) in control_plane::deployment_resources(&objects) {
        if applied.get(&deployment) == Some(&res) {
            continue;
        }
        let Some(replicas) = groups.get(&deployment) else {
            problems.push(format!(
                "Deployment {deployment}: no such service in the lab"
            ));
            continue;
        };
        let mut ok = true;
        for r in replicas {
            let done =
                crate::cgroup::Cgroup::open(&crate::cgroup::replica_group(r)).and_then(|g| {
                    if let Some(c) = res.cpu {
                        g.set_cpu(c)?;
                    }
                    if let Some(m) = res.memory_mib {
                        g.set_memory((m * 1024.0 * 1024.0) as u64)?;
                    }
                    Ok(())
                });
            if let Err(e) = done {
                ok = false;
                problems.push(format!("Deployment {deployment}: replica {r}: {e}"));
            }
        }
        if ok {
            applied.insert(deployment, res);
        }
    }
    problems
}

/// The control plane running beside the mesh: a pass every second until
/// dropped; what it could not apply is kept for the live view.
pub struct ControlPlane {
    stop: Arc<std::sync::atomic::AtomicBool>,
    problems: Arc<std::sync::Mutex<Vec<String>>>,
    /// Per upstream service: what is in force and since when.
    in_force: Arc<std::sync::Mutex<BTreeMap<String, (String, std::time::Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Runs one pass at once (so the sidecars start with their files in
    /// place), then one a second on a thread of its own.
    pub fn start(
        sidecars: Vec<SidecarXds>,
        dirs: Vec<std::path::PathBuf>,
        groups: BTreeMap<String, Vec<String>>,
    ) -> ControlPlane {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (first, summaries) = control_plane::pass(&sidecars, &dirs);
        let problems = Arc::new(std::sync::Mutex::new(first));
        let in_force = Arc::new(std::sync::Mutex::new(
            summaries
                .into_iter()
                .map(|(k, v)| (k, (v, std::time::Instant::now())))
                .collect::<BTreeMap<_, _>>(),
        ));
        let (s, p, f) = (stop.clone(), problems.clone(), in_force.clone());
        let thread = std::thread::spawn(move || {
            let mut reported: Vec<String> = Vec::new();
            let mut applied = BTreeMap::new();
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let (mut now, summaries) = control_plane::pass(&sidecars, &dirs);
                if !groups.is_empty() {
                    now.extend(apply_resources(&dirs, &groups, &mut applied));
                }
                if let Ok(mut g) = f.lock() {
                    for (svc, line) in summaries {
                        if g.get(&svc).is_none_or(|(l, _)| *l != line) {
                            g.insert(svc, (line, std::time::Instant::now()));
                        }
                    }
                }
                if now != reported {
                    for line in now.iter().filter(|l| !reported.contains(l)) {
                        eprintln!("control plane: {line}");
                    }
                    reported = now.clone();
                }
                if let Ok(mut g) = p.lock() {
                    *g = now;
                }
            }
        });
        ControlPlane {
            stop,
            problems,
            in_force,
            thread: Some(thread),
        }
    }

    /// Per upstream service: the tuned fields in force and since when.
    pub fn in_force(&self) -> BTreeMap<String, (String, std::time::Instant)> {
        self.in_force.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// What the last pass could not apply (file and field path).
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Field of chain `name` in a `/v1/chains` answer.
pub fn chain<'a>(chains: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    chains["chains"]
        .as_array()?
        .iter()
        .find(|c| c["chain"] == name)
}
