//! One HTTP stream: assign or read the chain, time the hop, record it.

use crate::metrics::{FilterMetrics, HopMetrics};
use crate::root::Shared;
use meshtune_filter_core::abi::parse_pairs;
use meshtune_filter_core::config::OTHER_CHAIN;
use meshtune_filter_core::naming::{
    classify_cluster, is_label_safe, sanitize, service_from_authority, service_from_cluster,
    ClusterKind,
};
use meshtune_filter_core::rules;
use meshtune_filter_core::{Direction, RecordOutcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;

pub struct Hop {
    shared: Option<Rc<RefCell<Shared>>>,
    chain: String,
    entry: bool,
    start_ns: u64,
    status: u16,
    done: bool,
    /// `x-request-id`, kept only when durations are logged for debugging.
    request_id: Option<String>,
    /// Service named by `:authority`, read on plugins configured outbound.
    upstream: String,
}

use crate::host::{
    header, header_pairs, header_str, log, now_ns, property_i64 as int_property,
    property_str as string_property, set_header,
};

impl Hop {
    pub fn new(shared: Option<Rc<RefCell<Shared>>>) -> Self {
        Hop {
            shared,
            chain: String::new(),
            entry: false,
            start_ns: 0,
            status: 0,
            done: false,
            request_id: None,
            upstream: String::new(),
        }
    }

    fn is_error(&self) -> bool {
        match self.status {
            0 => true,
            500.. => true,
            400..=499 => {
                string_property(&["response", "code_details"]).is_some_and(|d| d != "via_upstream")
            }
            _ => false,
        }
    }

    /// Records the hop once; returns the duration recorded.
    fn finish(&mut self) -> Option<u64> {
        if self.done || self.start_ns == 0 {
            return None;
        }
        self.done = true;
        let shared = self.shared.clone()?;
        let duration = now_ns().saturating_sub(self.start_ns);
        let error = self.is_error();
        let mut state = shared.borrow_mut();
        let (direction, service) = match state.config.direction {
            // Installed per side: no property read at all.
            Some(Direction::Inbound) => (Direction::Inbound, state.inbound_service.clone()),
            Some(Direction::Outbound) if !self.upstream.is_empty() => {
                (Direction::Outbound, std::mem::take(&mut self.upstream))
            }
            _ => hop_from_cluster(&state.inbound_service),
        };
        match state.aggregator.record(
            &self.chain,
            &service,
            direction,
            self.entry,
            duration,
            error,
        ) {
            RecordOutcome::Recorded { key, new } => {
                if new {
                    let metrics = HopMetrics::define(&self.chain, &service, direction);
                    if state.hop_metrics.len() == key {
                        state.hop_metrics.push(metrics);
                    }
                }
                if let Some(m) = state.hop_metrics.get(key) {
                    m.observe(duration);
                }
            }
            RecordOutcome::Overflow => FilterMetrics::bump(state.filter_metrics.overflow_requests),
        }
        if state.config.debug_log_durations {
            // One line per hop so a test can compare the recorded sketch with
            // the exact durations measured at the same point.
            log(
                LogLevel::Info,
                &format!(
                    "meshtune-debug hop chain={} service={} direction={} entry={} request_id={} duration_ns={}",
                    self.chain,
                    service,
                    direction.as_str(),
                    self.entry,
                    self.request_id.as_deref().unwrap_or("-"),
                    duration
                ),
            );
        }
        Some(duration)
    }
}

/// Direction and service of a hop from its cluster name (one property read
/// under Istio's naming), else from the listener direction.
fn hop_from_cluster(inbound_service: &str) -> (Direction, String) {
    let cluster = string_property(&["xds", "cluster_name"]).unwrap_or_default();
    match classify_cluster(&cluster) {
        ClusterKind::Inbound => (Direction::Inbound, inbound_service.to_owned()),
        ClusterKind::Outbound(svc) => (Direction::Outbound, sanitize(svc)),
        ClusterKind::Other => {
            let direction = int_property(&["xds", "listener_direction"])
                .map_or(Direction::Unspecified, Direction::from_envoy);
            let service = match direction {
                Direction::Outbound if cluster.is_empty() => "unrouted".to_owned(),
                Direction::Outbound => sanitize(service_from_cluster(&cluster)),
                _ => inbound_service.to_owned(),
            };
            (direction, service)
        }
    }
}

fn sanitize_nonempty(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        sanitize(name)
    }
}

impl Hop {
    /// Makes this hop the chain's entry and forwards the chain downstream.
    fn assign(&mut self, chain_header: &str, chain: &str) {
        self.chain = chain.to_owned();
        self.entry = true;
        set_header(MapType::HttpRequestHeaders, chain_header, chain);
    }
}

impl Context for Hop {}

impl HttpContext for Hop {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        self.start_ns = now_ns();
        let state = shared.borrow();
        let chain_header = state.config.chain_header.as_str();
        if state.config.debug_log_durations {
            self.request_id = header_str(MapType::HttpRequestHeaders, "x-request-id");
        }
        let needs = state.rule_needs;
        let outbound = state.config.direction == Some(Direction::Outbound);
        if needs.host || needs.path || needs.method || outbound {
            // Rules (or the upstream's name) need request headers: one host
            // call fetches them all.
            let buf = header_pairs(MapType::HttpRequestHeaders).unwrap_or_default();
            let (mut chain, mut host, mut path, mut method) = (None, "", "", "");
            for (k, v) in parse_pairs(&buf) {
                let v = std::str::from_utf8(v).unwrap_or("");
                match k {
                    b":authority" => host = v,
                    b":path" => path = v,
                    b":method" => method = v,
                    k if k == chain_header.as_bytes() => chain = Some(v),
                    _ => {}
                }
            }
            if outbound {
                self.upstream = sanitize_nonempty(service_from_authority(host));
            }
            match chain {
                Some(v) => {
                    self.chain = if is_label_safe(v) {
                        v.to_owned()
                    } else {
                        sanitize(v)
                    }
                }
                None => {
                    let chain = rules::assign(&state.config.rules, host, path, method)
                        .unwrap_or(OTHER_CHAIN);
                    self.assign(chain_header, chain);
                }
            }
        } else {
            match header(MapType::HttpRequestHeaders, chain_header) {
                Some(v) => {
                    let v = String::from_utf8_lossy(&v);
                    self.chain = if is_label_safe(&v) {
                        v.into_owned()
                    } else {
                        sanitize(&v)
                    };
                }
                None => self.assign(chain_header, OTHER_CHAIN),
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.shared.is_none() {
            return Action::Continue;
        }
        self.status = header_str(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if end_of_stream {
            self.finish();
            return Action::Continue;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        if self.shared.is_none() {
            return Action::Continue;
        }
        if end_of_stream {
            self.finish();
            return Action::Continue;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Streams reset before the response completed are recorded here.
        self.finish();
    }
}
