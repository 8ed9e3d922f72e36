//! The root context of a VM: configuration, the report timer and the calls
//! to the agent.

use crate::http::Hop;
use crate::metrics::FilterMetrics;
use crate::shared::{ControlState, Shared};
use meshtune_filter_core::control::policy::policy_in_answer;
use meshtune_filter_core::naming::sanitize;
use meshtune_filter_core::wire::Source;
use meshtune_filter_core::{Aggregator, FilterConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

/// Reports in flight to the agent at once; beyond this a report is dropped
/// rather than queued, so a slow agent costs memory never.
const MAX_IN_FLIGHT: usize = 2;

/// What an HTTP call to the agent was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Report,
    PolicyFetch,
}

pub struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    source: Source,
    in_flight: Vec<(u32, Call)>,
    last_report_ns: u64,
    filter_metrics: FilterMetrics,
}

use crate::host::{log, property_str as string_property};

fn random_u64() -> u64 {
    // RandomState draws its keys from WASI `random_get`, which Envoy provides.
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

impl Root {
    pub fn new() -> Self {
        Root {
            shared: None,
            source: Source {
                vm_id: String::new(),
                node: String::new(),
                pod: String::new(),
                namespace: String::new(),
            },
            in_flight: Vec::new(),
            last_report_ns: 0,
            filter_metrics: FilterMetrics::define(),
        }
    }

    fn now_ns(&self) -> u64 {
        crate::host::now_ns()
    }

    fn identify(&mut self) {
        let node_meta = |key: &str| {
            string_property(&["xds", "node", "metadata", key])
                .or_else(|| string_property(&["node", "metadata", key]))
        };
        let pod = node_meta("NAME").unwrap_or_default();
        self.source = Source {
            vm_id: format!(
                "{}-{:016x}",
                if pod.is_empty() { "vm" } else { &pod },
                random_u64()
            ),
            node: node_meta("NODE_NAME")
                .or_else(|| string_property(&["xds", "node", "id"]))
                .or_else(|| string_property(&["node", "id"]))
                .unwrap_or_default(),
            pod,
            namespace: node_meta("NAMESPACE").unwrap_or_default(),
        };
    }

    fn inbound_service(config: &FilterConfig) -> String {
        if let Some(s) = &config.service {
            return s.clone();
        }
        let meta = |path: &[&str]| {
            let mut xds = vec!["xds", "node", "metadata"];
            xds.extend_from_slice(path);
            string_property(&xds).or_else(|| string_property(&xds[1..]))
        };
        let found = meta(&["LABELS", "service.istio.io/canonical-name"])
            .or_else(|| meta(&["LABELS", "app"]))
            .or_else(|| meta(&["WORKLOAD_NAME"]));
        sanitize(found.as_deref().unwrap_or("unknown"))
    }

    /// Publishes batched counters and sends what was recorded since the
    /// last report, if anything; fetches the policy when none was sent and
    /// the policy in force is getting old.
    fn flush(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = self.now_ns();
        let now_ms = now / 1_000_000;
        let interval_ms = now.saturating_sub(self.last_report_ns) / 1_000_000;
        self.last_report_ns = now;
        let mut state = shared.borrow_mut();
        let state = &mut *state;
        for (key, counts) in state.aggregator.pending_counts() {
            if let Some(m) = state.hop_metrics.get(key) {
                m.add_counts(&counts);
            }
        }
        let policy_version = state
            .control
            .as_ref()
            .map_or(0, |c| c.policy.version(now_ms));
        let report = state
            .aggregator
            .take_report(&self.source, interval_ms, policy_version);
        let Some(agent) = state.config.agent.clone() else {
            // No agent configured: stats only (the report just reset the sketches).
            return;
        };
        let wants_policy = state
            .control
            .as_ref()
            .is_some_and(|c| c.policy.wants_refresh(now_ms));
        let (method, path, body, kind) = match report {
            Some(report) => match serde_json::to_vec(&report) {
                Ok(body) => ("POST", agent.path.as_str(), Some(body), Call::Report),
                Err(_) => {
                    state.aggregator.note_dropped_report();
                    FilterMetrics::bump(self.filter_metrics.reports_dropped);
                    return;
                }
            },
            None if wants_policy
                && !self.in_flight.iter().any(|(_, k)| *k == Call::PolicyFetch) =>
            {
                let path = state
                    .control
                    .as_ref()
                    .map_or("/v1/policy", |c| c.config.policy_path.as_str());
                ("GET", path, None, Call::PolicyFetch)
            }
            None => return,
        };
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if kind == Call::Report {
                state.aggregator.note_dropped_report();
                FilterMetrics::bump(self.filter_metrics.reports_dropped);
            }
            return;
        }
        let auth = format!("Bearer {}", agent.token);
        let mut headers = vec![
            (":method", method),
            (":path", path),
            (":authority", agent.authority.as_str()),
        ];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        if !agent.token.is_empty() {
            headers.push(("authorization", auth.as_str()));
        }
        let timeout = Duration::from_millis(agent.timeout_ms);
        match self.dispatch_http_call(&agent.cluster, headers, body.as_deref(), vec![], timeout) {
            Ok(token) => self.in_flight.push((token, kind)),
            Err(status) => {
                if kind == Call::Report {
                    state.aggregator.note_dropped_report();
                    FilterMetrics::bump(self.filter_metrics.reports_dropped);
                }
                log(
                    LogLevel::Debug,
                    &format!("meshtune: call to the agent not dispatched: {status:?}"),
                );
            }
        }
    }

    /// Takes the policy from an agent's answer; a malformed one is rejected
    /// whole and counted, and the policy in force stays.
    fn take_policy(&mut self, answer: &[u8]) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now_ms = self.now_ns() / 1_000_000;
        let mut state = shared.borrow_mut();
        let Some(ctl) = state.control.as_mut() else {
            return;
        };
        let offered = match policy_in_answer(answer) {
            Ok(Some(p)) => ctl.policy.offer(&p, now_ms).map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        ctl.apply_retry_terms(now_ms);
        if let Err(e) = offered {
            FilterMetrics::bump(self.filter_metrics.policy_rejected);
            log(
                LogLevel::Warn,
                &format!("meshtune: policy from the agent rejected, keeping the one in force: {e}"),
            );
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let kind = self
            .in_flight
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, k)| *k);
        self.in_flight.retain(|(t, _)| *t != token);
        let status = crate::host::header_str(MapType::HttpCallResponseHeaders, ":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if (200..300).contains(&status) {
            if kind == Some(Call::Report) {
                FilterMetrics::bump(self.filter_metrics.reports_sent);
            }
            let body = crate::host::http_call_response_body(body_size);
            self.take_policy(&body);
        } else if kind == Some(Call::PolicyFetch) {
            log(
                LogLevel::Debug,
                &format!("meshtune: policy fetch answered {status}"),
            );
        } else {
            FilterMetrics::bump(self.filter_metrics.reports_dropped);
            if let Some(shared) = &self.shared {
                shared.borrow_mut().aggregator.note_dropped_report();
            }
            log(
                LogLevel::Debug,
                &format!("meshtune: agent answered {status}; report dropped"),
            );
        }
    }

    fn on_done(&mut self) -> bool {
        // Best effort: the answer may never arrive, the data is sent anyway.
        self.flush();
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = if size == 0 {
            Vec::new()
        } else {
            crate::host::plugin_configuration()
        };
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                self.identify();
                let service = Self::inbound_service(&config);
                let rule_needs = meshtune_filter_core::rules::needs(&config.rules);
                let control = config.control.clone().map(ControlState::new);
                let interval = Duration::from_millis(config.report_interval_ms);
                let shared = Shared {
                    aggregator: Aggregator::new(config.max_chains, config.max_upstreams),
                    config: Rc::new(config),
                    hop_metrics: Vec::new(),
                    filter_metrics: self.filter_metrics,
                    inbound_service: service,
                    rule_needs,
                    control,
                };
                self.shared = Some(Rc::new(RefCell::new(shared)));
                self.last_report_ns = self.now_ns();
                self.set_tick_period(interval);
            }
            Err(e) => {
                // Fail open: keep traffic flowing untouched and say why.
                self.shared = None;
                FilterMetrics::bump(self.filter_metrics.config_errors);
                log(
                    LogLevel::Error,
                    &format!("meshtune: {e}; the filter passes traffic through unchanged"),
                );
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let serves = self
            .shared
            .as_ref()
            .is_some_and(|s| s.borrow().aggregator.has_keys());
        if serves {
            crate::metrics::set_gauge(
                self.filter_metrics.vm_memory_bytes,
                crate::metrics::vm_memory_bytes(),
            );
            if let Some(shared) = &self.shared {
                let mut guard = shared.borrow_mut();
                let state = &mut *guard;
                if let Some(ctl) = &mut state.control {
                    let now_ms = crate::host::now_ns() / 1_000_000;
                    crate::metrics::set_gauge(
                        self.filter_metrics.policy_version,
                        ctl.policy.version(now_ms),
                    );
                    ctl.apply_retry_terms(now_ms);
                    crate::metrics::add(
                        self.filter_metrics.waited_requests,
                        ctl.waiting.take_waited(),
                    );
                    let growth = ctl.policy.load_growth(&state.inbound_service, now_ms);
                    if let Some(l) = &mut ctl.limit {
                        // Once per tick, not per request; expiry falls back to none.
                        l.set_expected_growth(growth);
                        crate::metrics::set_gauge(
                            self.filter_metrics.concurrency_limit,
                            u64::from(l.limit()),
                        );
                    }
                }
            }
        }
        self.flush();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hop::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
