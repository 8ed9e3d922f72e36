//! The agent's YAML configuration. Chains and their objectives can be given
//! the meshtune way (`chains:`) or in the DTA-SLO shape (`slos:` in seconds
//! and `services:` with the chains each service serves); both may be mixed.
//! Every error names the field path and, where it can, the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: `{path}`: {message}")]
    Parse {
        file: String,
        line: usize,
        path: String,
        message: String,
    },
    #[error("{file}{line}: `{path}`: {message}")]
    Invalid {
        file: String,
        line: String,
        path: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// Latency objective of the chain, end to end, in milliseconds.
    pub slo_ms: f64,
    /// Percentile the objective applies to (e.g. 99 for p99).
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    #[serde(default)]
    pub description: String,
    /// Priority class: when an upstream saturates, `low` is shed first.
    #[serde(default)]
    pub priority: meshtune_filter_core::control::Priority,
    /// How long a request of the chain may take at most before meshtune
    /// gives up on it (the deadline budget stamped at the entry, from which
    /// per-hop timeouts are cut), in milliseconds. Unset:
    /// [`DEADLINE_PER_OBJECTIVE`] × `slo_ms`. The objective is a percentile,
    /// not a deadline: a request merely slower than it is still answered.
    #[serde(default)]
    pub deadline_ms: Option<f64>,
}

/// The default deadline in objectives: a p99 objective lets 1 % of requests
/// be slower, and a tail a few times the objective is common under
/// bursts, so requests are given four objectives before they are failed.
pub const DEADLINE_PER_OBJECTIVE: f64 = 4.0;

impl ChainSpec {
    /// A chain with an objective and every other field at its default.
    pub fn with_objective(slo_ms: f64) -> Self {
        ChainSpec {
            slo_ms,
            percentile: default_percentile(),
            description: String::new(),
            priority: Default::default(),
            deadline_ms: None,
        }
    }

    /// The deadline in force: the declared one, else
    /// [`DEADLINE_PER_OBJECTIVE`] × the objective.
    pub fn deadline_ms(&self) -> f64 {
        self.deadline_ms
            .unwrap_or(self.slo_ms * DEADLINE_PER_OBJECTIVE)
    }
}

fn default_percentile() -> f64 {
    99.0
}

/// The configured chains and the declared ones (the configuration wins on
/// a name clash).
pub fn chains_of(
    configured: &BTreeMap<String, ChainSpec>,
    declared: &DeclaredChains,
) -> BTreeMap<String, ChainSpec> {
    let mut all = declared.chains.clone();
    all.extend(configured.clone());
    all
}

/// Chains declared outside the configuration file (ChainSLO objects): their
/// objectives and the entry rules the filters recognise them by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclaredChains {
    pub chains: BTreeMap<String, ChainSpec>,
    /// Entry rules in (namespace, name) order: the first match wins.
    pub rules: Vec<meshtune_filter_core::rules::ChainRule>,
}

/// A service in the DTA-SLO shape: the chains it serves and its resource
/// bounds per replica (CPU in cores, memory in MiB, as a container's
/// resources are). Giving `max_cpu` opts the service into resource
/// allocation (see `plan::sizing`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub chains: Vec<String>,
    /// Kubernetes namespace of the service (for its DestinationRule).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub min_cpu: Option<f64>,
    pub max_cpu: Option<f64>,
    pub min_memory: Option<f64>,
    pub max_memory: Option<f64>,
    /// Locality load balancing written into the service's DestinationRule
    /// (`trafficPolicy.loadBalancer.localityLbSetting`).
    pub locality: Option<LocalitySpec>,
    /// The Deployment whose container resources meshtune sizes (default:
    /// the service's name).
    pub deployment: Option<String>,
    /// Its container (default: the service's name).
    pub container: Option<String>,
    /// `false`: meshtune writes nothing for this service (as the annotation
    /// `meshtune.io/manage: "false"` on its Service or namespace does).
    #[serde(default = "default_true")]
    pub manage: bool,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            chains: Vec::new(),
            namespace: default_namespace(),
            min_cpu: None,
            max_cpu: None,
            min_memory: None,
            max_memory: None,
            locality: None,
            deployment: None,
            container: None,
            manage: true,
        }
    }
}

/// Locality load balancing for a service, validated: failover between
/// regions or a weighted distribution (what the cloud–edge placement decides).
#[derive(Debug, Clone, PartialEq)]
pub enum Locality {
    Failover {
        from: String,
        to: String,
    },
    Distribute {
        from: String,
        to: Vec<(String, u32)>,
    },
}

/// Istio's locality settings, one of them: `failover: {from, to}` (regions)
/// or `distribute: {from, to: {locality: weight}}` (weights sum to 100).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalitySpec {
    pub failover: Option<FailoverSpec>,
    pub distribute: Option<DistributeSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailoverSpec {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistributeSpec {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

impl LocalitySpec {
    /// The writer's form of the setting (validated by `AgentConfig::parse`).
    pub fn to_locality(&self) -> Option<Locality> {
        match (&self.failover, &self.distribute) {
            (Some(f), None) => Some(Locality::Failover {
                from: f.from.clone(),
                to: f.to.clone(),
            }),
            (None, Some(d)) => Some(Locality::Distribute {
                from: d.from.clone(),
                to: d.to.iter().map(|(k, w)| (k.clone(), *w)).collect(),
            }),
            _ => None,
        }
    }

    fn problem(&self) -> Option<(&'static str, String)> {
        match (&self.failover, &self.distribute) {
            (Some(_), Some(_)) | (None, None) => Some((
                "locality",
                "give exactly one of `failover` and `distribute`".into(),
            )),
            (Some(f), None) if f.from.is_empty() || f.to.is_empty() || f.from == f.to => Some((
                "failover",
                "`from` and `to` are two different regions".into(),
            )),
            (None, Some(d)) if d.from.is_empty() || d.to.is_empty() => Some((
                "distribute",
                "`from` and at least one `to` locality are needed".into(),
            )),
            (None, Some(d)) if d.to.values().sum::<u32>() != 100 => Some((
                "distribute",
                format!(
                    "the `to` weights must sum to 100 (they sum to {})",
                    d.to.values().sum::<u32>()
                ),
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default)]
    auth: AuthSpec,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_retention_days")]
    retention_days: u64,
    #[serde(default = "default_window_seconds")]
    window_seconds: u64,
    #[serde(default = "default_persist_interval_seconds")]
    persist_interval_seconds: f64,
    #[serde(default)]
    chains: BTreeMap<String, ChainSpec>,
    /// DTA-SLO: chain → objective in seconds.
    #[serde(default)]
    slos: BTreeMap<String, f64>,
    #[serde(default)]
    services: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    policy: PolicySpec,
    #[serde(default)]
    kubernetes: KubernetesSpec,
    #[serde(default)]
    traffic: TrafficSpec,
    #[serde(default)]
    resources: ResourcesSpec,
    /// ONNX model of the GRU forecaster (models/gru.onnx); without it the
    /// statistical methods forecast alone.
    #[serde(default)]
    forecast_model: Option<PathBuf>,
    #[serde(default)]
    config_model: ConfigModelSpec,
}

/// The configuration model (`meshtune-agent model train`): with `path`,
/// the agent chooses connection pools, outlier detection and route
/// timeouts by looking ahead with it; without it, or when it cannot be
/// loaded, by its rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigModelSpec {
    /// The model file (`models/config-model.json`); `--config-model` overrides.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The sweep the model was trained on (`models/config-sweep.csv.gz`):
    /// refits train on it plus the agent's own rows. Unset: no refits (the
    /// agent still records its rows).
    #[serde(default)]
    pub prior: Option<PathBuf>,
    /// Spreads of the model's trees added to every prediction before it is
    /// held against the objective (the safety margin).
    #[serde(default = "default_model_margin")]
    pub margin: f64,
    /// Goodput a choice must gain over what is in force to be written when
    /// what is in force keeps the objective.
    #[serde(default = "default_model_threshold")]
    pub threshold: f64,
    /// Candidate configurations scored per service and decision.
    #[serde(default = "default_model_candidates")]
    pub candidates: usize,
    /// Minutes between refits on the agent's own rows (0: never).
    #[serde(default = "default_refit_minutes")]
    pub refit_minutes: u64,
    /// Own rows kept (in memory and in the store), newest last.
    #[serde(default = "default_model_rows")]
    pub max_rows: usize,
    /// The newest own rows held out to judge a refit.
    #[serde(default = "default_model_holdout")]
    pub holdout: usize,
}

impl Default for ConfigModelSpec {
    fn default() -> Self {
        ConfigModelSpec {
            path: None,
            prior: None,
            margin: default_model_margin(),
            threshold: default_model_threshold(),
            candidates: default_model_candidates(),
            refit_minutes: default_refit_minutes(),
            max_rows: default_model_rows(),
            holdout: default_model_holdout(),
        }
    }
}

fn default_model_margin() -> f64 {
    1.0
}
fn default_model_threshold() -> f64 {
    0.01
}
fn default_model_candidates() -> usize {
    200
}
fn default_refit_minutes() -> u64 {
    60
}
fn default_model_rows() -> usize {
    2000
}
fn default_model_holdout() -> usize {
    30
}

/// How the agent steers the filters' data-path control.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Send policies to the filters (they fall back to their static defaults otherwise).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a policy holds in a filter before it falls back.
    #[serde(default = "default_policy_ttl")]
    pub ttl_seconds: u64,
    /// A hop's timeout cap is its observed share of the chain's latency times this.
    #[serde(default = "default_hop_headroom")]
    pub hop_headroom: f64,
    /// A retry budget for every filter's upstreams (`ratio`, `min_per_second`,
    /// `window_s`, `max_retries`, `retry_on`), in place of each plugin's own
    /// while the policy is fresh; unset: each plugin's applies.
    #[serde(default)]
    pub retry_budget: Option<meshtune_filter_core::control::RetryBudgetConfig>,
}

/// How CPU and memory are allocated to the services that give `max_cpu`
/// (see `plan::sizing`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Directory of the services' replica cgroups (`SERVICE`, `SERVICE-N`)
    /// the agent reads CPU and memory from. Without it nothing is measured
    /// and no resources are planned.
    pub cgroup_dir: Option<PathBuf>,
    /// The waiting variability of the services' queues, `(ca² + cs²) / 2`
    /// (0.37 fitted by `meshtune-lab bench cpu-model` on the lab).
    #[serde(default = "default_variability")]
    pub variability: f64,
    /// On a cluster: resize running pods in place (`pods/resize`,
    /// Kubernetes ≥ 1.33) instead of changing the Deployment's template.
    /// With a directory sink: whoever applies its Deployment files resizes
    /// the running replicas in place (the lab's control plane does).
    #[serde(default)]
    pub in_place_resize: bool,
    /// With `in_place_resize`: at most this many resizes per Deployment an
    /// hour, in place of `kubernetes.max_changes_per_hour` (which bounds
    /// rollouts: a resize restarts nothing).
    #[serde(default = "default_max_resizes")]
    pub max_resizes_per_hour: usize,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            cgroup_dir: None,
            variability: default_variability(),
            in_place_resize: false,
            max_resizes_per_hour: default_max_resizes(),
        }
    }
}

fn default_variability() -> f64 {
    0.4
}

/// One resize a minute on average: load series come by the minute (the
/// forecaster's step), so a service can follow them up and down.
pub const DEFAULT_MAX_RESIZES_PER_HOUR: usize = 60;

fn default_max_resizes() -> usize {
    DEFAULT_MAX_RESIZES_PER_HOUR
}

fn default_namespace() -> String {
    "default".into()
}

/// Kubernetes integration: leader election, ChainSLO objects and the
/// DestinationRule writer. Off for the local lab.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    #[serde(default)]
    pub enabled: bool,
    /// Namespace of the leader Lease (the agent's own).
    #[serde(default = "default_system_namespace")]
    pub namespace: String,
    /// This agent's identity in the Lease; default: $NODE_NAME, else the host name.
    #[serde(default)]
    pub identity: Option<String>,
    /// `recommend` (compute, log, serve on /v1/recommendations) or `apply`.
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_k8s_interval")]
    pub interval_seconds: u64,
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    #[serde(default = "default_max_changes")]
    pub max_changes_per_hour: usize,
    /// Take fields over from other field managers (server-side apply `force`).
    #[serde(default)]
    pub force_conflicts: bool,
    /// Read chains and objectives from ChainSLO objects too.
    #[serde(default = "default_true")]
    pub watch_chainslos: bool,
    /// Where a user's own DestinationRule already covers a host, meshtune
    /// writes nothing for that host, unless these `trafficPolicy` fields
    /// (`connectionPool`, `outlierDetection`, `loadBalancer`) are named
    /// here: then it takes over just them in the user's object.
    #[serde(default)]
    pub take_over_fields: Vec<String>,
    /// A chain whose objective was breached for this many consecutive
    /// windows gets a tuning round at once (not at the next interval) and a
    /// `replanned` entry in the decision log; 0 turns it off.
    #[serde(default = "default_replan_windows")]
    pub replan_after_breached_windows: u32,
}

/// The fields of a DestinationRule's `trafficPolicy` meshtune may write.
pub const TRAFFIC_POLICY_FIELDS: [&str; 3] = ["connectionPool", "outlierDetection", "loadBalancer"];

/// How the traffic planner turns measurements into DestinationRule fields
/// (each written value says which of these it came from, with its reason).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Connection pools admit this many times the requests measured in
    /// flight (Little's law: rate × latency at the planned percentile).
    #[serde(default = "default_pool_headroom")]
    pub pool_headroom: f64,
    /// The least `http2MaxRequests` written, whatever was measured.
    #[serde(default = "default_min_pool_requests")]
    pub min_pool_requests: u32,
    /// Retries in flight a service may have, as a share of its requests in
    /// flight (Linkerd's retry budget ratio, 0.2, by default).
    #[serde(default = "default_retry_ratio")]
    pub retry_ratio: f64,
    /// How often a healthy host may be ejected by chance: the consecutive
    /// 5xx threshold is the least that keeps the chance of a run that long
    /// at the measured error rate below this, per host and interval.
    #[serde(default = "default_false_ejection")]
    pub false_ejection_rate: f64,
    /// Outlier detection's `maxEjectionPercent`: at most this share of hosts
    /// ejected at once, so the rest can take their load.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Outlier detection's `baseEjectionTime` in seconds (Istio's default, 30).
    #[serde(default = "default_base_ejection_seconds")]
    pub base_ejection_seconds: u64,
}

fn default_pool_headroom() -> f64 {
    2.0
}
fn default_min_pool_requests() -> u32 {
    16
}
fn default_retry_ratio() -> f64 {
    0.2
}
fn default_false_ejection() -> f64 {
    0.01
}
fn default_max_ejection_percent() -> u32 {
    50
}
/// Istio's default `baseEjectionTime`, and the agent's.
pub const DEFAULT_BASE_EJECTION_SECONDS: u64 = 30;

fn default_base_ejection_seconds() -> u64 {
    DEFAULT_BASE_EJECTION_SECONDS
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            pool_headroom: default_pool_headroom(),
            min_pool_requests: default_min_pool_requests(),
            retry_ratio: default_retry_ratio(),
            false_ejection_rate: default_false_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
            base_ejection_seconds: default_base_ejection_seconds(),
        }
    }
}

fn default_system_namespace() -> String {
    "meshtune-system".into()
}
fn default_mode() -> String {
    "recommend".into()
}
fn default_k8s_interval() -> u64 {
    30
}
fn default_lease_seconds() -> u64 {
    15
}
fn default_max_changes() -> usize {
    3
}
fn default_replan_windows() -> u32 {
    3
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        KubernetesSpec {
            enabled: false,
            namespace: default_system_namespace(),
            identity: None,
            mode: default_mode(),
            interval_seconds: default_k8s_interval(),
            lease_seconds: default_lease_seconds(),
            max_changes_per_hour: default_max_changes(),
            force_conflicts: false,
            watch_chainslos: true,
            take_over_fields: Vec::new(),
            replan_after_breached_windows: default_replan_windows(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_policy_ttl() -> u64 {
    30
}
fn default_hop_headroom() -> f64 {
    2.0
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            enabled: true,
            ttl_seconds: default_policy_ttl(),
            hop_headroom: default_hop_headroom(),
            retry_budget: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/meshtune")
}
fn default_retention_days() -> u64 {
    8
}
fn default_window_seconds() -> u64 {
    60
}
fn default_persist_interval_seconds() -> f64 {
    10.0
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Bearer token reports must carry; `None` accepts any (logged loudly).
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub retention: Duration,
    pub window: Duration,
    pub persist_interval: Duration,
    pub chains: BTreeMap<String, ChainSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    pub policy: PolicySpec,
    pub kubernetes: KubernetesSpec,
    pub traffic: TrafficSpec,
    pub resources: ResourcesSpec,
    pub forecast_model: Option<PathBuf>,
    pub config_model: ConfigModelSpec,
}

/// 1-based line of the first `key:` in `text` (best effort, for messages).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
                || t.strip_prefix(&format!("\"{key}\""))
                    .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

fn valid_name(name: &str) -> bool {
    meshtune_filter_core::naming::is_label_safe(name)
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map_or(0, |l| l.line());
            let message = inner.to_string();
            // serde_yaml_ng appends " at line N column M"; the prefix says it.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                path,
                message,
            }
        })?;
        let invalid = |path: String, key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: line_of(text, key)
                .map(|l| format!(": line {l}"))
                .unwrap_or_default(),
            path,
            message,
        };

        let mut chains = raw.chains.clone();
        for (name, spec) in &raw.chains {
            if !valid_name(name) {
                return Err(invalid(
                    format!("chains.{name}"),
                    name,
                    "chain names use letters, digits, `-` and `_` (at most 64)".into(),
                ));
            }
            if !(spec.slo_ms.is_finite() && spec.slo_ms > 0.0) {
                return Err(invalid(
                    format!("chains.{name}.slo_ms"),
                    "slo_ms",
                    "must be a positive number of milliseconds".into(),
                ));
            }
            if !(spec.percentile > 0.0 && spec.percentile <= 100.0) {
                return Err(invalid(
                    format!("chains.{name}.percentile"),
                    "percentile",
                    "must be in (0, 100]".into(),
                ));
            }
            if let Some(d) = spec.deadline_ms {
                if !(d.is_finite() && d >= spec.slo_ms && d <= 600_000.0) {
                    return Err(invalid(
                        format!("chains.{name}.deadline_ms"),
                        "deadline_ms",
                        format!(
                            "must be at least the objective ({} ms) and at most 600000",
                            spec.slo_ms
                        ),
                    ));
                }
            }
        }
        for (name, seconds) in &raw.slos {
            if !valid_name(name) {
                return Err(invalid(
                    format!("slos.{name}"),
                    name,
                    "chain names use letters, digits, `-` and `_` (at most 64)".into(),
                ));
            }
            if !(seconds.is_finite() && *seconds > 0.0) {
                return Err(invalid(
                    format!("slos.{name}"),
                    name,
                    "must be a positive number of seconds".into(),
                ));
            }
            let slo_ms = seconds * 1000.0;
            match chains.get(name) {
                Some(c) if (c.slo_ms - slo_ms).abs() > 1e-9 => {
                    return Err(invalid(
                        format!("slos.{name}"),
                        name,
                        format!(
                            "disagrees with chains.{name}.slo_ms ({} ms vs {} ms)",
                            c.slo_ms, slo_ms
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    chains.insert(name.clone(), ChainSpec::with_objective(slo_ms));
                }
            }
        }
        for (svc, spec) in &raw.services {
            for (i, chain) in spec.chains.iter().enumerate() {
                if !chains.contains_key(chain) {
                    return Err(invalid(
                        format!("services.{svc}.chains[{i}]"),
                        svc,
                        format!("chain `{chain}` has no objective in `chains` or `slos`"),
                    ));
                }
            }
            if let Some((field, message)) = spec.locality.as_ref().and_then(|l| l.problem()) {
                let path = if field == "locality" {
                    format!("services.{svc}.locality")
                } else {
                    format!("services.{svc}.locality.{field}")
                };
                return Err(invalid(path, field, message));
            }
            for (field, lo, hi) in [
                ("cpu", spec.min_cpu, spec.max_cpu),
                ("memory", spec.min_memory, spec.max_memory),
            ] {
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    if lo > hi || lo < 0.0 {
                        return Err(invalid(
                            format!("services.{svc}.min_{field}"),
                            &format!("min_{field}"),
                            format!("must be ≥ 0 and ≤ max_{field}"),
                        ));
                    }
                }
            }
        }
        if !(raw.resources.variability > 0.0 && raw.resources.variability <= 10.0) {
            return Err(invalid(
                "resources.variability".into(),
                "variability",
                "must be in (0, 10]".into(),
            ));
        }
        if raw.resources.max_resizes_per_hour == 0 {
            return Err(invalid(
                "resources.max_resizes_per_hour".into(),
                "max_resizes_per_hour",
                "must be at least 1 (to write no resources, leave out the services' `max_cpu`)"
                    .into(),
            ));
        }
        if raw.window_seconds < 5 || raw.window_seconds > 3600 {
            return Err(invalid(
                "window_seconds".into(),
                "window_seconds",
                "must be between 5 and 3600".into(),
            ));
        }
        if raw.retention_days < 8 || raw.retention_days > 366 {
            return Err(invalid(
                "retention_days".into(),
                "retention_days",
                "must be between 8 and 366 (forecasting needs 8 days)".into(),
            ));
        }
        if !(raw.persist_interval_seconds >= 0.1 && raw.persist_interval_seconds <= 300.0) {
            return Err(invalid(
                "persist_interval_seconds".into(),
                "persist_interval_seconds",
                "must be between 0.1 and 300".into(),
            ));
        }
        if !(1..=3600).contains(&raw.policy.ttl_seconds) {
            return Err(invalid(
                "policy.ttl_seconds".into(),
                "ttl_seconds",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(raw.policy.hop_headroom >= 1.0 && raw.policy.hop_headroom <= 100.0) {
            return Err(invalid(
                "policy.hop_headroom".into(),
                "hop_headroom",
                "must be between 1 and 100".into(),
            ));
        }
        if let Some(r) = &raw.policy.retry_budget {
            r.validate().map_err(|(field, msg)| {
                invalid(
                    format!("policy.retry_budget.{field}"),
                    field,
                    msg.to_string(),
                )
            })?;
        }
        let t = &raw.traffic;
        for (field, ok, message) in [
            (
                "pool_headroom",
                t.pool_headroom >= 1.0 && t.pool_headroom <= 100.0,
                "must be between 1 and 100",
            ),
            (
                "min_pool_requests",
                t.min_pool_requests >= 1,
                "must be at least 1",
            ),
            (
                "retry_ratio",
                t.retry_ratio > 0.0 && t.retry_ratio <= 1.0,
                "must be in (0, 1]",
            ),
            (
                "false_ejection_rate",
                t.false_ejection_rate > 0.0 && t.false_ejection_rate < 1.0,
                "must be in (0, 1)",
            ),
            (
                "max_ejection_percent",
                (1..=100).contains(&t.max_ejection_percent),
                "must be between 1 and 100",
            ),
            (
                "base_ejection_seconds",
                (1..=3600).contains(&t.base_ejection_seconds),
                "must be between 1 and 3600",
            ),
        ] {
            if !ok {
                return Err(invalid(format!("traffic.{field}"), field, message.into()));
            }
        }
        for (i, f) in raw.kubernetes.take_over_fields.iter().enumerate() {
            if !TRAFFIC_POLICY_FIELDS.contains(&f.as_str()) {
                return Err(invalid(
                    format!("kubernetes.take_over_fields[{i}]"),
                    "take_over_fields",
                    format!("`{f}` is not one of {}", TRAFFIC_POLICY_FIELDS.join(", ")),
                ));
            }
        }
        if !matches!(raw.kubernetes.mode.as_str(), "recommend" | "apply") {
            return Err(invalid(
                "kubernetes.mode".into(),
                "mode",
                "must be `recommend` or `apply`".into(),
            ));
        }
        if raw.kubernetes.lease_seconds < 5 || raw.kubernetes.interval_seconds == 0 {
            return Err(invalid(
                "kubernetes.lease_seconds".into(),
                "lease_seconds",
                "must be at least 5 (and interval_seconds at least 1)".into(),
            ));
        }
        if raw.kubernetes.replan_after_breached_windows > 60 {
            return Err(invalid(
                "kubernetes.replan_after_breached_windows".into(),
                "replan_after_breached_windows",
                "must be between 0 (off) and 60 windows".into(),
            ));
        }
        let m = &raw.config_model;
        if !(m.margin.is_finite() && m.margin >= 0.0) {
            return Err(invalid(
                "config_model.margin".into(),
                "margin",
                "must be a number of spreads, 0 or more".into(),
            ));
        }
        if !(0.0..1.0).contains(&m.threshold) {
            return Err(invalid(
                "config_model.threshold".into(),
                "threshold",
                "must be a goodput gain between 0 and 1".into(),
            ));
        }
        if m.candidates == 0 || m.max_rows <= m.holdout || m.holdout == 0 {
            return Err(invalid(
                "config_model.holdout".into(),
                "holdout",
                format!(
                    "needs candidates ≥ 1 and 1 ≤ holdout < max_rows (candidates {}, holdout {}, max_rows {})",
                    m.candidates, m.holdout, m.max_rows
                ),
            ));
        }
        let token = match (&raw.auth.token, &raw.auth.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth".into(),
                    "auth",
                    "give either `token` or `token_file`, not both".into(),
                ))
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err(invalid(
                    "auth.token".into(),
                    "token",
                    "must not be empty".into(),
                ))
            }
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(p)) => {
                let t = std::fs::read_to_string(p).map_err(|e| {
                    invalid(
                        "auth.token_file".into(),
                        "token_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                if t.trim().is_empty() {
                    return Err(invalid(
                        "auth.token_file".into(),
                        "token_file",
                        format!("{} is empty", p.display()),
                    ));
                }
                Some(t.trim().to_owned())
            }
            (None, None) => None,
        };
        Ok(AgentConfig {
            listen: raw.listen,
            token,
            data_dir: raw.data_dir,
            retention: Duration::from_secs(raw.retention_days * 86_400),
            window: Duration::from_secs(raw.window_seconds),
            persist_interval: Duration::from_secs_f64(raw.persist_interval_seconds),
            chains,
            services: raw.services,
            policy: raw.policy,
            kubernetes: raw.kubernetes,
            traffic: raw.traffic,
            resources: raw.resources,
            forecast_model: raw.forecast_model,
            config_model: raw.config_model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, "agent.yaml")
    }

    #[test]
    fn meshtune_and_dta_slo_shapes_merge() {
        let cfg = parse(
            "listen: 127.0.0.1:9191\nauth:\n  token: s3cret\nchains:\n  product:\n    slo_ms: 300\nslos:\n  ratings: 0.1\n  product: 0.3\nservices:\n  productpage:\n    chains: [product, ratings]\n    min_cpu: 0.1\n    max_cpu: 2\n    min_memory: 128\n    max_memory: 1024\n",
        );
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(cfg.chains.len(), 2);
        assert_eq!(cfg.chains["ratings"].slo_ms, 100.0);
        assert_eq!(cfg.chains["ratings"].percentile, 99.0);
        assert_eq!(cfg.token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.retention, Duration::from_secs(8 * 86_400));
        assert_eq!(
            cfg.policy.retry_budget, None,
            "each plugin's own by default"
        );
        let with_budget = parse("policy:\n  retry_budget:\n    ratio: 0.1\n");
        assert_eq!(
            with_budget
                .ok()
                .and_then(|c| c.policy.retry_budget)
                .map(|r| (r.ratio, r.min_per_second)),
            Some((0.1, 10.0))
        );
    }

    #[test]
    fn unknown_field_names_path_and_line() {
        let err = parse("chains:\n  product:\n    slo_ms: 300\n    percentil: 99\n");
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("agent.yaml: line 4"), "{msg}");
        assert!(msg.contains("chains.product"), "{msg}");
        assert!(msg.contains("percentil"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                "chains:\n  product:\n    slo_ms: -1\n",
                "chains.product.slo_ms",
                "line 3",
            ),
            (
                "slos:\n  product: 0.3\nservices:\n  pp:\n    chains: [produkt]\n",
                "services.pp.chains[0]",
                "line 4",
            ),
            (
                "chains:\n  a:\n    slo_ms: 100\nslos:\n  a: 0.2\n",
                "slos.a",
                "line 2",
            ),
            ("window_seconds: 1\n", "window_seconds", "line 1"),
            (
                "resources:\n  max_resizes_per_hour: 0\n",
                "resources.max_resizes_per_hour",
                "line 2",
            ),
            (
                "policy:\n  retry_budget:\n    ratio: 20\n",
                "policy.retry_budget.ratio",
                "line 3",
            ),
            ("auth:\n  token: a\n  token_file: /x\n", "auth", "line 1"),
        ];
        for (text, path, line) in cases {
            let msg = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(&format!("`{path}`")), "{path}: {msg}");
            assert!(msg.contains(line), "{path}: {msg}");
        }
    }

    #[test]
    fn locality_settings_are_checked_and_reach_the_writer() {
        let ok = parse(
            "services:\n  reviews:\n    locality:\n      distribute:\n        from: edge/*\n        to: {edge/*: 70, cloud/*: 30}\n  ratings:\n    locality:\n      failover: {from: edge, to: cloud}\n",
        );
        let cfg = match ok {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        let l = cfg.services["reviews"]
            .locality
            .as_ref()
            .and_then(|l| l.to_locality());
        assert_eq!(
            l,
            Some(Locality::Distribute {
                from: "edge/*".into(),
                to: vec![("cloud/*".into(), 30), ("edge/*".into(), 70)]
            })
        );
        let l = cfg.services["ratings"]
            .locality
            .as_ref()
            .and_then(|l| l.to_locality());
        assert!(matches!(l, Some(Locality::Failover { .. })));
        for (text, path, words) in [
            (
                "services:\n  r:\n    locality:\n      distribute: {from: a, to: {a: 60, b: 30}}\n",
                "services.r.locality.distribute",
                "sum to 90",
            ),
            (
                "services:\n  r:\n    locality: {}\n",
                "services.r.locality",
                "exactly one",
            ),
            (
                "services:\n  r:\n    locality:\n      failover: {from: a, to: a}\n",
                "services.r.locality.failover",
                "different",
            ),
        ] {
            let msg = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(path) && msg.contains(words), "{msg}");
        }
    }

    #[test]
    fn config_model_settings_are_checked_naming_the_field() {
        let cfg =
            parse("config_model:\n  path: m.json\n  holdout: 10\n").map_err(|e| e.to_string());
        assert_eq!(
            cfg.map(|c| (
                c.config_model.path,
                c.config_model.holdout,
                c.config_model.candidates
            )),
            Ok((Some(PathBuf::from("m.json")), 10, 200))
        );
        for (text, path) in [
            ("config_model:\n  margin: -1\n", "config_model.margin"),
            ("config_model:\n  threshold: 2\n", "config_model.threshold"),
            ("config_model:\n  holdout: 5000\n", "config_model.holdout"),
            ("config_model:\n  pth: m.json\n", "config_model"),
        ] {
            let msg = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(path), "{text}: {msg}");
        }
    }
}
