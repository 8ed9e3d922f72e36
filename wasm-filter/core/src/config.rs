//! The plugin configuration: the JSON string Istio renders from a
//! `WasmPlugin`'s `pluginConfig`. Parsed and checked once in `on_configure`;
//! every error names the field it is about.

use crate::naming::is_label_safe;
use crate::rules::ChainRule;
use serde::Deserialize;

pub const DEFAULT_CHAIN_HEADER: &str = "x-meshtune-chain";
/// The chain of requests no rule matches.
pub const OTHER_CHAIN: &str = "other";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("plugin configuration is not valid JSON for meshtune: at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("plugin configuration field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where and how reports reach the node agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentTarget {
    /// Envoy cluster of the agent, e.g.
    /// `outbound|9090||meshtune-agent.meshtune-system.svc.cluster.local`.
    pub cluster: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_report_path")]
    pub path: String,
    /// Bearer token the agent expects; empty sends no `authorization` header.
    #[serde(default)]
    pub token: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_authority() -> String {
    "meshtune-agent".into()
}
fn default_report_path() -> String {
    "/v1/reports".into()
}
fn default_timeout_ms() -> u64 {
    2000
}

/// Data-path control; absent means the filter only observes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Header carrying the chain's absolute deadline (Unix ms).
    #[serde(default = "default_deadline_header")]
    pub deadline_header: String,
    /// Time kept back at each hop from the remaining budget.
    #[serde(default = "default_hop_reserve_ms")]
    pub hop_reserve_ms: u64,
    /// Static per-chain policy, used until the agent's arrives and after it expires.
    #[serde(default)]
    pub chains: std::collections::BTreeMap<String, crate::control::ChainPolicy>,
    /// Retry budget per upstream on outbound hops; `null` disables it.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: Option<crate::control::RetryBudgetConfig>,
    /// Adaptive concurrency on inbound hops; `null` disables it.
    #[serde(default = "default_concurrency")]
    pub concurrency: Option<crate::control::ConcurrencyConfig>,
    /// Where the filter fetches the agent's policy when it has no report to send.
    #[serde(default = "default_policy_path")]
    pub policy_path: String,
}

fn default_deadline_header() -> String {
    crate::control::DEADLINE_HEADER.into()
}
fn default_hop_reserve_ms() -> u64 {
    1
}
fn default_retry_budget() -> Option<crate::control::RetryBudgetConfig> {
    Some(crate::control::RetryBudgetConfig::default())
}
fn default_concurrency() -> Option<crate::control::ConcurrencyConfig> {
    Some(crate::control::ConcurrencyConfig::default())
}
fn default_policy_path() -> String {
    "/v1/policy".into()
}

impl ControlConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.deadline_header;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "control.deadline_header",
                "must be a lowercase HTTP header name",
            ));
        }
        if self.hop_reserve_ms > 10_000 {
            return Err(invalid("control.hop_reserve_ms", "must be at most 10000"));
        }
        for (name, c) in &self.chains {
            if !is_label_safe(name) {
                return Err(invalid(
                    format!("control.chains.{name}"),
                    "chain names use letters, digits, `-` and `_`",
                ));
            }
            c.validate(&format!("control.chains.{name}")).map_err(|m| {
                let (field, message) = m.split_once(": ").unwrap_or((m.as_str(), "invalid"));
                invalid(field.to_string(), message.to_string())
            })?;
        }
        if let Some(r) = &self.retry_budget {
            r.validate()
                .map_err(|(f, m)| invalid(format!("control.retry_budget.{f}"), m))?;
        }
        if let Some(c) = &self.concurrency {
            c.validate()
                .map_err(|(f, m)| invalid(format!("control.concurrency.{f}"), m))?;
        }
        if !self.policy_path.starts_with('/') {
            return Err(invalid("control.policy_path", "must start with `/`"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default = "default_chain_header")]
    pub chain_header: String,
    /// Ordered rules assigning a chain at the entry hop; first match wins.
    #[serde(default)]
    pub rules: Vec<ChainRule>,
    #[serde(default = "default_max_chains")]
    pub max_chains: usize,
    #[serde(default = "default_max_upstreams")]
    pub max_upstreams: usize,
    #[serde(default = "default_report_interval_ms")]
    pub report_interval_ms: u64,
    /// Without an agent the filter still records and exports Envoy stats.
    #[serde(default)]
    pub agent: Option<AgentTarget>,
    /// Name of the local service for inbound hops. Default: the proxy's
    /// node metadata (canonical service label, `app` label, workload name).
    #[serde(default)]
    pub service: Option<String>,
    /// The side of the sidecar this plugin runs on, when it is installed
    /// once per side (a `WasmPlugin` with `match: [{mode: SERVER}]` and one
    /// with `CLIENT`): `inbound` or `outbound`. Knowing it saves a property
    /// read per request; absent, each request's cluster name tells.
    #[serde(default)]
    pub direction: Option<crate::wire::Direction>,
    /// Deadline budgets, retry budgets and adaptive concurrency.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Logs every recorded hop duration (with `x-request-id`) at info
    /// level: for tests and debugging only, it is one log line per request.
    #[serde(default)]
    pub debug_log_durations: bool,
}

fn default_chain_header() -> String {
    DEFAULT_CHAIN_HEADER.into()
}
fn default_max_chains() -> usize {
    64
}
fn default_max_upstreams() -> usize {
    32
}
fn default_report_interval_ms() -> u64 {
    5000
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            chain_header: default_chain_header(),
            rules: Vec::new(),
            max_chains: default_max_chains(),
            max_upstreams: default_max_upstreams(),
            report_interval_ms: default_report_interval_ms(),
            agent: None,
            service: None,
            debug_log_durations: false,
            direction: None,
            control: None,
        }
    }
}

impl FilterConfig {
    /// Parses and validates. Empty input means all defaults (a `WasmPlugin`
    /// without `pluginConfig`).
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Self::default());
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let cfg: FilterConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Parse {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.chain_header;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "chain_header",
                "must be a lowercase HTTP header name",
            ));
        }
        if !(1..=4096).contains(&self.max_chains) {
            return Err(invalid("max_chains", "must be between 1 and 4096"));
        }
        if !(1..=4096).contains(&self.max_upstreams) {
            return Err(invalid("max_upstreams", "must be between 1 and 4096"));
        }
        if !(100..=600_000).contains(&self.report_interval_ms) {
            return Err(invalid(
                "report_interval_ms",
                "must be between 100 and 600000",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|(f, m)| invalid(format!("rules[{i}].{f}"), m))?;
        }
        if let Some(agent) = &self.agent {
            if agent.cluster.is_empty() {
                return Err(invalid(
                    "agent.cluster",
                    "must name the agent's Envoy cluster",
                ));
            }
            if !agent.path.starts_with('/') {
                return Err(invalid("agent.path", "must start with `/`"));
            }
            if agent.timeout_ms == 0 || agent.timeout_ms > 60_000 {
                return Err(invalid("agent.timeout_ms", "must be between 1 and 60000"));
            }
        }
        if let Some(c) = &self.control {
            c.validate()?;
        }
        if self.direction == Some(crate::wire::Direction::Unspecified) {
            return Err(invalid(
                "direction",
                "must be `inbound` or `outbound` (or absent)",
            ));
        }
        if let Some(s) = &self.service {
            if !is_label_safe(s) {
                return Err(invalid(
                    "service",
                    "use letters, digits, `-` and `_` (at most 64)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let cfg = FilterConfig::parse(b"  ").unwrap_or_default();
        assert_eq!(cfg, FilterConfig::default());
        assert_eq!(cfg.max_chains, 64);
        assert_eq!(cfg.max_upstreams, 32);
        assert_eq!(cfg.report_interval_ms, 5000);
    }

    #[test]
    fn full_config_parses() {
        let json = br#"{"chain_header":"x-chain","rules":[{"chain":"product","path_prefix":"/productpage","method":"GET"}],
            "max_chains":8,"report_interval_ms":1000,
            "agent":{"cluster":"outbound|9090||meshtune-agent.meshtune-system.svc.cluster.local","token":"t"}}"#;
        let cfg = FilterConfig::parse(json);
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(cfg.rules.len(), 1);
        assert_eq!(cfg.agent.map(|a| a.path), Some("/v1/reports".to_string()));
    }

    #[test]
    fn control_defaults_follow_linkerd_and_can_be_switched_off() {
        let cfg = FilterConfig::parse(br#"{"control":{"chains":{"a":{"budget_ms":100,"priority":"high"}},"concurrency":null}}"#);
        let Ok(FilterConfig {
            control: Some(c), ..
        }) = cfg
        else {
            unreachable!("{cfg:?}")
        };
        let r = c.retry_budget.unwrap_or_default();
        assert_eq!((r.ratio, r.min_per_second), (0.2, 10.0));
        assert!(c.concurrency.is_none());
        assert_eq!(c.deadline_header, "x-meshtune-deadline");
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_path() {
        let err = FilterConfig::parse(br#"{"rules":[{"chain":"a","path_prefx":"/"}]}"#);
        match err {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, "rules[0].path_prefx");
                assert!(message.contains("path_prefx"), "{message}");
            }
            other => unreachable!("expected a parse error, got {other:?}"),
        }
        let err = FilterConfig::parse(br#"{"report_interval_ms":"fast"}"#);
        assert!(
            matches!(err, Err(ConfigError::Parse { ref path, .. }) if path == "report_interval_ms")
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases: [(&[u8], &str); 10] = [
            (br#"{"report_interval_ms":5}"#, "report_interval_ms"),
            (br#"{"max_chains":0}"#, "max_chains"),
            (br#"{"chain_header":"X Chain"}"#, "chain_header"),
            (br#"{"agent":{"cluster":""}}"#, "agent.cluster"),
            (br#"{"rules":[{"chain":"a;b"}]}"#, "rules[0].chain"),
            (br#"{"service":"a.b"}"#, "service"),
            (br#"{"direction":"unspecified"}"#, "direction"),
            (
                br#"{"control":{"chains":{"a":{"budget_ms":0}}}}"#,
                "control.chains.a.budget_ms",
            ),
            (
                br#"{"control":{"retry_budget":{"ratio":-1}}}"#,
                "control.retry_budget.ratio",
            ),
            (
                br#"{"control":{"concurrency":{"min_limit":0}}}"#,
                "control.concurrency.min_limit",
            ),
        ];
        for (json, field) in cases {
            match FilterConfig::parse(json) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => unreachable!("{field}: {other:?}"),
            }
        }
    }
}
