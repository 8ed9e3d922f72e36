//! Envoy stats of the filter. Each metric is defined once (per VM) and its
//! id cached; labels travel in the name the way Istio's own stats do
//! (`tag=.=value;.;`), so the `stats_tags` extractors `chain`, `service` and
//! `direction` turn them into Prometheus labels on `/stats/prometheus`.

use crate::host;
use meshtune_filter_core::Direction;
use proxy_wasm::types::MetricType;

/// Ids of the per-hop metrics of one aggregator key.
#[derive(Debug, Clone, Copy)]
pub struct HopMetrics {
    requests: Option<u32>,
    errors: Option<u32>,
    duration_ms: Option<u32>,
    shed: Option<u32>,
    deadline_exceeded: Option<u32>,
    retries: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    host::define_metric(kind, name)
}

impl HopMetrics {
    pub fn define(chain: &str, service: &str, direction: Direction) -> Self {
        let tags = format!(
            "chain=.={chain};.;service=.={service};.;direction=.={};.;",
            direction.as_str()
        );
        HopMetrics {
            requests: define(
                MetricType::Counter,
                &format!("{tags}meshtune_requests_total"),
            ),
            errors: define(MetricType::Counter, &format!("{tags}meshtune_errors_total")),
            duration_ms: define(
                MetricType::Histogram,
                &format!("{tags}meshtune_request_duration_milliseconds"),
            ),
            shed: define(MetricType::Counter, &format!("{tags}meshtune_shed_total")),
            deadline_exceeded: define(
                MetricType::Counter,
                &format!("{tags}meshtune_deadline_exceeded_total"),
            ),
            retries: define(
                MetricType::Counter,
                &format!("{tags}meshtune_retries_total"),
            ),
        }
    }

    /// Adds a batch of requests and errors to the counters (once per tick:
    /// a host call per request would cost more than the rest of the filter).
    pub fn add_counts(&self, c: &meshtune_filter_core::PendingCounts) {
        for (id, n) in [
            (self.requests, c.requests),
            (self.errors, c.errors),
            (self.shed, c.shed),
            (self.deadline_exceeded, c.deadline_exceeded),
            (self.retries, c.retries),
        ] {
            add(id, n);
        }
    }

    pub fn observe(&self, duration_ns: u64) {
        if let Some(id) = self.duration_ms {
            host::record_metric(id, duration_ns / 1_000_000);
        }
    }
}

/// Counters about the filter itself.
#[derive(Debug, Clone, Copy)]
pub struct FilterMetrics {
    pub reports_sent: Option<u32>,
    pub reports_dropped: Option<u32>,
    pub overflow_requests: Option<u32>,
    pub config_errors: Option<u32>,
    /// Linear memory of a VM that serves requests (the main thread's VM,
    /// which serves none, does not overwrite it).
    pub vm_memory_bytes: Option<u32>,
    pub policy_version: Option<u32>,
    pub policy_rejected: Option<u32>,
    /// Concurrency limit of a worker VM's inbound upstream.
    pub concurrency_limit: Option<u32>,
    /// Requests paused at the limit until it had room, instead of shed.
    pub waited_requests: Option<u32>,
}

impl FilterMetrics {
    pub fn define() -> Self {
        FilterMetrics {
            reports_sent: define(MetricType::Counter, "meshtune_reports_sent_total"),
            reports_dropped: define(MetricType::Counter, "meshtune_reports_dropped_total"),
            overflow_requests: define(MetricType::Counter, "meshtune_overflow_requests_total"),
            config_errors: define(MetricType::Counter, "meshtune_config_errors_total"),
            vm_memory_bytes: define(MetricType::Gauge, "meshtune_vm_memory_bytes"),
            policy_version: define(MetricType::Gauge, "meshtune_policy_version"),
            policy_rejected: define(MetricType::Counter, "meshtune_policy_rejected_total"),
            concurrency_limit: define(MetricType::Gauge, "meshtune_concurrency_limit"),
            waited_requests: define(MetricType::Counter, "meshtune_waited_requests_total"),
        }
    }

    pub fn bump(id: Option<u32>) {
        add(id, 1);
    }
}

/// Size of this VM's linear memory in bytes.
pub fn vm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// Adds `n` to counter `id` (no host call for nothing).
pub fn add(id: Option<u32>, n: u64) {
    if let (Some(id), true) = (id, n > 0) {
        host::increment_metric(id, n as i64);
    }
}

pub fn set_gauge(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        host::record_metric(id, value);
    }
}
