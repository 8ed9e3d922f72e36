//! Per-VM accumulation of hop records between two reports, with caps on
//! the number of chains and upstream services.

use crate::sketch::Sketch;
use crate::wire::{Direction, FilterCounters, HopRecord, Report, Source, SCHEMA_VERSION};
// FxHash: these maps are looked up on every request with short keys; SipHash
// costs several hundred wasm operations per lookup, FxHash a few dozen.
use rustc_hash::FxHashMap as HashMap;

/// Counts of one key waiting to be published as Envoy counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCounts {
    pub requests: u64,
    pub errors: u64,
    pub shed: u64,
    pub deadline_exceeded: u64,
    pub retries: u64,
}

/// Stable index of a (chain, service, direction, entry) key within one VM,
/// so the host side can keep per-key handles (Envoy metric ids) in a `Vec`.
pub type KeyId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Recorded under `key`; `new` is true the first time the key is seen.
    Recorded { key: KeyId, new: bool },
    /// The chain or service cap was reached: counted as overflow only.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    chain: u16,
    service: u16,
    direction: Direction,
    entry: bool,
}

#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    errors: u64,
    latency: Sketch,
    shed: u64,
    deadline_exceeded: u64,
    retries: u64,
}

impl Stats {
    fn is_empty(&self) -> bool {
        self.requests == 0 && self.shed == 0 && self.deadline_exceeded == 0 && self.retries == 0
    }
}

/// A request the filter answered itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    Shed,
    DeadlineExceeded,
}

#[derive(Debug)]
pub struct Aggregator {
    max_chains: usize,
    max_services: usize,
    chains: Vec<String>,
    chain_ids: HashMap<String, u16>,
    services: Vec<String>,
    service_ids: HashMap<String, u16>,
    keys: Vec<Key>,
    key_ids: HashMap<Key, KeyId>,
    stats: Vec<Stats>,
    counters: FilterCounters,
    next_seq: u64,
}

fn intern(
    names: &mut Vec<String>,
    ids: &mut HashMap<String, u16>,
    cap: usize,
    name: &str,
) -> Option<u16> {
    if let Some(id) = ids.get(name) {
        return Some(*id);
    }
    if names.len() >= cap {
        return None;
    }
    let id = u16::try_from(names.len()).ok()?;
    names.push(name.to_owned());
    ids.insert(name.to_owned(), id);
    Some(id)
}

impl Aggregator {
    pub fn new(max_chains: usize, max_services: usize) -> Self {
        Aggregator {
            max_chains,
            max_services,
            chains: Vec::new(),
            chain_ids: HashMap::default(),
            services: Vec::new(),
            service_ids: HashMap::default(),
            keys: Vec::new(),
            key_ids: HashMap::default(),
            stats: Vec::new(),
            counters: FilterCounters::default(),
            next_seq: 1,
        }
    }

    /// Records one finished request. `chain` and `service` must already be
    /// label-safe (see [`crate::naming`]).
    pub fn record(
        &mut self,
        chain: &str,
        service: &str,
        direction: Direction,
        entry: bool,
        duration_ns: u64,
        error: bool,
    ) -> RecordOutcome {
        let outcome = self.key(chain, service, direction, entry);
        if let RecordOutcome::Recorded { key, .. } = outcome {
            if let Some(s) = self.stats.get_mut(key) {
                s.requests += 1;
                s.errors += u64::from(error);
                s.latency.record(duration_ns);
            }
        }
        outcome
    }

    /// Counts a request the filter answered itself (no latency recorded).
    pub fn record_local(
        &mut self,
        chain: &str,
        service: &str,
        direction: Direction,
        entry: bool,
        kind: LocalReply,
    ) -> RecordOutcome {
        let outcome = self.key(chain, service, direction, entry);
        if let RecordOutcome::Recorded { key, .. } = outcome {
            if let Some(s) = self.stats.get_mut(key) {
                match kind {
                    LocalReply::Shed => s.shed += 1,
                    LocalReply::DeadlineExceeded => s.deadline_exceeded += 1,
                }
            }
        }
        outcome
    }

    /// Adds retries Envoy made for a request recorded under `key`.
    pub fn add_retries(&mut self, key: KeyId, retries: u64) {
        if let Some(s) = self.stats.get_mut(key) {
            s.retries += retries;
        }
    }

    /// The key of (chain, service, direction, entry), created on first use
    /// while the caps allow.
    fn key(
        &mut self,
        chain: &str,
        service: &str,
        direction: Direction,
        entry: bool,
    ) -> RecordOutcome {
        let ids = intern(
            &mut self.chains,
            &mut self.chain_ids,
            self.max_chains,
            chain,
        )
        .and_then(|c| {
            intern(
                &mut self.services,
                &mut self.service_ids,
                self.max_services,
                service,
            )
            .map(|s| (c, s))
        });
        let Some((chain, service)) = ids else {
            self.counters.overflow_requests += 1;
            return RecordOutcome::Overflow;
        };
        let key = Key {
            chain,
            service,
            direction,
            entry,
        };
        let (id, new) = match self.key_ids.get(&key) {
            Some(id) => (*id, false),
            None => {
                let id = self.keys.len();
                self.keys.push(key);
                self.stats.push(Stats::default());
                self.key_ids.insert(key, id);
                (id, true)
            }
        };
        RecordOutcome::Recorded { key: id, new }
    }

    /// Names of a key: (chain, service, direction, entry).
    pub fn key_names(&self, id: KeyId) -> Option<(&str, &str, Direction, bool)> {
        let k = self.keys.get(id)?;
        Some((
            self.chains.get(usize::from(k.chain))?.as_str(),
            self.services.get(usize::from(k.service))?.as_str(),
            k.direction,
            k.entry,
        ))
    }

    pub fn note_dropped_report(&mut self) {
        self.counters.dropped_reports += 1;
    }

    pub fn counters(&self) -> &FilterCounters {
        &self.counters
    }

    /// Requests and errors per key since the last report, for counters
    /// published in batches rather than per request.
    pub fn pending_counts(&self) -> impl Iterator<Item = (KeyId, PendingCounts)> + '_ {
        self.stats
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| {
                let counts = PendingCounts {
                    requests: s.requests,
                    errors: s.errors,
                    shed: s.shed,
                    deadline_exceeded: s.deadline_exceeded,
                    retries: s.retries,
                };
                (i, counts)
            })
    }

    /// True once any request was recorded by this VM.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn has_data(&self) -> bool {
        self.stats.iter().any(|s| !s.is_empty())
    }

    /// Takes everything recorded since the last call as a report, or `None`
    /// when nothing was recorded (empty reports are not sent).
    pub fn take_report(
        &mut self,
        source: &Source,
        interval_ms: u64,
        policy_version: u64,
    ) -> Option<Report> {
        if !self.has_data() {
            return None;
        }
        let mut records = Vec::new();
        for (i, s) in self.stats.iter_mut().enumerate() {
            if s.is_empty() {
                continue;
            }
            let Some(k) = self.keys.get(i) else { continue };
            let (Some(chain), Some(service)) = (
                self.chains.get(usize::from(k.chain)),
                self.services.get(usize::from(k.service)),
            ) else {
                continue;
            };
            records.push(HopRecord {
                chain: chain.clone(),
                service: service.clone(),
                direction: k.direction,
                entry: k.entry,
                requests: s.requests,
                errors: s.errors,
                latency: std::mem::take(&mut s.latency),
                shed: s.shed,
                deadline_exceeded: s.deadline_exceeded,
                retries: s.retries,
            });
            *s = Stats::default();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(Report {
            schema_version: SCHEMA_VERSION,
            source: source.clone(),
            seq,
            interval_ms,
            records,
            counters: self.counters.clone(),
            policy_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            vm_id: "vm-1".into(),
            node: "n".into(),
            pod: "p".into(),
            namespace: "default".into(),
        }
    }

    #[test]
    fn records_per_key_and_reports_then_resets() {
        let mut a = Aggregator::new(4, 4);
        let r1 = a.record(
            "product",
            "reviews",
            Direction::Outbound,
            false,
            1_000_000,
            false,
        );
        let r2 = a.record(
            "product",
            "reviews",
            Direction::Outbound,
            false,
            3_000_000,
            true,
        );
        let r3 = a.record(
            "product",
            "productpage",
            Direction::Inbound,
            true,
            9_000_000,
            false,
        );
        assert_eq!(r1, RecordOutcome::Recorded { key: 0, new: true });
        assert_eq!(r2, RecordOutcome::Recorded { key: 0, new: false });
        assert_eq!(r3, RecordOutcome::Recorded { key: 1, new: true });
        assert_eq!(
            a.key_names(1),
            Some(("product", "productpage", Direction::Inbound, true))
        );

        let rep = a.take_report(&source(), 5000, 0);
        let Some(rep) = rep else {
            unreachable!("a report was expected")
        };
        assert_eq!(rep.seq, 1);
        assert_eq!(rep.schema_version, SCHEMA_VERSION);
        assert_eq!(rep.records.len(), 2);
        assert_eq!((rep.records[0].requests, rep.records[0].errors), (2, 1));
        assert_eq!(rep.records[0].latency.count(), 2);
        assert!(rep.validate().is_ok());

        // Nothing new: no report, and the sequence does not advance.
        assert!(a.take_report(&source(), 5000, 0).is_none());
        a.record("product", "reviews", Direction::Outbound, false, 5, false);
        let Some(rep) = a.take_report(&source(), 5000, 0) else {
            unreachable!()
        };
        assert_eq!(rep.seq, 2);
        assert_eq!(rep.records.len(), 1);
        assert_eq!(rep.records[0].latency.count(), 1);
    }

    #[test]
    fn caps_count_overflow_and_keep_existing_keys() {
        let mut a = Aggregator::new(2, 1);
        assert!(matches!(
            a.record("a", "s", Direction::Inbound, true, 1, false),
            RecordOutcome::Recorded { .. }
        ));
        assert!(matches!(
            a.record("b", "s", Direction::Inbound, true, 1, false),
            RecordOutcome::Recorded { .. }
        ));
        assert_eq!(
            a.record("c", "s", Direction::Inbound, true, 1, false),
            RecordOutcome::Overflow
        );
        assert_eq!(
            a.record("a", "t", Direction::Inbound, true, 1, false),
            RecordOutcome::Overflow
        );
        assert!(matches!(
            a.record("a", "s", Direction::Inbound, true, 1, false),
            RecordOutcome::Recorded { .. }
        ));
        assert_eq!(a.counters().overflow_requests, 2);
        let Some(rep) = a.take_report(&source(), 1, 0) else {
            unreachable!()
        };
        assert_eq!(rep.counters.overflow_requests, 2);
        assert_eq!(rep.records.iter().map(|r| r.requests).sum::<u64>(), 3);
    }

    #[test]
    fn local_replies_and_retries_are_counted_without_latency() {
        use super::LocalReply;
        let mut a = Aggregator::new(4, 4);
        a.record_local("c", "s", Direction::Inbound, true, LocalReply::Shed);
        a.record_local(
            "c",
            "s",
            Direction::Inbound,
            true,
            LocalReply::DeadlineExceeded,
        );
        let RecordOutcome::Recorded { key, .. } =
            a.record("c", "s", Direction::Inbound, true, 10, false)
        else {
            unreachable!()
        };
        a.add_retries(key, 2);
        let Some(rep) = a.take_report(&source(), 1, 7) else {
            unreachable!()
        };
        let r = &rep.records[0];
        assert_eq!(
            (r.requests, r.shed, r.deadline_exceeded, r.retries),
            (1, 1, 1, 2)
        );
        assert_eq!(r.latency.count(), 1);
        assert_eq!(rep.policy_version, 7);
        assert!(rep.validate().is_ok());
        // A key with only local replies still makes a report.
        a.record_local("c", "s", Direction::Inbound, true, LocalReply::Shed);
        assert!(a.take_report(&source(), 1, 7).is_some());
    }

    #[test]
    fn report_validation_catches_inconsistent_counts() {
        let mut a = Aggregator::new(2, 2);
        a.record("a", "s", Direction::Inbound, true, 10, false);
        let Some(mut rep) = a.take_report(&source(), 1, 0) else {
            unreachable!()
        };
        rep.records[0].requests = 5;
        assert!(rep.validate().is_err());
    }
}
