//! Adaptive concurrency with priorities.
//!
//! The limit follows a gradient, as Envoy's adaptive concurrency filter:
//! `limit ← limit × (min_rtt × (1 + tolerance)) / sample_rtt + √limit`,
//! smoothed, where the sample RTT is judged against its own chain's minimum
//! (chains through one hop go on to different services, so their latencies
//! differ without any queueing). Unlike Envoy's, the minimum RTT is never re-measured by pinning
//! concurrency low for a window (which makes bursts of 503s): it is the
//! lowest sample seen. It drifts up slowly only while the limit is not what
//! holds latency up (the limit is near its floor, or in-flight requests stay
//! well below it), so a service that really became slower is followed while
//! queueing under overload never inflates the baseline. It starts low, as
//! TCP's slow start does, so the first samples show the uncongested latency,
//! and doubles every window until latency first shows queueing; before the
//! first window every class may use the whole starting limit. A window
//! that never filled half the limit and refused nothing does not grow it
//! (its latency says nothing about more load: TCP's congestion window
//! validation), so a surge after a quiet spell meets a limit near what was
//! last in use. When in-flight requests reach a class's share of the limit
//! that class is shed: `low` first, then `normal`; `high` may use the whole
//! limit, so a reserve stays for it. A share holds room only for classes
//! that are around: while no request of a more important class has arrived
//! in this sample window or the last, a class may use the whole limit (a
//! sidecar that only ever sees `low` traffic would otherwise leave its
//! service idle keeping room nobody asks for). Priority is strict at admission:
//! once a request of a class is refused, no request of a lower class is
//! admitted until one of that class is, or until two requests have finished
//! (requests in flight are never preempted): the room that frees up first
//! is held for the higher class, and a class that does not come back never
//! leaves the service idle.
//!
//! The agent's load forecast reaches the limit as an expected growth of the
//! service's load (policy `load_growth`): while latency shows no queueing,
//! the limit keeps room for the last window's peak concurrency times that
//! growth, so a forecast rise is admitted as it arrives instead of being shed
//! while the gradient catches up. Once latency rises the gradient rules again.

use crate::control::priority::Priority;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    #[serde(default = "default_initial")]
    pub initial_limit: u32,
    #[serde(default = "default_min")]
    pub min_limit: u32,
    #[serde(default = "default_max")]
    pub max_limit: u32,
    /// How much above the minimum RTT a sample may be before the limit shrinks.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Weight of a new limit (0..1].
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Samples per limit update.
    #[serde(default = "default_window")]
    pub sample_window: u32,
    /// Relative upward drift of the minimum RTT per update.
    #[serde(default = "default_min_rtt_drift")]
    pub min_rtt_drift: f64,
    /// Share of the limit `normal` and `low` chains may fill.
    #[serde(default = "default_normal_share")]
    pub normal_share: f64,
    #[serde(default = "default_low_share")]
    pub low_share: f64,
    /// Worker VMs in one sidecar, each with its own limit (Envoy runs one
    /// VM per worker thread: its `--concurrency`, Istio's `concurrency`).
    /// The limit's headroom is that of their total, shared between them.
    #[serde(default = "default_vms_per_sidecar")]
    pub vms_per_sidecar: u32,
}

fn default_initial() -> u32 {
    // Start low, like TCP slow start: the first samples then show the
    // service's uncongested latency, which becomes the baseline.
    2
}
fn default_min() -> u32 {
    1
}
fn default_max() -> u32 {
    1000
}
fn default_tolerance() -> f64 {
    0.25
}
fn default_smoothing() -> f64 {
    0.3
}
fn default_window() -> u32 {
    20
}
fn default_min_rtt_drift() -> f64 {
    0.01
}
fn default_normal_share() -> f64 {
    0.85
}
fn default_low_share() -> f64 {
    0.6
}
fn default_vms_per_sidecar() -> u32 {
    1
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            initial_limit: default_initial(),
            min_limit: default_min(),
            max_limit: default_max(),
            tolerance: default_tolerance(),
            smoothing: default_smoothing(),
            sample_window: default_window(),
            min_rtt_drift: default_min_rtt_drift(),
            normal_share: default_normal_share(),
            low_share: default_low_share(),
            vms_per_sidecar: default_vms_per_sidecar(),
        }
    }
}

impl ConcurrencyConfig {
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return Err(("min_limit", "must be at least 1 and at most max_limit"));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(("initial_limit", "must be between min_limit and max_limit"));
        }
        if !(0.0..=10.0).contains(&self.tolerance) {
            return Err(("tolerance", "must be between 0 and 10"));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(("smoothing", "must be in (0, 1]"));
        }
        if self.sample_window == 0 || self.sample_window > 10_000 {
            return Err(("sample_window", "must be between 1 and 10000"));
        }
        if !(1..=256).contains(&self.vms_per_sidecar) {
            return Err(("vms_per_sidecar", "must be between 1 and 256"));
        }
        if !(0.0..=1.0).contains(&self.min_rtt_drift) {
            return Err(("min_rtt_drift", "must be between 0 and 1"));
        }
        if !(self.low_share > 0.0
            && self.low_share <= self.normal_share
            && self.normal_share <= 1.0)
        {
            return Err(("low_share", "need 0 < low_share ≤ normal_share ≤ 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// At the class's share of the limit: answer 503 with `retry-after`.
    /// `retry_may_help`: every slot of the limit was taken, so a retry after
    /// the caller's back-off may find one freed by a finished request.
    /// Otherwise the limit still had room, but only for more important
    /// classes (or one of them was starved): a retry would take exactly the
    /// room kept for them, so the caller is asked not to make one.
    Shed {
        retry_may_help: bool,
    },
}

#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    cfg: ConcurrencyConfig,
    limit: f64,
    inflight: u32,
    /// Uncongested latency of each chain through this hop (chains go on to
    /// different services, so one hop's latencies differ by chain: a sample
    /// is judged against its own chain's baseline, never another's).
    baselines: Vec<ChainBaseline>,
    /// This window's samples: (index into `baselines`, latency).
    samples: Vec<(u8, u64)>,
    /// Highest in-flight count during the current sample window.
    window_peak: u32,
    shed: u64,
    /// Expected growth of the load (≥ 1) from the agent's forecast.
    growth: f64,
    /// Until latency first shows queueing the limit doubles every window,
    /// as TCP's slow start does, so a low start does not shed light load.
    slow_start: bool,
    /// The most important class refused since one of it was last admitted:
    /// lower classes wait behind it (strict priority at admission).
    starved: Option<Priority>,
    /// Requests finished since a class was refused: the room of one is held
    /// for it; after a second, lower classes are admitted again, so waiting
    /// for a class that does not come back never idles the service.
    finished_while_starved: u32,
    /// Classes that asked for admission in this sample window and in the
    /// last (one bit per class): shares reserve room only for these.
    classes_seen: u8,
    classes_seen_before: u8,
    /// `shed` when this sample window began: a window that refused a
    /// request saw demand above the limit, whatever its peak in flight (a
    /// class's share can keep that under half the limit meanwhile).
    shed_at_window_start: u64,
}

/// Chains with a baseline of their own per limit; any further chain shares
/// the last one (a bounded memory whatever the traffic names).
pub const MAX_BASELINES: usize = 32;

#[derive(Debug, Clone)]
struct ChainBaseline {
    chain: String,
    /// Lowest window median seen, drifting up while the limit does not
    /// hold latency up; `None` until the chain's first window.
    min_rtt_ns: Option<f64>,
}

fn class_bit(p: Priority) -> u8 {
    match p {
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 4,
    }
}

/// Largest growth the limit makes room for ahead of the load.
pub const MAX_GROWTH: f64 = 4.0;

/// A forecast load growth as the controls use it: clamped to
/// [1, [`MAX_GROWTH`]], anything not finite counting as none (1).
pub fn bounded_growth(growth: f64) -> f64 {
    if growth.is_finite() {
        growth.clamp(1.0, MAX_GROWTH)
    } else {
        1.0
    }
}

impl AdaptiveLimit {
    pub fn new(cfg: ConcurrencyConfig) -> Self {
        AdaptiveLimit {
            limit: f64::from(cfg.initial_limit),
            samples: Vec::with_capacity(cfg.sample_window as usize),
            cfg,
            inflight: 0,
            baselines: Vec::new(),
            window_peak: 0,
            shed: 0,
            growth: 1.0,
            slow_start: true,
            starved: None,
            finished_while_starved: 0,
            classes_seen: 0,
            classes_seen_before: 0,
            shed_at_window_start: 0,
        }
    }

    /// Sets the load growth the forecast expects (1 = none; clamped to
    /// [1, [`MAX_GROWTH`]], anything not finite counts as none).
    pub fn set_expected_growth(&mut self, growth: f64) {
        self.growth = bounded_growth(growth);
    }

    pub fn expected_growth(&self) -> f64 {
        self.growth
    }

    pub fn limit(&self) -> u32 {
        self.limit.round() as u32
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    pub fn shed_count(&self) -> u64 {
        self.shed
    }

    /// The uncongested latency learnt for `chain` at this hop.
    pub fn min_rtt_ns(&self, chain: &str) -> Option<f64> {
        self.baselines
            .iter()
            .find(|b| b.chain == chain)
            .and_then(|b| b.min_rtt_ns)
    }

    /// Whether any chain's uncongested latency has been measured yet.
    fn measured(&self) -> bool {
        self.baselines.iter().any(|b| b.min_rtt_ns.is_some())
    }

    fn baseline_slot(&mut self, chain: &str) -> u8 {
        if let Some(i) = self.baselines.iter().position(|b| b.chain == chain) {
            return i as u8;
        }
        if self.baselines.len() < MAX_BASELINES {
            self.baselines.push(ChainBaseline {
                chain: chain.to_string(),
                min_rtt_ns: None,
            });
        }
        (self.baselines.len() - 1) as u8
    }

    fn threshold(&self, p: Priority) -> f64 {
        // Bits of the classes more important than `p` (each bit is one
        // class; the more important ones have the lower bits).
        let above = class_bit(p) - 1;
        if (self.classes_seen | self.classes_seen_before) & above == 0 {
            return self.limit;
        }
        let share = match p {
            Priority::High => 1.0,
            Priority::Normal => self.cfg.normal_share,
            Priority::Low => self.cfg.low_share,
        };
        (self.limit * share).max(1.0)
    }

    /// Admits a request of class `p` (and counts it in flight) or refuses
    /// it: admitted, the class must stay within its share of the limit. A
    /// refused request is shed, or waits (see `waiting`).
    pub fn try_acquire(&mut self, p: Priority) -> Admission {
        self.classes_seen |= class_bit(p);
        let Some(behind_starved) = self.refusal(p) else {
            self.take(p);
            return Admission::Admit;
        };
        self.shed += 1;
        let full = f64::from(self.inflight + 1) > self.limit;
        if !behind_starved {
            self.starved = Some(self.starved.map_or(p, |s| s.min(p)));
            self.finished_while_starved = 0;
        }
        Admission::Shed {
            retry_may_help: full && !behind_starved,
        }
    }

    /// Admits a request of class `p` that waited, if there is room now.
    pub fn try_admit_waiting(&mut self, p: Priority) -> bool {
        self.classes_seen |= class_bit(p);
        if self.refusal(p).is_some() {
            return false;
        }
        self.take(p);
        true
    }

    /// How many requests of class `p` may be in flight now (its share of
    /// the limit, or all of it), rounded down and at least one.
    pub fn room(&self, p: Priority) -> usize {
        (self.threshold_now(p).floor() as usize).max(1)
    }

    fn threshold_now(&self, p: Priority) -> f64 {
        // Until the first window has measured the service (a VM that has
        // seen little traffic yet), every class may use the whole starting
        // limit: it is kept low to learn the uncongested latency, not to
        // ration a service nothing says is loaded.
        if !self.measured() {
            self.limit
        } else {
            self.threshold(p)
        }
    }

    /// `None` when a request of class `p` may be admitted now, else
    /// whether it is refused only for waiting behind a starved class.
    fn refusal(&self, p: Priority) -> Option<bool> {
        // `Priority` orders High < Normal < Low: a starved class that sorts
        // before `p` is more important, and `p` waits behind it.
        let behind_starved = self.starved.is_some_and(|s| s < p);
        (behind_starved || f64::from(self.inflight + 1) > self.threshold_now(p))
            .then_some(behind_starved)
    }

    fn take(&mut self, p: Priority) {
        if self.starved.is_some_and(|s| s >= p) {
            self.starved = None;
        }
        self.inflight += 1;
        self.window_peak = self.window_peak.max(self.inflight);
    }

    /// A request of `chain` admitted earlier finished after `rtt_ns`.
    pub fn release(&mut self, chain: &str, rtt_ns: u64) {
        self.release_without_sample();
        let slot = self.baseline_slot(chain);
        self.samples.push((slot, rtt_ns));
        if self.samples.len() >= self.cfg.sample_window as usize {
            self.update();
        }
    }

    /// A request admitted earlier ended without a meaningful latency (reset).
    pub fn release_without_sample(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
        if self.starved.is_some() {
            self.finished_while_starved += 1;
            if self.finished_while_starved >= 2 {
                self.starved = None;
            }
        }
    }

    fn update(&mut self) {
        // Application-limited: the window never filled half the limit and
        // refused nothing, so its latency says nothing about a larger one
        // (TCP's congestion window validation, RFC 7661; Netflix's
        // Gradient2 likewise).
        let refused = self.shed > self.shed_at_window_start;
        self.shed_at_window_start = self.shed;
        let app_limited = f64::from(self.window_peak) < self.limit / 2.0 && !refused;
        let unconstrained = self.limit < f64::from(self.cfg.min_limit) + 1.0 || app_limited;
        let peak = f64::from(self.window_peak);
        self.window_peak = self.inflight;
        self.classes_seen_before = self.classes_seen;
        self.classes_seen = 0;
        // Each chain's baseline: the lowest of its window medians.
        self.samples.sort_unstable();
        let mut start = 0;
        while start < self.samples.len() {
            let slot = self.samples[start].0;
            let end = start
                + self.samples[start..]
                    .iter()
                    .take_while(|(s, _)| *s == slot)
                    .count();
            let median = self.samples[(start + end) / 2].1 as f64;
            let b = &mut self.baselines[usize::from(slot)];
            b.min_rtt_ns = Some(
                match b.min_rtt_ns {
                    Some(m) if unconstrained => (m * (1.0 + self.cfg.min_rtt_drift)).min(median),
                    Some(m) => m.min(median),
                    None => median,
                }
                .max(1.0),
            );
            start = end;
        }
        // The window's queueing: the median of the samples' latencies, each
        // relative to its chain's baseline (with one chain, the median
        // latency over the baseline).
        let mut ratios: Vec<f64> = self
            .samples
            .iter()
            .map(|(slot, rtt)| {
                let base = self.baselines[usize::from(*slot)].min_rtt_ns.unwrap_or(1.0);
                (*rtt as f64).max(1.0) / base
            })
            .collect();
        self.samples.clear();
        ratios.sort_unstable_by(f64::total_cmp);
        let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(1.0);
        let gradient = ((1.0 + self.cfg.tolerance) / ratio).clamp(0.5, 2.0);
        // Headroom √(total limit), this VM's share of it: with `n` VMs each
        // holding `limit`, n × √(limit / n) = √(n × limit). Without the share
        // every VM would add the whole headroom and the sidecar would queue
        // n times as deep at the gradient's floor.
        let n = f64::from(self.cfg.vms_per_sidecar.max(1));
        let target = self.limit * gradient + (self.limit / n).sqrt();
        let mut next = (1.0 - self.cfg.smoothing) * self.limit + self.cfg.smoothing * target;
        if self.slow_start {
            if gradient >= 1.0 {
                next = next.max(self.limit * 2.0);
            } else {
                self.slow_start = false;
            }
        }
        if app_limited {
            // A limit that grew while unused would admit a whole surge at
            // once when the load comes, queueing it at the service before
            // the first window could show it: it stays where it is.
            next = next.min(self.limit);
        }
        if gradient >= 1.0 {
            // No queueing: keep room for the load the forecast expects.
            next = next.max(peak * self.growth);
        }
        self.limit = next.clamp(f64::from(self.cfg.min_limit), f64::from(self.cfg.max_limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "checkout";

    /// A server with `workers` parallel slots and `service_ns` per request:
    /// a request admitted with `n` in flight takes `service_ns × max(1, n / workers)`.
    fn rtt(inflight: u32, workers: u32, service_ns: u64) -> u64 {
        service_ns * u64::from(inflight.max(workers)) / u64::from(workers)
    }

    fn drive(limit: &mut AdaptiveLimit, offered: u32, rounds: u32, workers: u32) {
        for _ in 0..rounds {
            let mut admitted = 0;
            for _ in 0..offered {
                if limit.try_acquire(Priority::High) == Admission::Admit {
                    admitted += 1;
                }
            }
            let r = rtt(admitted, workers, 5_000_000);
            for _ in 0..admitted {
                limit.release(CHAIN, r);
            }
        }
    }

    #[test]
    fn room_that_frees_up_goes_to_the_refused_class_first() {
        // Shares at 1: only strictness can refuse a lower class here.
        let cfg = ConcurrencyConfig {
            normal_share: 1.0,
            low_share: 1.0,
            ..ConcurrencyConfig::default()
        };
        let mut l = AdaptiveLimit::new(cfg);
        drive(&mut l, 40, 50, 8);
        // High requests fill the limit; the next one is refused.
        while l.try_acquire(Priority::High) == Admission::Admit {}
        // One finishes: its room is held for the refused high class.
        l.release(CHAIN, 5_000_000);
        // Held for the starved class: the others are asked not to retry.
        let behind = Admission::Shed {
            retry_may_help: false,
        };
        assert_eq!(l.try_acquire(Priority::Low), behind);
        assert_eq!(l.try_acquire(Priority::Normal), behind);
        assert_eq!(l.try_acquire(Priority::High), Admission::Admit);
        l.release(CHAIN, 5_000_000);
        assert_eq!(
            l.try_acquire(Priority::Low),
            Admission::Admit,
            "then the rest again"
        );
        // A refused class that does not come back holds one room, not more.
        while l.try_acquire(Priority::High) == Admission::Admit {}
        l.release(CHAIN, 5_000_000);
        assert_eq!(l.try_acquire(Priority::Low), behind);
        l.release(CHAIN, 5_000_000);
        assert_eq!(l.try_acquire(Priority::Low), Admission::Admit);
    }

    #[test]
    fn a_shed_says_whether_a_retry_may_find_room() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 40, 50, 8);
        let limit = l.limit();
        assert!(limit >= 4, "limit {limit}");
        // Low requests fill their share; the limit keeps room for the others.
        let mut low = 0;
        while l.try_acquire(Priority::Low) == Admission::Admit {
            low += 1;
        }
        assert!(low < limit, "low took {low} of {limit}");
        // That refusal was by class: a retry would take the room kept for
        // the more important classes.
        assert_eq!(
            l.try_acquire(Priority::Low),
            Admission::Shed {
                retry_may_help: false
            }
        );
        // High requests take the rest; once every slot is taken, a shed
        // says a retry after a back-off may find one freed.
        while l.try_acquire(Priority::High) == Admission::Admit {}
        assert!(l.inflight() + 1 >= limit, "{} of {limit}", l.inflight());
        assert_eq!(
            l.try_acquire(Priority::High),
            Admission::Shed {
                retry_may_help: true
            }
        );
    }

    #[test]
    fn limit_converges_near_the_servers_parallelism_under_overload() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 200, 400, 16);
        let lim = l.limit();
        // With tolerance 0.5 the knee is at 16 × 1.5 = 24, plus headroom.
        assert!((16..=40).contains(&lim), "limit {lim}");
        assert_eq!(l.inflight(), 0);
    }

    /// `vms` limits in one sidecar (configured with `vms_per_sidecar:
    /// declared`) in front of one server with `workers` slots: light load,
    /// then each VM offered `offered` per round; the sidecar's total limit.
    fn drive_sidecar(vms: u32, declared: u32, workers: u32, offered: u32, rounds: u32) -> u32 {
        let cfg = ConcurrencyConfig {
            vms_per_sidecar: declared,
            ..ConcurrencyConfig::default()
        };
        let mut ls: Vec<AdaptiveLimit> =
            (0..vms).map(|_| AdaptiveLimit::new(cfg.clone())).collect();
        // Light load first, one request at a time through one VM after the
        // other: every VM learns the uncongested latency.
        const LIGHT: u32 = 400;
        for round in 0..LIGHT + rounds {
            let admitted: Vec<u32> = ls
                .iter_mut()
                .enumerate()
                .map(|(i, l)| {
                    let n = if round >= LIGHT {
                        offered
                    } else {
                        u32::from(round % vms == i as u32)
                    };
                    (0..n)
                        .filter(|_| l.try_acquire(Priority::High) == Admission::Admit)
                        .count() as u32
                })
                .collect();
            // Every VM's requests queue at the same server.
            let r = rtt(admitted.iter().sum(), workers, 8_000_000);
            for (l, n) in ls.iter_mut().zip(admitted) {
                for _ in 0..n {
                    l.release(CHAIN, r);
                }
            }
        }
        ls.iter().map(AdaptiveLimit::limit).sum()
    }

    #[test]
    fn worker_vms_of_one_sidecar_share_its_headroom() {
        // One worker, overloaded: one VM settles where the gradient's floor
        // meets the headroom (4); two VMs sharing a sidecar keep about that
        // in total instead of queueing twice as deep.
        let one = drive_sidecar(1, 1, 1, 50, 400);
        let two = drive_sidecar(2, 2, 1, 50, 400);
        assert!((2..=6).contains(&one), "one VM: {one}");
        assert!(two <= one + 1, "two VMs: {two} in total, one VM: {one}");
        // Each counting itself alone, they queue deeper.
        let unaware = drive_sidecar(2, 1, 1, 50, 400);
        assert!(unaware > two, "unaware: {unaware}, sharing: {two}");
    }

    #[test]
    fn chains_with_different_paths_are_not_mistaken_for_queueing() {
        // One hop, two chains: `short` answers in 5 ms, `long` goes on to
        // more services and takes 20 ms. The service is far from busy, but
        // the mix shifts between windows: judged against one shared
        // minimum, the long chain's windows would look like queueing.
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        for round in 0..600 {
            let long_share = if (round / 20) % 2 == 0 { 0.2 } else { 0.8 };
            let admitted: Vec<bool> = (0..100)
                .map(|i| (i as f64) < 100.0 * long_share)
                .filter(|_| l.try_acquire(Priority::High) == Admission::Admit)
                .collect();
            for long in admitted {
                if long {
                    l.release("long", 20_000_000);
                } else {
                    l.release("short", 5_000_000);
                }
            }
        }
        assert!(l.limit() >= 100, "limit {}", l.limit());
        assert_eq!(l.min_rtt_ns("short"), Some(5_000_000.0));
        assert_eq!(l.min_rtt_ns("long"), Some(20_000_000.0));
    }

    #[test]
    fn chains_past_the_cap_share_one_baseline() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        for i in 0..MAX_BASELINES + 10 {
            assert_eq!(l.try_acquire(Priority::High), Admission::Admit);
            l.release(&format!("chain-{i}"), 1_000_000);
        }
        assert_eq!(l.baselines.len(), MAX_BASELINES);
    }

    #[test]
    fn limit_grows_when_latency_stays_flat() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 200, 300, 1000);
        assert!(l.limit() > 150, "limit {}", l.limit());
    }

    #[test]
    fn an_unused_limit_does_not_grow_so_a_surge_meets_a_small_one() {
        // Light load on a fast service: two requests at a time, no queueing.
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 2, 300, 1000);
        // Slow start doubles while half the limit is used, then it stays:
        // at most four times what was ever in flight (it grew to the
        // 1,000 maximum before).
        assert!(l.limit() <= 8, "limit {}", l.limit());
        // The surge comes: the service has one worker. At most the small
        // limit is admitted at once, not the whole surge.
        let mut admitted = 0;
        while l.try_acquire(Priority::High) == Admission::Admit {
            admitted += 1;
        }
        assert!(admitted <= 8, "{admitted} admitted at once");
        // Used, it grows again while latency stays flat.
        for _ in 0..admitted {
            l.release(CHAIN, 5_000_000);
        }
        drive(&mut l, 200, 300, 1000);
        assert!(l.limit() > 150, "limit {}", l.limit());
    }

    #[test]
    fn a_limit_whose_share_refuses_requests_still_grows() {
        // A fast service; a few high requests keep `low` to its share (a
        // third of the limit), so fewer than half the limit are ever in
        // flight while `low` is refused: demand is above the limit, and
        // it must grow as latency stays flat.
        let cfg = ConcurrencyConfig {
            normal_share: 0.3,
            low_share: 0.3,
            ..ConcurrencyConfig::default()
        };
        let mut l = AdaptiveLimit::new(cfg);
        for _ in 0..300 {
            let mut admitted = 0;
            if l.try_acquire(Priority::High) == Admission::Admit {
                admitted += 1;
            }
            for _ in 0..40 {
                if l.try_acquire(Priority::Low) == Admission::Admit {
                    admitted += 1;
                }
            }
            for _ in 0..admitted {
                l.release(CHAIN, 5_000_000);
            }
        }
        assert!(l.limit() > 100, "limit {}", l.limit());
    }

    #[test]
    fn recovers_after_the_service_slows_down_and_speeds_up() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 200, 300, 16);
        let before = l.limit();
        drive(&mut l, 200, 300, 4);
        let slow = l.limit();
        assert!(slow < before, "{slow} < {before}");
        drive(&mut l, 200, 600, 16);
        assert!(
            l.limit() >= before * 2 / 3,
            "recovered to {} from {slow} (was {before})",
            l.limit()
        );
    }

    /// After an overload episode the service has room again (scaled out)
    /// while its load keeps rising; returns the requests shed meanwhile.
    fn shed_during_recovery(growth: f64) -> u64 {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut l, 200, 400, 16);
        l.set_expected_growth(growth);
        let before = l.shed_count();
        drive(&mut l, 120, 30, 1000);
        l.shed_count() - before
    }

    #[test]
    fn a_forecast_rise_is_admitted_as_it_arrives() {
        let without = shed_during_recovery(1.0);
        let with = shed_during_recovery(2.0);
        assert!(
            with * 2 < without,
            "with the forecast the limit makes room sooner: {with} shed vs {without} without"
        );
    }

    #[test]
    fn the_forecast_makes_no_room_while_latency_shows_queueing() {
        let mut hinted = AdaptiveLimit::new(ConcurrencyConfig::default());
        hinted.set_expected_growth(MAX_GROWTH);
        let mut plain = AdaptiveLimit::new(ConcurrencyConfig::default());
        drive(&mut hinted, 200, 400, 16);
        drive(&mut plain, 200, 400, 16);
        assert!(
            hinted.limit() <= plain.limit() + 8,
            "under overload the growth hint must not hold the limit up: {} vs {}",
            hinted.limit(),
            plain.limit()
        );
        hinted.set_expected_growth(f64::NAN);
        assert_eq!(hinted.expected_growth(), 1.0);
        hinted.set_expected_growth(100.0);
        assert_eq!(hinted.expected_growth(), MAX_GROWTH);
    }

    #[test]
    fn low_priority_is_shed_first_and_high_keeps_a_reserve() {
        let cfg = ConcurrencyConfig {
            initial_limit: 10,
            ..ConcurrencyConfig::default()
        };
        let mut l = AdaptiveLimit::new(cfg);
        // Before the first window every class may use the starting limit.
        let learning: Vec<Admission> = (0..11).map(|_| l.try_acquire(Priority::Low)).collect();
        assert_eq!(
            learning.iter().filter(|a| **a == Admission::Admit).count(),
            10
        );
        // The window measures a flat service: slow start doubles the limit to 20.
        for _ in 0..10 {
            l.release(CHAIN, 5_000_000);
        }
        for _ in 0..10 {
            assert_eq!(l.try_acquire(Priority::High), Admission::Admit);
            l.release(CHAIN, 5_000_000);
        }
        assert_eq!(l.limit(), 20);
        let before = l.shed_count();
        let mut admitted = |p| {
            (0..30)
                .filter(|_| l.try_acquire(p) == Admission::Admit)
                .count()
        };
        assert_eq!(admitted(Priority::Low), 12, "low fills 60 % of the limit");
        assert_eq!(admitted(Priority::Normal), 5, "normal up to 85 %");
        assert_eq!(admitted(Priority::High), 3, "high takes the rest");
        assert_eq!(admitted(Priority::High), 0);
        assert_eq!(l.shed_count() - before, 18 + 25 + 27 + 30);
    }

    #[test]
    fn a_share_reserves_room_only_while_a_more_important_class_is_around() {
        let mut l = AdaptiveLimit::new(ConcurrencyConfig {
            initial_limit: 10,
            ..ConcurrencyConfig::default()
        });
        // Two windows of low traffic only, latency flat: the limit is 40.
        for _ in 0..40 {
            assert_eq!(l.try_acquire(Priority::Low), Admission::Admit);
            l.release(CHAIN, 5_000_000);
        }
        let limit = l.limit() as usize;
        let fill = |l: &mut AdaptiveLimit, p| {
            let n = (0..limit + 5)
                .filter(|_| l.try_acquire(p) == Admission::Admit)
                .count();
            for _ in 0..n {
                l.release_without_sample();
            }
            n
        };
        assert_eq!(fill(&mut l, Priority::Low), limit, "nothing to reserve for");
        // A high request arrives: from now on low keeps to its share.
        assert_eq!(l.try_acquire(Priority::High), Admission::Admit);
        l.release(CHAIN, 5_000_000);
        let share = (limit as f64 * 0.6).floor() as usize;
        assert_eq!(fill(&mut l, Priority::Low), share);
        // Normal keeps room for high too, but not for low.
        assert_eq!(
            fill(&mut l, Priority::Normal),
            (limit as f64 * 0.85).floor() as usize
        );
        // Two whole windows without high: the reserve is released.
        for _ in 0..40 {
            l.try_acquire(Priority::Low);
            l.release(CHAIN, 5_000_000);
        }
        let limit = l.limit() as usize;
        assert_eq!(
            (0..limit + 5)
                .filter(|_| l.try_acquire(Priority::Low) == Admission::Admit)
                .count(),
            limit
        );
    }

    #[test]
    fn validation_names_the_field() {
        let bad = ConcurrencyConfig {
            low_share: 0.9,
            normal_share: 0.5,
            ..ConcurrencyConfig::default()
        };
        assert_eq!(bad.validate().map_err(|(f, _)| f), Err("low_share"));
        let bad = ConcurrencyConfig {
            initial_limit: 0,
            ..ConcurrencyConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
