//! One HTTP stream: assign or read the chain, time the hop, record it.

use crate::metrics::{FilterMetrics, HopMetrics};
use crate::root::Shared;
use meshtune_filter_core::config::OTHER_CHAIN;
use meshtune_filter_core::naming::{is_label_safe, sanitize, service_from_cluster};
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
}

use crate::host::{
    header, header_str, log, now_ns, property_i64 as int_property, property_str as string_property,
    set_header,
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
        let direction = int_property(&["xds", "listener_direction"])
            .or_else(|| int_property(&["listener_direction"]))
            .map_or(Direction::Unspecified, Direction::from_envoy);
        let error = self.is_error();
        let mut state = shared.borrow_mut();
        let service = match direction {
            Direction::Outbound => {
                let cluster = string_property(&["xds", "cluster_name"])
                    .or_else(|| string_property(&["cluster_name"]))
                    .unwrap_or_default();
                let name = service_from_cluster(&cluster);
                if name.is_empty() {
                    "unrouted".to_owned()
                } else {
                    sanitize(name)
                }
            }
            _ => state.inbound_service.clone(),
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
                    m.observe(duration, error);
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
        match header(MapType::HttpRequestHeaders, chain_header) {
            Some(v) => {
                let v = String::from_utf8_lossy(&v);
                self.chain = if is_label_safe(&v) {
                    v.into_owned()
                } else {
                    sanitize(&v)
                };
            }
            None => {
                let get = |k| header_str(MapType::HttpRequestHeaders, k).unwrap_or_default();
                let (host, path, method) = (get(":authority"), get(":path"), get(":method"));
                let chain = rules::assign(&state.config.rules, &host, &path, &method)
                    .unwrap_or(OTHER_CHAIN);
                self.chain = chain.to_owned();
                self.entry = true;
                set_header(MapType::HttpRequestHeaders, chain_header, chain);
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
