//! Mergeable per-chain aggregates and the views served on the API.

use meshtune_filter_core::{Direction, HopRecord, Sketch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Requests, errors and latency of one thing over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub latency: Sketch,
    /// Requests the filters shed (503) or stopped at a spent deadline (504).
    #[serde(default)]
    pub shed: u64,
    #[serde(default)]
    pub deadline_exceeded: u64,
    #[serde(default)]
    pub retries: u64,
}

impl Agg {
    pub fn add_record(&mut self, r: &HopRecord) {
        self.requests += r.requests;
        self.errors += r.errors;
        self.latency.merge(&r.latency);
        self.shed += r.shed;
        self.deadline_exceeded += r.deadline_exceeded;
        self.retries += r.retries;
    }

    /// SLO attainment of this aggregate as a chain's entry hop counted it,
    /// for `objective_ms` (the one rule: [`crate::data::attainment`]).
    pub fn attainment(&self, objective_ms: f64) -> Option<f64> {
        crate::data::attainment::of_entry(crate::data::attainment::EntryCounts {
            answered: self.requests,
            failed: self.errors,
            answered_locally: self.shed + self.deadline_exceeded,
            within_objective: self.latency.count_le((objective_ms * 1e6) as u64),
        })
    }

    pub fn merge(&mut self, other: &Agg) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.shed += other.shed;
        self.deadline_exceeded += other.deadline_exceeded;
        self.retries += other.retries;
    }
}

/// One service as seen on a chain: server side (inbound sidecar) and
/// client side (the caller's outbound sidecar).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopAgg {
    #[serde(default)]
    pub inbound: Agg,
    #[serde(default)]
    pub outbound: Agg,
}

impl HopAgg {
    /// The server-side view when the service has a sidecar, else the caller's.
    pub fn preferred(&self) -> (&Agg, Direction) {
        if self.inbound.requests > 0 || self.outbound.requests == 0 {
            (&self.inbound, Direction::Inbound)
        } else {
            (&self.outbound, Direction::Outbound)
        }
    }
}

/// A chain: end to end (as measured at its entry hop) and per service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainAgg {
    pub end_to_end: Agg,
    #[serde(default)]
    pub hops: BTreeMap<String, HopAgg>,
}

impl ChainAgg {
    pub fn add_record(&mut self, r: &HopRecord) {
        if r.entry {
            self.end_to_end.add_record(r);
        }
        let hop = self.hops.entry(r.service.clone()).or_default();
        match r.direction {
            Direction::Outbound => hop.outbound.add_record(r),
            Direction::Inbound | Direction::Unspecified => hop.inbound.add_record(r),
        }
    }

    pub fn merge(&mut self, other: &ChainAgg) {
        self.end_to_end.merge(&other.end_to_end);
        for (svc, h) in &other.hops {
            let mine = self.hops.entry(svc.clone()).or_default();
            mine.inbound.merge(&h.inbound);
            mine.outbound.merge(&h.outbound);
        }
    }
}

/// Statistics of one aggregate over the window, as served by `/v1/chains`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests since the agent's history began (lifetime).
    pub requests: u64,
    /// Requests within the window.
    pub window_requests: u64,
    pub slo_ms: Option<f64>,
    /// Share of the window's offered requests answered successfully within
    /// `slo_ms` (failures, sheds and deadline replies count against it).
    pub slo_attainment: Option<f64>,
    /// Requests shed by a concurrency limit, and stopped at a spent
    /// deadline, within the window.
    pub shed: u64,
    pub deadline_exceeded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopView {
    pub service: String,
    /// Which sidecar measured it: `inbound` (server side) or `outbound`.
    pub direction: Direction,
    #[serde(flatten)]
    pub stats: StatsView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainView {
    pub chain: String,
    #[serde(flatten)]
    pub stats: StatsView,
    /// Percentile the objective applies to.
    pub slo_percentile: Option<f64>,
    pub hops: Vec<HopView>,
}

fn ms(ns: Option<f64>) -> Option<f64> {
    ns.map(|v| (v / 1e6 * 1000.0).round() / 1000.0)
}

pub fn stats_view(
    window: &Agg,
    lifetime_requests: u64,
    window_secs: f64,
    slo_ms: Option<f64>,
) -> StatsView {
    let n = window.requests;
    let attainment = slo_ms.and_then(|slo| window.attainment(slo));
    StatsView {
        rps: if window_secs > 0.0 {
            n as f64 / window_secs
        } else {
            0.0
        },
        error_rate: if n > 0 {
            window.errors as f64 / n as f64
        } else {
            0.0
        },
        p50_ms: ms(window.latency.quantile(0.50)),
        p95_ms: ms(window.latency.quantile(0.95)),
        p99_ms: ms(window.latency.quantile(0.99)),
        requests: lifetime_requests,
        window_requests: n,
        slo_ms,
        slo_attainment: attainment,
        shed: window.shed,
        deadline_exceeded: window.deadline_exceeded,
    }
}
