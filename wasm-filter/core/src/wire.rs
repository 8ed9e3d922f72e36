//! The report a filter VM posts to its node agent (`POST /v1/reports`).
//! Both sides use these types, so a change here is a change of the schema:
//! bump [`SCHEMA_VERSION`] when a field changes meaning.

use crate::sketch::Sketch;
use serde::{Deserialize, Serialize};

/// Version of the report schema; the agent rejects any other.
pub const SCHEMA_VERSION: u32 = 2;

/// Which side of the sidecar measured a hop. Inbound hops are measured in
/// front of the service itself (server side); outbound ones in front of the
/// call the service makes (client side), as Istio's `reporter` label does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
    Unspecified,
}

impl Direction {
    /// Envoy's `listener_direction` property (`TrafficDirection` enum).
    pub fn from_envoy(v: i64) -> Self {
        match v {
            1 => Direction::Inbound,
            2 => Direction::Outbound,
            _ => Direction::Unspecified,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Unspecified => "unspecified",
        }
    }
}

/// Who sent a report. `vm_id` is unique per VM (Envoy runs one per worker
/// thread) and per start, so `(vm_id, seq)` identifies a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub vm_id: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub namespace: String,
}

/// What one (chain, service, direction) saw during the interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopRecord {
    pub chain: String,
    pub service: String,
    pub direction: Direction,
    /// True where this hop assigned the chain: its latency is the chain's
    /// end-to-end latency as seen at the mesh entry.
    pub entry: bool,
    pub requests: u64,
    pub errors: u64,
    pub latency: Sketch,
    /// Requests answered 503 by the concurrency limit (not in `requests`).
    #[serde(default)]
    pub shed: u64,
    /// Requests answered 504 because the chain's budget was spent (not in `requests`).
    #[serde(default)]
    pub deadline_exceeded: u64,
    /// Retries Envoy made for this hop's requests.
    #[serde(default)]
    pub retries: u64,
}

/// Filter-side counters, cumulative since the VM started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterCounters {
    /// Requests not recorded because the chain or upstream cap was reached.
    #[serde(default)]
    pub overflow_requests: u64,
    /// Reports that could not be delivered and were dropped.
    #[serde(default)]
    pub dropped_reports: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    pub source: Source,
    /// Starts at 1 for each VM and grows by one per report.
    pub seq: u64,
    /// Length of the interval the records cover.
    pub interval_ms: u64,
    pub records: Vec<HopRecord>,
    #[serde(default)]
    pub counters: FilterCounters,
    /// Version of the agent policy in force when the report was built (0: none).
    #[serde(default)]
    pub policy_version: u64,
}

impl Report {
    /// Checks the promises serde cannot: counts agree with the sketches.
    pub fn validate(&self) -> Result<(), String> {
        if self.source.vm_id.is_empty() {
            return Err("source.vm_id is empty".into());
        }
        for (i, r) in self.records.iter().enumerate() {
            if r.chain.is_empty() || r.service.is_empty() {
                return Err(format!("records[{i}]: chain and service must be non-empty"));
            }
            r.latency
                .validate()
                .map_err(|e| format!("records[{i}].latency: {e}"))?;
            if r.latency.count() != r.requests {
                return Err(format!(
                    "records[{i}]: requests ({}) differs from the latency count ({})",
                    r.requests,
                    r.latency.count()
                ));
            }
            if r.errors > r.requests {
                return Err(format!("records[{i}]: errors exceed requests"));
            }
        }
        Ok(())
    }
}
