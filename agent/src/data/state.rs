//! What the agent knows about chains: a live window in 5-second slots,
//! 1-minute history, lifetime totals, and the sequence numbers already
//! counted per filter VM. Time is always passed in (seconds since the Unix
//! epoch), never read here.

use crate::config::ChainSpec;
use crate::data::aggregate::{stats_view, Agg, ChainAgg, ChainView, HopView};
use meshtune_filter_core::Report;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub const SLOT_SECS: u64 = 5;
/// Minutes of history kept in memory (older minutes live in the store).
pub const MEMORY_MINUTES: u64 = 120;
/// Distinct chains the agent tracks; records of further chains are dropped.
pub const MAX_CHAINS: usize = 1024;
/// Seconds a replica that stopped answering still counts as one of its
/// service's replicas: longer than Envoy's longest outlier ejection
/// (`maxEjectionTime`, 300 s by default), so an ejected replica is not
/// mistaken for a removed one.
pub const REPLICA_MEMORY_SECS: u64 = 600;
/// Sequence numbers remembered below the highest one seen per VM.
const SEQ_WINDOW: u64 = 64;

/// Sequence numbers of one VM already counted: the highest, and a bitmask
/// of the 64 below it, so reordered reports still count once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    pub max: u64,
    pub mask: u64,
    /// Minute of the last report, to forget VMs that went away.
    pub last_minute: u64,
}

impl SeqWindow {
    /// Marks `seq` seen; false when it was seen before (or is too old to tell).
    pub fn admit(&mut self, seq: u64) -> bool {
        if seq > self.max {
            let shift = seq - self.max;
            // The old max moves to bit (shift-1); when max was 0 nothing was seen.
            self.mask = if self.max == 0 || shift > SEQ_WINDOW {
                0
            } else {
                self.mask.checked_shl(shift as u32).unwrap_or(0) | (1 << (shift - 1))
            };
            self.max = seq;
            return true;
        }
        let back = self.max - seq;
        if back == 0 || back > SEQ_WINDOW {
            return false;
        }
        let bit = 1u64 << (back - 1);
        if self.mask & bit != 0 {
            return false;
        }
        self.mask |= bit;
        true
    }
}

/// One slot's replicas: (service, replica) → counts.
type ReplicaSlot = BTreeMap<(String, String), ReplicaCounts>;

/// One replica's server-side counts and latency (its own sidecar's
/// inbound view), so a slow replica shows beside fast ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub requests: u64,
    pub errors: u64,
    pub latency: meshtune_filter_core::sketch::Sketch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Counted {
        records: usize,
        dropped_records: usize,
    },
    Duplicate,
}

/// Everything that changed since the last persistence, to write at once.
#[derive(Debug, Default)]
pub struct Dirty {
    pub minutes: Vec<((String, u64), ChainAgg)>,
    pub lifetime: Vec<(String, ChainAgg)>,
    pub vms: Vec<(String, SeqWindow)>,
    pub forgotten_vms: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ChainState {
    slots: VecDeque<(u64, BTreeMap<String, ChainAgg>)>,
    /// Per slot: (service, replica) → its inbound requests and errors, so
    /// a failing replica shows beside healthy ones (the chains' aggregates
    /// merge them).
    replica_slots: VecDeque<(u64, ReplicaSlot)>,
    /// (service, replica) → when it last answered a request.
    replica_last_seen: BTreeMap<(String, String), u64>,
    minutes: BTreeMap<(String, u64), ChainAgg>,
    lifetime: BTreeMap<String, ChainAgg>,
    vms: HashMap<String, SeqWindow>,
    dirty_minutes: BTreeSet<(String, u64)>,
    dirty_lifetime: BTreeSet<String>,
    dirty_vms: BTreeSet<String>,
    forgotten_vms: Vec<String>,
    started_secs: u64,
}

impl ChainState {
    pub fn new(now_secs: u64) -> Self {
        ChainState {
            started_secs: now_secs,
            ..Default::default()
        }
    }

    /// Restores what the store held.
    pub fn restore(
        &mut self,
        minutes: impl IntoIterator<Item = ((String, u64), ChainAgg)>,
        lifetime: impl IntoIterator<Item = (String, ChainAgg)>,
        vms: impl IntoIterator<Item = (String, SeqWindow)>,
    ) {
        self.minutes.extend(minutes);
        self.lifetime.extend(lifetime);
        self.vms.extend(vms);
    }

    /// Counts a report once. The caller has validated it.
    pub fn ingest(&mut self, report: &Report, now_secs: u64) -> Ingested {
        let minute = now_secs / 60;
        let window = self.vms.entry(report.source.vm_id.clone()).or_default();
        if !window.admit(report.seq) {
            return Ingested::Duplicate;
        }
        window.last_minute = minute;
        self.dirty_vms.insert(report.source.vm_id.clone());

        let slot_start = now_secs - now_secs % SLOT_SECS;
        if self.slots.back().is_none_or(|(s, _)| *s != slot_start) {
            self.slots.push_back((slot_start, BTreeMap::new()));
        }
        if self
            .replica_slots
            .back()
            .is_none_or(|(s, _)| *s != slot_start)
        {
            self.replica_slots.push_back((slot_start, BTreeMap::new()));
        }
        // The pod names the replica; a sidecar without pod metadata, its VM.
        let replica = if report.source.pod.is_empty() {
            &report.source.vm_id
        } else {
            &report.source.pod
        };
        let mut counted = 0;
        let mut dropped = 0;
        for r in &report.records {
            if r.direction != meshtune_filter_core::Direction::Outbound {
                if let Some((_, slot)) = self.replica_slots.back_mut() {
                    let c = slot
                        .entry((r.service.clone(), replica.clone()))
                        .or_default();
                    c.requests += r.requests;
                    c.errors += r.errors;
                    c.latency.merge(&r.latency);
                }
                self.replica_last_seen
                    .insert((r.service.clone(), replica.clone()), now_secs);
            }
            if !self.lifetime.contains_key(&r.chain) && self.lifetime.len() >= MAX_CHAINS {
                dropped += 1;
                continue;
            }
            if let Some((_, slot)) = self.slots.back_mut() {
                slot.entry(r.chain.clone()).or_default().add_record(r);
            }
            let key = (r.chain.clone(), minute);
            self.minutes.entry(key.clone()).or_default().add_record(r);
            self.dirty_minutes.insert(key);
            self.lifetime
                .entry(r.chain.clone())
                .or_default()
                .add_record(r);
            self.dirty_lifetime.insert(r.chain.clone());
            counted += 1;
        }
        Ingested::Counted {
            records: counted,
            dropped_records: dropped,
        }
    }

    /// Drops slots outside the window, minutes older than the in-memory
    /// horizon that are already persisted, and VMs silent for a day.
    pub fn expire(&mut self, now_secs: u64, window_secs: u64) {
        while self
            .slots
            .front()
            .is_some_and(|(s, _)| s + SLOT_SECS + window_secs <= now_secs)
        {
            self.slots.pop_front();
        }
        while self
            .replica_slots
            .front()
            .is_some_and(|(s, _)| s + SLOT_SECS + window_secs <= now_secs)
        {
            self.replica_slots.pop_front();
        }
        self.replica_last_seen
            .retain(|_, seen| *seen + REPLICA_MEMORY_SECS > now_secs);
        let horizon = (now_secs / 60).saturating_sub(MEMORY_MINUTES);
        let dirty = &self.dirty_minutes;
        self.minutes
            .retain(|k, _| k.1 >= horizon || dirty.contains(k));
        let day_ago = (now_secs / 60).saturating_sub(24 * 60);
        let gone: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, w)| w.last_minute < day_ago)
            .map(|(k, _)| k.clone())
            .collect();
        for vm in gone {
            self.vms.remove(&vm);
            self.dirty_vms.remove(&vm);
            self.forgotten_vms.push(vm);
        }
    }

    /// Takes the changes to persist. On a failed write, hand them back
    /// with [`ChainState::mark_dirty_again`].
    pub fn take_dirty(&mut self) -> Dirty {
        let minutes = std::mem::take(&mut self.dirty_minutes)
            .into_iter()
            .filter_map(|k| self.minutes.get(&k).map(|v| (k, v.clone())))
            .collect();
        let lifetime = std::mem::take(&mut self.dirty_lifetime)
            .into_iter()
            .filter_map(|k| self.lifetime.get(&k).map(|v| (k, v.clone())))
            .collect();
        let vms = std::mem::take(&mut self.dirty_vms)
            .into_iter()
            .filter_map(|k| self.vms.get(&k).map(|v| (k, *v)))
            .collect();
        Dirty {
            minutes,
            lifetime,
            vms,
            forgotten_vms: std::mem::take(&mut self.forgotten_vms),
        }
    }

    pub fn mark_dirty_again(&mut self, d: Dirty) {
        self.dirty_minutes
            .extend(d.minutes.into_iter().map(|(k, _)| k));
        self.dirty_lifetime
            .extend(d.lifetime.into_iter().map(|(k, _)| k));
        self.dirty_vms.extend(d.vms.into_iter().map(|(k, _)| k));
        self.forgotten_vms.extend(d.forgotten_vms);
    }

    /// The chain aggregates over the last `window_secs`, and the wall
    /// seconds they cover (what rates are divided by).
    pub fn window(&self, now_secs: u64, window_secs: u64) -> (BTreeMap<String, ChainAgg>, f64) {
        let mut out: BTreeMap<String, ChainAgg> = BTreeMap::new();
        for (start, slot) in &self.slots {
            if start + SLOT_SECS + window_secs > now_secs {
                for (chain, agg) in slot {
                    out.entry(chain.clone()).or_default().merge(agg);
                }
            }
        }
        let covered = window_secs
            .min(now_secs.saturating_sub(self.started_secs))
            .max(1);
        // Rates are per wall second (see `crate::clock`).
        (out, crate::clock::wall_seconds(covered as f64))
    }

    /// Each service's replicas over the window (service → replica →
    /// counts), as their own sidecars counted them.
    pub fn replicas(
        &self,
        now_secs: u64,
        window_secs: u64,
    ) -> BTreeMap<String, BTreeMap<String, ReplicaCounts>> {
        let mut out: BTreeMap<String, BTreeMap<String, ReplicaCounts>> = BTreeMap::new();
        for (start, slot) in &self.replica_slots {
            if start + SLOT_SECS + window_secs > now_secs {
                for ((svc, replica), c) in slot {
                    let e = out
                        .entry(svc.clone())
                        .or_default()
                        .entry(replica.clone())
                        .or_default();
                    e.requests += c.requests;
                    e.errors += c.errors;
                    e.latency.merge(&c.latency);
                }
            }
        }
        out
    }

    /// How many replicas of each service answered within
    /// [`REPLICA_MEMORY_SECS`], including ones silent in the window.
    pub fn replicas_known(&self, now_secs: u64) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for ((svc, _), seen) in &self.replica_last_seen {
            if *seen + REPLICA_MEMORY_SECS > now_secs {
                *out.entry(svc.clone()).or_default() += 1;
            }
        }
        out
    }

    pub fn lifetime(&self) -> &BTreeMap<String, ChainAgg> {
        &self.lifetime
    }

    /// In-memory minutes of `chain` in `[from, to)` (minute indexes).
    pub fn minutes(&self, chain: &str, from: u64, to: u64) -> Vec<(u64, ChainAgg)> {
        self.minutes
            .range((chain.to_owned(), from)..(chain.to_owned(), to))
            .map(|((_, m), a)| (*m, a.clone()))
            .collect()
    }

    /// The `/v1/chains` view: configured chains first-class, plus any chain
    /// that reported data.
    pub fn views(
        &self,
        specs: &BTreeMap<String, ChainSpec>,
        now_secs: u64,
        window_secs: u64,
    ) -> Vec<ChainView> {
        let (window, covered) = self.window(now_secs, window_secs);
        let names: BTreeSet<&String> = specs.keys().chain(self.lifetime.keys()).collect();
        let empty = ChainAgg::default();
        names
            .into_iter()
            .map(|name| {
                let spec = specs.get(name);
                let slo = spec.map(|s| s.slo_ms);
                let win = window.get(name).unwrap_or(&empty);
                let life = self.lifetime.get(name).unwrap_or(&empty);
                let services: BTreeSet<&String> = life.hops.keys().chain(win.hops.keys()).collect();
                let hops = services
                    .into_iter()
                    .map(|svc| {
                        let life_hop = life.hops.get(svc).cloned().unwrap_or_default();
                        let (_, direction) = life_hop.preferred();
                        let win_hop = win.hops.get(svc).cloned().unwrap_or_default();
                        let pick = |h: &crate::data::aggregate::HopAgg| -> Agg {
                            match direction {
                                meshtune_filter_core::Direction::Outbound => h.outbound.clone(),
                                _ => h.inbound.clone(),
                            }
                        };
                        HopView {
                            service: svc.clone(),
                            direction,
                            stats: stats_view(
                                &pick(&win_hop),
                                pick(&life_hop).requests,
                                covered,
                                None,
                            ),
                        }
                    })
                    .collect();
                ChainView {
                    chain: name.clone(),
                    stats: stats_view(&win.end_to_end, life.end_to_end.requests, covered, slo),
                    slo_percentile: spec.map(|s| s.percentile),
                    hops,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_filter_core::builders::{self, report};
    use meshtune_filter_core::{Direction, HopRecord};

    /// One request per latency in `values_ms`.
    fn record(
        chain: &str,
        service: &str,
        direction: Direction,
        entry: bool,
        values_ms: &[u64],
    ) -> HopRecord {
        let mut r = builders::record(chain, service, values_ms);
        r.direction = direction;
        r.entry = entry;
        r
    }

    #[test]
    fn seq_window_counts_each_sequence_once_even_reordered() {
        let mut w = SeqWindow::default();
        assert!(w.admit(1));
        assert!(!w.admit(1));
        assert!(w.admit(3));
        assert!(w.admit(2));
        assert!(!w.admit(2));
        assert!(!w.admit(3));
        assert!(w.admit(100));
        assert!(!w.admit(10), "older than the window: treated as seen");
        assert!(w.admit(99));
        assert!(!w.admit(0));
    }

    #[test]
    fn merges_vms_and_ignores_replays() {
        let mut st = ChainState::new(1000);
        let a = report(
            "vm-a",
            1,
            vec![record(
                "product",
                "productpage",
                Direction::Inbound,
                true,
                &[1, 2],
            )],
        );
        let b = report(
            "vm-b",
            1,
            vec![record(
                "product",
                "productpage",
                Direction::Inbound,
                true,
                &[3],
            )],
        );
        assert_eq!(
            st.ingest(&a, 1001),
            Ingested::Counted {
                records: 1,
                dropped_records: 0
            }
        );
        assert_eq!(
            st.ingest(&b, 1002),
            Ingested::Counted {
                records: 1,
                dropped_records: 0
            }
        );
        assert_eq!(st.ingest(&a, 1003), Ingested::Duplicate);
        assert_eq!(st.lifetime()["product"].end_to_end.requests, 3);
        let views = st.views(&BTreeMap::new(), 1004, 60);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].stats.window_requests, 3);
        assert_eq!(views[0].stats.requests, 3);
    }

    #[test]
    fn window_slides_and_lifetime_stays() {
        let mut st = ChainState::new(0);
        st.ingest(
            &report(
                "vm",
                1,
                vec![record("c", "s", Direction::Inbound, true, &[5; 10])],
            ),
            100,
        );
        st.ingest(
            &report(
                "vm",
                2,
                vec![record("c", "s", Direction::Inbound, true, &[5; 4])],
            ),
            150,
        );
        let (w, covered) = st.window(155, 30);
        assert_eq!(w["c"].end_to_end.requests, 4);
        assert_eq!(covered, 30.0);
        st.expire(400, 30);
        let (w, _) = st.window(400, 30);
        assert!(w.is_empty());
        assert_eq!(st.lifetime()["c"].end_to_end.requests, 14);
    }

    #[test]
    fn views_carry_slo_attainment_and_hops() {
        let mut specs = BTreeMap::new();
        specs.insert("product".to_string(), ChainSpec::with_objective(10.0));
        specs.insert("idle".to_string(), ChainSpec::with_objective(10.0));
        let mut st = ChainState::new(0);
        st.ingest(
            &report(
                "vm",
                1,
                vec![
                    record(
                        "product",
                        "productpage",
                        Direction::Inbound,
                        true,
                        &[5, 5, 5, 50],
                    ),
                    record("product", "reviews", Direction::Outbound, false, &[2; 4]),
                    record("product", "reviews", Direction::Inbound, false, &[1; 4]),
                ],
            ),
            100,
        );
        let views = st.views(&specs, 110, 60);
        let idle = views.iter().find(|v| v.chain == "idle");
        assert!(idle.is_some_and(|v| v.stats.requests == 0 && v.stats.slo_attainment.is_none()));
        let Some(p) = views.iter().find(|v| v.chain == "product") else {
            unreachable!()
        };
        assert_eq!(p.stats.slo_attainment, Some(0.75));
        assert_eq!(p.hops.len(), 2);
        let reviews = &p.hops[1];
        assert_eq!(
            (reviews.service.as_str(), reviews.direction),
            ("reviews", Direction::Inbound)
        );
        assert_eq!(reviews.stats.p50_ms, Some(1.0));
    }

    #[test]
    fn dirty_changes_are_taken_once_and_can_be_returned() {
        let mut st = ChainState::new(0);
        st.ingest(
            &report(
                "vm",
                1,
                vec![record("c", "s", Direction::Inbound, true, &[5])],
            ),
            60,
        );
        let d = st.take_dirty();
        assert_eq!((d.minutes.len(), d.lifetime.len(), d.vms.len()), (1, 1, 1));
        assert!(st.take_dirty().minutes.is_empty());
        st.mark_dirty_again(d);
        assert_eq!(st.take_dirty().minutes.len(), 1);
    }
}
