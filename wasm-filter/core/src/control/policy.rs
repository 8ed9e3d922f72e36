//! The per-chain policy the agent computes and each filter VM applies, and
//! its validation. A policy is versioned and expires: past its TTL the
//! filter falls back to the static defaults of its plugin configuration.

use crate::naming::is_label_safe;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::control::priority::Priority;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainPolicy {
    /// End-to-end deadline budget stamped at the chain's entry.
    pub budget_ms: u64,
    #[serde(default)]
    pub priority: Priority,
    /// Per-service cap on a hop's upstream timeout within this chain
    /// (a service shared by two chains has one per chain).
    #[serde(default)]
    pub hop_budget_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u64,
    pub ttl_ms: u64,
    #[serde(default)]
    pub chains: BTreeMap<String, ChainPolicy>,
    /// Entry rules declared to the agent (ChainSLO objects); while the
    /// policy is fresh they are tried before the plugin's own rules.
    #[serde(default)]
    pub rules: Vec<crate::rules::ChainRule>,
    /// Per service: the growth of its load the agent's forecast expects
    /// (forecast ÷ now, in [1, 4]); its concurrency limit makes room for it
    /// while latency shows no queueing. Services absent: no growth expected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load_growth: BTreeMap<String, f64>,
    /// The retry budget every upstream uses while the policy is fresh, in
    /// place of the plugin's `control.retry_budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<crate::control::RetryBudgetConfig>,
}

/// Largest budget accepted: ten minutes.
pub const MAX_BUDGET_MS: u64 = 600_000;

impl ChainPolicy {
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.budget_ms == 0 || self.budget_ms > MAX_BUDGET_MS {
            return Err(format!(
                "{at}.budget_ms: must be between 1 and {MAX_BUDGET_MS}"
            ));
        }
        for (svc, ms) in &self.hop_budget_ms {
            if !is_label_safe(svc) {
                return Err(format!("{at}.hop_budget_ms: bad service name {svc:?}"));
            }
            if *ms == 0 || *ms > self.budget_ms {
                return Err(format!(
                    "{at}.hop_budget_ms.{svc}: must be between 1 and budget_ms"
                ));
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Parses and validates a policy; any error rejects it whole.
    pub fn parse(bytes: &[u8]) -> Result<Policy, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let p: Policy = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("at `{}`: {}", e.path(), e.inner()))?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ttl_ms < 1000 || self.ttl_ms > 3_600_000 {
            return Err("ttl_ms: must be between 1000 and 3600000".into());
        }
        for (name, c) in &self.chains {
            if !is_label_safe(name) {
                return Err(format!("chains: bad chain name {name:?}"));
            }
            c.validate(&format!("chains.{name}"))?;
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate()
                .map_err(|(f, m)| format!("rules[{i}].{f}: {m}"))?;
        }
        if let Some(r) = &self.retry_budget {
            r.validate()
                .map_err(|(f, m)| format!("retry_budget.{f}: {m}"))?;
        }
        for (svc, g) in &self.load_growth {
            if !is_label_safe(svc) {
                return Err(format!("load_growth: bad service name {svc:?}"));
            }
            if !(1.0..=crate::control::concurrency::MAX_GROWTH).contains(g) {
                return Err(format!(
                    "load_growth.{svc}: must be between 1 and {}",
                    crate::control::concurrency::MAX_GROWTH
                ));
            }
        }
        Ok(())
    }
}

/// The `policy` member of an agent's answer (to a report or a policy
/// fetch), as raw JSON for [`PolicyState::offer`]; `None` when it has none.
pub fn policy_in_answer(answer: &[u8]) -> Result<Option<Vec<u8>>, String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow, default)]
        policy: Option<&'a serde_json::value::RawValue>,
    }
    let a: Answer = serde_json::from_slice(answer).map_err(|e| e.to_string())?;
    Ok(a.policy.map(|p| p.get().as_bytes().to_vec()))
}

/// The policy in force: the agent's while fresh, else the static defaults.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    defaults: BTreeMap<String, ChainPolicy>,
    current: Option<(Policy, u64)>,
    rejected: u64,
}

impl PolicyState {
    pub fn new(defaults: BTreeMap<String, ChainPolicy>) -> Self {
        PolicyState {
            defaults,
            current: None,
            rejected: 0,
        }
    }

    /// Installs a policy received at `now_ms`. A malformed one is rejected
    /// whole, counted, and the previous one stays. An older version than the
    /// one in force is ignored.
    pub fn offer(&mut self, bytes: &[u8], now_ms: u64) -> Result<u64, String> {
        match Policy::parse(bytes) {
            Ok(p) => {
                if let Some((cur, _)) = &self.current {
                    if p.version < cur.version {
                        return Ok(cur.version);
                    }
                }
                let v = p.version;
                self.current = Some((p, now_ms));
                Ok(v)
            }
            Err(e) => {
                self.rejected += 1;
                Err(e)
            }
        }
    }

    /// The agent's policy if it has not expired at `now_ms`.
    pub fn fresh(&self, now_ms: u64) -> Option<&Policy> {
        self.current
            .as_ref()
            .filter(|(p, at)| now_ms < at.saturating_add(p.ttl_ms))
            .map(|(p, _)| p)
    }

    /// The chain's policy in force: the agent's while fresh, else the default.
    pub fn chain(&self, chain: &str, now_ms: u64) -> Option<&ChainPolicy> {
        match self.fresh(now_ms) {
            Some(p) => p.chains.get(chain).or_else(|| self.defaults.get(chain)),
            None => self.defaults.get(chain),
        }
    }

    /// True when a fetch is due: none yet, or past half its TTL.
    pub fn wants_refresh(&self, now_ms: u64) -> bool {
        match &self.current {
            None => true,
            Some((p, at)) => now_ms >= at.saturating_add(p.ttl_ms / 2),
        }
    }

    /// The load growth the fresh policy expects for `service` (1: none,
    /// or no fresh policy).
    pub fn load_growth(&self, service: &str, now_ms: u64) -> f64 {
        self.fresh(now_ms)
            .and_then(|p| p.load_growth.get(service).copied())
            .unwrap_or(1.0)
    }

    /// The retry budget of the fresh policy, if it sets one.
    pub fn retry_budget(&self, now_ms: u64) -> Option<&crate::control::RetryBudgetConfig> {
        self.fresh(now_ms).and_then(|p| p.retry_budget.as_ref())
    }

    pub fn version(&self, now_ms: u64) -> u64 {
        self.fresh(now_ms).map_or(0, |p| p.version)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> BTreeMap<String, ChainPolicy> {
        let mut d = BTreeMap::new();
        d.insert(
            "a".to_string(),
            ChainPolicy {
                budget_ms: 500,
                priority: Priority::Low,
                hop_budget_ms: BTreeMap::new(),
            },
        );
        d
    }

    #[test]
    fn fresh_policy_wins_then_expires_to_defaults() {
        let mut st = PolicyState::new(defaults());
        assert_eq!(st.chain("a", 0).map(|c| c.budget_ms), Some(500));
        let p = br#"{"version": 3, "ttl_ms": 10000, "chains": {"a": {"budget_ms": 80, "priority": "high", "hop_budget_ms": {"ratings": 30}}}}"#;
        assert_eq!(st.offer(p, 1000), Ok(3));
        assert_eq!(
            st.chain("a", 5000).map(|c| (c.budget_ms, c.priority)),
            Some((80, Priority::High))
        );
        assert!(!st.wants_refresh(5000));
        assert!(st.wants_refresh(6000));
        // Past the TTL: back to the plugin's defaults.
        assert_eq!(st.chain("a", 11_000).map(|c| c.budget_ms), Some(500));
        assert_eq!(st.version(11_000), 0);
    }

    #[test]
    fn malformed_policies_are_rejected_whole_and_the_previous_stays() {
        let mut st = PolicyState::new(BTreeMap::new());
        let good = br#"{"version": 1, "ttl_ms": 10000, "chains": {"a": {"budget_ms": 80}}}"#;
        assert!(st.offer(good, 0).is_ok());
        let bad: [&[u8]; 5] = [
            b"not json",
            br#"{"version": 2, "ttl_ms": 10000, "chains": {"a": {"budget_ms": 0}}}"#,
            br#"{"version": 2, "ttl_ms": 10000, "chains": {"a": {"budget_ms": 50, "hop_budget_ms": {"r": 90}}}}"#,
            br#"{"version": 2, "ttl_ms": 5, "chains": {}}"#,
            br#"{"version": 2, "ttl_ms": 10000, "chains": {"a": {"budget_ms": 50, "extra": 1}}}"#,
        ];
        for b in bad {
            assert!(st.offer(b, 10).is_err());
        }
        assert_eq!(st.rejected(), 5);
        assert_eq!(st.version(20), 1);
        assert_eq!(st.chain("a", 20).map(|c| c.budget_ms), Some(80));
    }

    #[test]
    fn the_policy_is_found_in_an_answer() {
        let a =
            br#"{"status": "counted", "records": 2, "policy": {"version": 9, "ttl_ms": 30000}}"#;
        let p = policy_in_answer(a).ok().flatten().unwrap_or_default();
        assert_eq!(Policy::parse(&p).map(|p| p.version), Ok(9));
        assert_eq!(policy_in_answer(br#"{"status": "duplicate"}"#), Ok(None));
        assert!(policy_in_answer(b"<html>").is_err());
    }

    #[test]
    fn policies_carry_entry_rules_validated_like_the_plugins() {
        let mut st = PolicyState::new(BTreeMap::new());
        let p = br#"{"version": 1, "ttl_ms": 5000, "rules": [{"chain": "cart", "path_prefix": "/cart"}]}"#;
        assert!(st.offer(p, 0).is_ok());
        assert_eq!(st.fresh(1).map(|p| p.rules.len()), Some(1));
        let bad = br#"{"version": 2, "ttl_ms": 5000, "rules": [{"chain": "cart", "path_prefix": "cart"}]}"#;
        assert!(st
            .offer(bad, 2)
            .is_err_and(|e| e.contains("rules[0].path_prefix")));
    }

    #[test]
    fn load_growth_is_validated_and_expires_with_the_policy() {
        let mut st = PolicyState::new(BTreeMap::new());
        let p = br#"{"version": 1, "ttl_ms": 5000, "load_growth": {"ratings": 1.5}}"#;
        assert!(st.offer(p, 0).is_ok());
        assert_eq!(st.load_growth("ratings", 10), 1.5);
        assert_eq!(st.load_growth("reviews", 10), 1.0);
        assert_eq!(
            st.load_growth("ratings", 5000),
            1.0,
            "expired with the policy"
        );
        for (bad, field) in [
            (
                &br#"{"version": 2, "ttl_ms": 5000, "load_growth": {"ratings": 0.5}}"#[..],
                "load_growth.ratings",
            ),
            (
                br#"{"version": 2, "ttl_ms": 5000, "load_growth": {"ratings": 9}}"#,
                "load_growth.ratings",
            ),
            (
                br#"{"version": 2, "ttl_ms": 5000, "load_growth": {"a b": 2}}"#,
                "load_growth: bad service",
            ),
        ] {
            assert!(
                st.offer(bad, 1).is_err_and(|e| e.contains(field)),
                "{field}"
            );
        }
        assert_eq!(st.version(2), 1, "rejected whole, the previous stays");
    }

    #[test]
    fn the_agents_retry_budget_applies_while_fresh_and_is_validated() {
        let mut st = PolicyState::new(BTreeMap::new());
        let p = br#"{"version": 1, "ttl_ms": 5000, "retry_budget": {"ratio": 0.05, "min_per_second": 1}}"#;
        assert!(st.offer(p, 0).is_ok());
        assert_eq!(st.retry_budget(10).map(|r| r.ratio), Some(0.05));
        assert_eq!(
            st.retry_budget(10).map(|r| r.max_retries),
            Some(2),
            "defaults fill the rest"
        );
        assert!(st.retry_budget(5000).is_none(), "expired with the policy");
        let bad = br#"{"version": 2, "ttl_ms": 5000, "retry_budget": {"ratio": -1}}"#;
        assert!(st
            .offer(bad, 1)
            .is_err_and(|e| e.contains("retry_budget.ratio")));
    }

    #[test]
    fn older_versions_do_not_replace_newer() {
        let mut st = PolicyState::new(BTreeMap::new());
        assert!(st.offer(br#"{"version": 5, "ttl_ms": 10000}"#, 0).is_ok());
        assert_eq!(st.offer(br#"{"version": 4, "ttl_ms": 10000}"#, 1), Ok(5));
        assert_eq!(st.version(2), 5);
    }
}
