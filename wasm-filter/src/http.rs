//! One HTTP stream: assign or read the chain, time the hop, record it.

use crate::metrics::{FilterMetrics, HopMetrics};
use crate::root::Shared;
use meshtune_filter_core::config::{DURATION_HEADER, OTHER_CHAIN};
use meshtune_filter_core::naming::{is_label_safe, sanitize, service_from_cluster};
use meshtune_filter_core::rules;
use meshtune_filter_core::{Direction, RecordOutcome};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct Hop {
    shared: Option<Rc<RefCell<Shared>>>,
    chain: String,
    entry: bool,
    start_ns: u64,
    status: u16,
    done: bool,
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn int_property(path: &[&str]) -> Option<i64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(i64::from_le_bytes(arr))
}

fn string_property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

impl Hop {
    pub fn new(shared: Option<Rc<RefCell<Shared>>>) -> Self {
        Hop { shared, chain: String::new(), entry: false, start_ns: 0, status: 0, done: false }
    }

    fn debug_header(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.borrow().config.debug_duration_header)
    }

    fn is_error(&self) -> bool {
        match self.status {
            0 => true,
            500.. => true,
            400..=499 => string_property(&["response", "code_details"]).is_some_and(|d| d != "via_upstream"),
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
        let direction = int_property(&["listener_direction"]).map_or(Direction::Unspecified, Direction::from_envoy);
        let error = self.is_error();
        let mut state = shared.borrow_mut();
        let service = match direction {
            Direction::Outbound => {
                let cluster = string_property(&["cluster_name"]).unwrap_or_default();
                let name = service_from_cluster(&cluster);
                if name.is_empty() { "unrouted".to_owned() } else { sanitize(name) }
            }
            _ => state.inbound_service.clone(),
        };
        match state.aggregator.record(&self.chain, &service, direction, self.entry, duration, error) {
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
        Some(duration)
    }

    fn finish_with_header(&mut self) {
        if let Some(d) = self.finish() {
            if self.debug_header() {
                self.set_http_response_header(DURATION_HEADER, Some(&d.to_string()));
            }
        }
    }
}

impl Context for Hop {}

impl HttpContext for Hop {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        self.start_ns = now_ns();
        let state = shared.borrow();
        let header = state.config.chain_header.as_str();
        match self.get_http_request_header(header) {
            Some(v) if is_label_safe(&v) => self.chain = v,
            Some(v) => self.chain = sanitize(&v),
            None => {
                let host = self.get_http_request_header(":authority").unwrap_or_default();
                let path = self.get_http_request_header(":path").unwrap_or_default();
                let method = self.get_http_request_header(":method").unwrap_or_default();
                let chain = rules::assign(&state.config.rules, &host, &path, &method).unwrap_or(OTHER_CHAIN);
                self.chain = chain.to_owned();
                self.entry = true;
                self.set_http_request_header(header, Some(chain));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.shared.is_none() {
            return Action::Continue;
        }
        self.status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if end_of_stream {
            self.finish_with_header();
            return Action::Continue;
        }
        // The debug header needs the duration at response end, so the
        // headers wait for the body; without it nothing is held back.
        if self.debug_header() { Action::Pause } else { Action::Continue }
    }

    fn on_http_response_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        if self.shared.is_none() {
            return Action::Continue;
        }
        if end_of_stream {
            self.finish_with_header();
            return Action::Continue;
        }
        if self.debug_header() { Action::Pause } else { Action::Continue }
    }

    fn on_log(&mut self) {
        // Streams reset before the response completed are recorded here.
        self.finish();
    }
}
