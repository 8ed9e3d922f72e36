//! Builders of records and reports for tests (feature `builders`), so the
//! agent's, the lab's and this crate's tests share one way to make them.

use crate::wire::{FilterCounters, Source};
use crate::{Direction, HopRecord, Report, Sketch, SCHEMA_VERSION};

/// A server-side (inbound) record of `chain` at `service` with one request
/// per latency in `latencies_ms`, no errors, not the entry hop.
pub fn record(chain: &str, service: &str, latencies_ms: &[u64]) -> HopRecord {
    let mut latency = Sketch::new();
    for ms in latencies_ms {
        latency.record(ms * 1_000_000);
    }
    HopRecord {
        chain: chain.into(),
        service: service.into(),
        direction: Direction::Inbound,
        entry: false,
        requests: latencies_ms.len() as u64,
        errors: 0,
        latency,
        shed: 0,
        deadline_exceeded: 0,
        retries: 0,
    }
}

/// `n` requests of `ms` each (see [`record`]).
pub fn uniform(chain: &str, service: &str, ms: u64, n: usize) -> HopRecord {
    record(chain, service, &vec![ms; n])
}

impl HopRecord {
    /// The chain's entry hop (its latency is the chain's end to end).
    pub fn at_entry(mut self) -> Self {
        self.entry = true;
        self
    }

    /// Measured by the caller's outbound sidecar.
    pub fn outbound(mut self) -> Self {
        self.direction = Direction::Outbound;
        self
    }

    /// `n` of its requests failed.
    pub fn with_errors(mut self, n: u64) -> Self {
        self.errors = n;
        self
    }

    /// `shed` requests shed and `deadline` stopped at a spent deadline.
    pub fn with_local_replies(mut self, shed: u64, deadline: u64) -> Self {
        self.shed = shed;
        self.deadline_exceeded = deadline;
        self
    }
}

/// Report `seq` of filter VM `vm` carrying `records`.
pub fn report(vm: &str, seq: u64, records: Vec<HopRecord>) -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        source: Source {
            vm_id: vm.into(),
            node: String::new(),
            pod: String::new(),
            namespace: String::new(),
        },
        seq,
        interval_ms: 1000,
        records,
        counters: FilterCounters::default(),
        policy_version: 0,
    }
}
