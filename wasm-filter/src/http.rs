//! One HTTP stream: assign or read the chain, apply the chain's policy
//! (deadline, concurrency, retries), time the hop, record it.

use crate::host::{
    add_header, header, header_pairs, header_str, log, now_ns, property_i64 as int_property,
    property_str as string_property, resume_request_of, send_local_response, set_header,
    set_shared_data, shared_data,
};
use crate::metrics::{FilterMetrics, HopMetrics};
use crate::shared::Shared;
use meshtune_filter_core::abi::parse_pairs;
use meshtune_filter_core::config::OTHER_CHAIN;
use meshtune_filter_core::control::deadline::{self, parse_deadline, TIMEOUT_HEADER};
use meshtune_filter_core::control::{no_retry, Admission, DeadlineDecision, Left, RetryBudget};
use meshtune_filter_core::naming::{
    classify_cluster, is_label_safe, sanitize, service_from_authority, service_from_cluster,
    ClusterKind,
};
use meshtune_filter_core::rules;
use meshtune_filter_core::{Direction, LocalReply, RecordOutcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// A request the filter answers itself, and whether the caller's retry of
/// it could succeed.
#[derive(Debug, Clone, Copy)]
struct Answer {
    kind: LocalReply,
    retry_may_help: bool,
}

/// A stream's place at the inbound concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not counted by the limit (outbound, uncontrolled, or answered here).
    None,
    /// Admitted on arrival: in flight from the stream's start.
    Held,
    /// Paused at the limit: admitted later from the queue, or never if its
    /// client left first.
    Waiting,
}

/// What the filter does with a request it controls.
enum Decision {
    Forward,
    /// Pause it until the concurrency limit has room (see `waiting`).
    Wait,
    Answer(Answer),
}

pub struct Hop {
    /// The stream's context id, by which a paused request is resumed.
    context_id: u32,
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
    /// Direction and service once known (early when control needs them).
    hop: Option<(Direction, String)>,
    /// Set when the filter answered the request itself.
    local: Option<LocalReply>,
    /// Its place at the concurrency limit.
    slot: Slot,
    retries_granted: u32,
}

/// The request headers as fetched from the host: every pair in one
/// buffer, or only the chain header when nothing else is needed.
enum Fetched {
    /// `None` when the host could not give them.
    Pairs(Option<Vec<u8>>),
    Chain {
        chain: Option<Vec<u8>>,
        request_id: Option<String>,
    },
}

/// What the request headers say, borrowed from [`Fetched`]: each request
/// costs one host buffer, not a string per header (every allocation is a
/// few hundred wasm operations).
#[derive(Default)]
struct RequestView<'a> {
    chain: Option<&'a [u8]>,
    host: &'a str,
    path: &'a str,
    method: &'a str,
    deadline_ms: Option<u64>,
    timeout_ms: Option<u64>,
    /// The headers were present (parsable or not): set them by replacing,
    /// else by adding, which is cheaper for Envoy.
    deadline_present: bool,
    timeout_present: bool,
    /// Every header was read, so an absent one is known to be absent.
    complete: bool,
    request_id: Option<&'a str>,
}

impl RequestView<'_> {
    /// How to set a request header: add it when known to be absent
    /// (one step for Envoy), else replace it.
    fn setter(&self, present: bool) -> fn(MapType, &str, &str) -> bool {
        if self.complete && !present {
            add_header
        } else {
            set_header
        }
    }
}

impl Fetched {
    fn view(&self, cfg: &meshtune_filter_core::FilterConfig) -> RequestView<'_> {
        match self {
            Fetched::Chain { chain, request_id } => RequestView {
                chain: chain.as_deref(),
                request_id: request_id.as_deref(),
                ..RequestView::default()
            },
            Fetched::Pairs(None) => RequestView::default(),
            Fetched::Pairs(Some(buf)) => {
                let deadline_header = cfg.control.as_ref().map(|c| c.deadline_header.as_bytes());
                let mut view = RequestView {
                    complete: true,
                    ..RequestView::default()
                };
                for (k, v) in parse_pairs(buf) {
                    let text = || std::str::from_utf8(v).unwrap_or("");
                    match k {
                        b":authority" => view.host = text(),
                        b":path" => view.path = text(),
                        b":method" => view.method = text(),
                        k if k == no_retry::REQUEST_ID_HEADER.as_bytes()
                            && cfg.debug_log_durations =>
                        {
                            view.request_id = Some(text())
                        }
                        b"x-envoy-upstream-rq-timeout-ms" => {
                            view.timeout_present = true;
                            view.timeout_ms = parse_deadline(v)
                        }
                        k if k == cfg.chain_header.as_bytes() => view.chain = Some(v),
                        k if Some(k) == deadline_header => {
                            view.deadline_present = true;
                            view.deadline_ms = parse_deadline(v)
                        }
                        _ => {}
                    }
                }
                view
            }
        }
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

fn label(v: &str) -> String {
    if is_label_safe(v) {
        v.to_owned()
    } else {
        sanitize(v)
    }
}

impl Hop {
    pub fn new(context_id: u32, shared: Option<Rc<RefCell<Shared>>>) -> Self {
        Hop {
            context_id,
            shared,
            chain: String::new(),
            entry: false,
            start_ns: 0,
            status: 0,
            done: false,
            request_id: None,
            upstream: String::new(),
            hop: None,
            local: None,
            slot: Slot::None,
            retries_granted: 0,
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

    /// On a failed response under data-path control: the outbound side
    /// marks a request whose upstream asked not to be retried; the inbound
    /// side passes that on when the application fails the marked request
    /// (see `no_retry`). The request id is read here, from the request
    /// headers Envoy keeps for the stream, so success costs nothing.
    fn carry_no_retry(&self) {
        let Some((direction, _)) = &self.hop else {
            return;
        };
        let key = || {
            header(MapType::HttpRequestHeaders, no_retry::REQUEST_ID_HEADER)
                .map(|id| no_retry::request_key(&id))
        };
        match direction {
            Direction::Outbound
                if no_retry::marks(&|name| {
                    header(MapType::HttpResponseHeaders, name).is_some()
                }) =>
            {
                if let Some(k) = key() {
                    set_shared_data(&no_retry::slot_name(k), &no_retry::mark(k));
                }
            }
            Direction::Inbound if self.local.is_none() => {
                let marked = key().is_some_and(|k| {
                    shared_data(&no_retry::slot_name(k)).is_some_and(|v| no_retry::is_marked(&v, k))
                });
                if marked {
                    set_header(MapType::HttpResponseHeaders, no_retry::HEADER, "true");
                }
            }
            _ => {}
        }
    }

    fn fetch(state: &Shared) -> Fetched {
        let cfg = &state.config;
        let needs = state.rule_needs;
        let outbound = cfg.direction == Some(Direction::Outbound);
        if !(needs.host || needs.path || needs.method || outbound || cfg.control.is_some()) {
            // Only the chain header matters: read just it.
            return Fetched::Chain {
                chain: header(MapType::HttpRequestHeaders, &cfg.chain_header),
                request_id: cfg
                    .debug_log_durations
                    .then(|| header_str(MapType::HttpRequestHeaders, no_retry::REQUEST_ID_HEADER))
                    .flatten(),
            };
        }
        // One host call fetches every request header.
        Fetched::Pairs(header_pairs(MapType::HttpRequestHeaders))
    }

    /// Answers the request here; the borrow of the shared state must be
    /// released before, since Envoy runs the response callbacks for it.
    ///
    /// The answer has no body (the reason travels in `x-meshtune-reason`
    /// and the response details): a caller's Envoy that retries a response
    /// still being received resets the stream, which on HTTP/1.1 closes the
    /// connection, so every retried shed used to cost a new connection at
    /// both ends. Where a retry cannot help, `x-envoy-ratelimited` asks the
    /// caller's Envoy not to make one (its router never retries a response
    /// carrying it unless the route retries on `envoy-ratelimited`): a spent
    /// deadline stays spent, and a class shed at its share would take the
    /// room kept for more important ones.
    fn reply(&mut self, answer: Answer, service: &str) -> Action {
        let kind = answer.kind;
        self.local = Some(kind);
        let (status, details, reason) = match kind {
            LocalReply::DeadlineExceeded => {
                (504, "meshtune_deadline_exceeded", "deadline_exceeded")
            }
            LocalReply::Shed => (503, "meshtune_concurrency_limited", "shed"),
        };
        let mut headers = vec![
            (no_retry::REASON_HEADER, reason),
            ("x-meshtune-service", service),
        ];
        if kind == LocalReply::Shed {
            headers.push(("retry-after", "1"));
        }
        if !answer.retry_may_help {
            headers.push((no_retry::HEADER, "true"));
        }
        if send_local_response(status, details, "", &headers) {
            Action::Pause
        } else {
            // Could not answer: forward after all (fail open).
            self.local = None;
            Action::Continue
        }
    }

    /// Deadline, concurrency and retry decisions for this request: forward
    /// it, pause it until the limit has room, or answer it here.
    fn control(&mut self, shared: &Rc<RefCell<Shared>>, view: &RequestView<'_>) -> Decision {
        let now_ms = self.start_ns / 1_000_000;
        let (direction, service) = {
            let state = shared.borrow();
            match (state.config.direction, &self.upstream) {
                (Some(Direction::Inbound), _) => {
                    (Direction::Inbound, state.inbound_service.clone())
                }
                (Some(Direction::Outbound), up) if !up.is_empty() => {
                    (Direction::Outbound, up.clone())
                }
                _ => hop_from_cluster(&state.inbound_service),
            }
        };
        self.hop = Some((direction, service.clone()));
        let mut state = shared.borrow_mut();
        let max_upstreams = state.config.max_upstreams;
        let Some(ctl) = state.control.as_mut() else {
            return Decision::Forward;
        };
        let policy = ctl.policy.chain(&self.chain, now_ms).cloned();
        let mut deadline_ms = view.deadline_ms;
        if self.entry {
            if let Some(p) = &policy {
                let d = now_ms + p.budget_ms;
                deadline_ms = Some(deadline_ms.map_or(d, |x| x.min(d)));
            }
        }
        if let (true, Some(d)) = (self.entry, deadline_ms) {
            view.setter(view.deadline_present)(
                MapType::HttpRequestHeaders,
                &ctl.config.deadline_header,
                &d.to_string(),
            );
        }
        let cap = policy
            .as_ref()
            .and_then(|p| p.hop_budget_ms.get(&service).copied());
        let decision = deadline::decide(
            deadline_ms,
            now_ms,
            ctl.config.hop_reserve_ms,
            cap,
            view.timeout_ms,
        );
        if let DeadlineDecision::Forward {
            timeout_ms: Some(t),
        } = decision
        {
            view.setter(view.timeout_present)(
                MapType::HttpRequestHeaders,
                TIMEOUT_HEADER,
                &t.to_string(),
            );
        }
        if let DeadlineDecision::Expired { .. } = decision {
            return Decision::Answer(Answer {
                kind: LocalReply::DeadlineExceeded,
                retry_may_help: false,
            });
        }
        {
            let priority = policy.as_ref().map(|p| p.priority).unwrap_or_default();
            match direction {
                Direction::Inbound => {
                    if let Some(limit) = ctl.limit.as_mut() {
                        match limit.try_acquire(priority) {
                            Admission::Admit => self.slot = Slot::Held,
                            Admission::Shed { .. }
                                if ctl.waiting.offer(self.context_id, priority, limit) =>
                            {
                                self.slot = Slot::Waiting;
                                return Decision::Wait;
                            }
                            Admission::Shed { retry_may_help } => {
                                return Decision::Answer(Answer {
                                    kind: LocalReply::Shed,
                                    retry_may_help,
                                })
                            }
                        }
                    }
                }
                Direction::Outbound => {
                    // One budget per upstream, as many as the upstream cap allows
                    // (the name comes from a request header): past it, no retries
                    // are granted or denied, Envoy's route settings apply.
                    let room = ctl.retry.len() < max_upstreams || ctl.retry.contains_key(&service);
                    let terms = crate::shared::retry_terms(&ctl.policy, &ctl.config, now_ms);
                    if let (Some(cfg), true) = (terms, room) {
                        let budget = ctl.retry.entry(service.clone()).or_insert_with(|| {
                            let mut b = RetryBudget::new(cfg.clone());
                            b.set_expected_growth(ctl.policy.load_growth(&service, now_ms));
                            b
                        });
                        let granted = budget.on_request(now_ms / 1000);
                        set_header(
                            MapType::HttpRequestHeaders,
                            "x-envoy-max-retries",
                            &granted.to_string(),
                        );
                        if granted > 0 {
                            set_header(
                                MapType::HttpRequestHeaders,
                                "x-envoy-retry-on",
                                &budget.config().retry_on,
                            );
                        }
                        self.retries_granted = granted;
                    }
                }
                Direction::Unspecified => {}
            }
        }
        Decision::Forward
    }

    /// Records the hop once; returns the duration recorded.
    fn finish(&mut self) -> Option<u64> {
        if self.done || self.start_ns == 0 {
            return None;
        }
        self.done = true;
        let shared = self.shared.clone()?;
        let now = now_ns();
        let duration = now.saturating_sub(self.start_ns);
        let (direction, service) = match self.hop.take() {
            Some(h) => h,
            None => {
                let state = shared.borrow();
                match state.config.direction {
                    // Installed per side: no property read at all.
                    Some(Direction::Inbound) => (Direction::Inbound, state.inbound_service.clone()),
                    Some(Direction::Outbound) if !self.upstream.is_empty() => {
                        (Direction::Outbound, std::mem::take(&mut self.upstream))
                    }
                    _ => hop_from_cluster(&state.inbound_service),
                }
            }
        };
        if let Some(kind) = self.local {
            let mut state = shared.borrow_mut();
            let outcome =
                state
                    .aggregator
                    .record_local(&self.chain, &service, direction, self.entry, kind);
            Self::after_record(&mut state, outcome, &self.chain, &service, direction, None);
            return None;
        }
        let error = self.is_error();
        let attempts = (self.retries_granted > 0)
            .then(|| header_str(MapType::HttpResponseHeaders, "x-envoy-attempt-count"))
            .flatten()
            .and_then(|v| v.parse::<u64>().ok());
        let mut state = shared.borrow_mut();
        // Streams admitted from the queue into the slot this one frees.
        let mut admitted_waiters = Vec::new();
        if let Some(ctl) = state.control.as_mut() {
            let admitted_at = match self.slot {
                Slot::None => None,
                Slot::Held => Some(self.start_ns),
                Slot::Waiting => match ctl.waiting.leave(self.context_id) {
                    Left::Admitted { at_ns } => Some(at_ns),
                    Left::Waiting | Left::Unknown => None,
                },
            };
            if let (Some(at_ns), Some(limit)) = (admitted_at, ctl.limit.as_mut()) {
                if self.status == 0 {
                    limit.release_without_sample();
                } else {
                    // The service's latency, without the time spent waiting.
                    limit.release(&self.chain, now.saturating_sub(at_ns));
                }
                while let Some(id) = ctl.waiting.admit_next(limit, now) {
                    admitted_waiters.push(id);
                }
            }
        }
        let outcome = state.aggregator.record(
            &self.chain,
            &service,
            direction,
            self.entry,
            duration,
            error,
        );
        if self.retries_granted > 0 {
            let used = RetryBudget::retries_used(self.retries_granted, attempts, error);
            if let Some(b) = state
                .control
                .as_mut()
                .and_then(|c| c.retry.get_mut(&service))
            {
                b.on_retries(used, now / 1_000_000_000);
            }
            if let RecordOutcome::Recorded { key, .. } = outcome {
                state.aggregator.add_retries(key, used);
            }
        }
        Self::after_record(
            &mut state,
            outcome,
            &self.chain,
            &service,
            direction,
            Some(duration),
        );
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
        drop(state);
        for id in admitted_waiters {
            resume_request_of(id, self.context_id);
        }
        Some(duration)
    }

    /// Defines the key's Envoy metrics the first time and samples the histogram.
    fn after_record(
        state: &mut Shared,
        outcome: RecordOutcome,
        chain: &str,
        service: &str,
        direction: Direction,
        duration: Option<u64>,
    ) {
        match outcome {
            RecordOutcome::Recorded { key, new } => {
                if new && state.hop_metrics.len() == key {
                    state
                        .hop_metrics
                        .push(HopMetrics::define(chain, service, direction));
                }
                if let (Some(m), Some(d)) = (state.hop_metrics.get(key), duration) {
                    m.observe(d);
                }
            }
            RecordOutcome::Overflow => FilterMetrics::bump(state.filter_metrics.overflow_requests),
        }
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
        let fetched = Self::fetch(&state);
        let view = fetched.view(&state.config);
        match view.chain {
            Some(raw) => self.chain = label(&String::from_utf8_lossy(raw)),
            None => {
                // The entry hop: rules from the agent's fresh policy first,
                // then the plugin's; the chain is forwarded downstream.
                let now_ms = self.start_ns / 1_000_000;
                let declared = state
                    .control
                    .as_ref()
                    .and_then(|c| c.policy.fresh(now_ms))
                    .map(|p| p.rules.as_slice());
                let (h, p, m) = (view.host, view.path, view.method);
                let chain = declared
                    .and_then(|r| rules::assign(r, h, p, m))
                    .or_else(|| rules::assign(&state.config.rules, h, p, m))
                    .unwrap_or(OTHER_CHAIN);
                self.chain = chain.to_owned();
                self.entry = true;
                // Absent, or this would not be the entry hop.
                view.setter(false)(
                    MapType::HttpRequestHeaders,
                    &state.config.chain_header,
                    chain,
                );
            }
        }
        if state.config.direction == Some(Direction::Outbound) {
            let up = service_from_authority(view.host);
            self.upstream = if up.is_empty() {
                String::new()
            } else {
                sanitize(up)
            };
        }
        self.request_id = view.request_id.map(str::to_owned);
        let controlled = state.control.is_some();
        drop(state);
        if !controlled {
            return Action::Continue;
        }
        // Decided under the state's borrow, answered after it is released.
        match self.control(&shared, &view) {
            Decision::Forward => Action::Continue,
            Decision::Wait => Action::Pause,
            Decision::Answer(answer) => {
                let service = self
                    .hop
                    .as_ref()
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                self.reply(answer, &service)
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.shared.is_none() {
            return Action::Continue;
        }
        self.status = header_str(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if self.status >= 500 {
            self.carry_no_retry();
        }
        if end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        if self.shared.is_some() && end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Streams reset before the response completed are recorded here.
        self.finish();
    }
}
