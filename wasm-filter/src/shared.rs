//! Per-VM state shared by the root context and its HTTP contexts.

use crate::metrics::{FilterMetrics, HopMetrics};
use meshtune_filter_core::config::ControlConfig;
use meshtune_filter_core::control::policy::PolicyState;
use meshtune_filter_core::control::{AdaptiveLimit, RetryBudget, RetryBudgetConfig, WaitQueue};
use meshtune_filter_core::{Aggregator, FilterConfig};
use std::collections::HashMap;
use std::rc::Rc;

/// Per-VM state shared by the root context and its HTTP contexts.
pub struct Shared {
    pub config: Rc<FilterConfig>,
    pub aggregator: Aggregator,
    pub hop_metrics: Vec<HopMetrics>,
    pub filter_metrics: FilterMetrics,
    /// Service name used for inbound hops.
    pub inbound_service: String,
    /// Request headers the chain rules read.
    pub rule_needs: meshtune_filter_core::rules::RuleNeeds,
    /// Data-path control, when configured.
    pub control: Option<ControlState>,
}

/// Per-VM control state: the policy in force, the inbound concurrency limit
/// and one retry budget per upstream service.
pub struct ControlState {
    pub config: ControlConfig,
    pub policy: PolicyState,
    pub limit: Option<AdaptiveLimit>,
    /// Streams paused at the limit until a slot frees up.
    pub waiting: WaitQueue,
    pub retry: HashMap<String, RetryBudget>,
}

/// The retry budget terms in force at `now_ms`: the agent's while its policy
/// is fresh, else the plugin's. Takes the two fields, not the whole state, so
/// a caller may hold the budgets mutably meanwhile.
pub fn retry_terms<'a>(
    policy: &'a PolicyState,
    config: &'a ControlConfig,
    now_ms: u64,
) -> Option<&'a RetryBudgetConfig> {
    policy.retry_budget(now_ms).or(config.retry_budget.as_ref())
}

impl ControlState {
    /// Gives every upstream's retry budget the terms in force at `now_ms`
    /// and the load growth the policy forecasts for it.
    pub fn apply_retry_terms(&mut self, now_ms: u64) {
        let terms = retry_terms(&self.policy, &self.config, now_ms);
        for (service, budget) in self.retry.iter_mut() {
            if let Some(terms) = terms {
                budget.set_config(terms);
            }
            budget.set_expected_growth(self.policy.load_growth(service, now_ms));
        }
    }

    pub fn new(config: ControlConfig) -> Self {
        ControlState {
            policy: PolicyState::new(config.chains.clone()),
            limit: config.concurrency.clone().map(AdaptiveLimit::new),
            waiting: WaitQueue::new(),
            retry: HashMap::new(),
            config,
        }
    }
}
