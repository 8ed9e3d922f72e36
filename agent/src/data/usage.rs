//! CPU and memory the services' replicas use, read from their cgroups as
//! kubelet's cAdvisor reads a pod's: a directory whose subdirectories are
//! the replicas' cgroups, named `SERVICE` or `SERVICE-N` (the lab's
//! layout). Per group, CPU is the controller's own counter where it keeps
//! one (v2 `cpu.stat` `usage_usec`, v1 `cpuacct.usage`), else the sum over
//! its processes in `/proc`; memory is the resident set of its processes.
//! [`DemandTracker`] turns successive readings into CPU-seconds per
//! request and keeps the working-set samples the memory allocation reads.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// One service's replicas together at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceSample {
    /// CPU-seconds used since the groups were made (a replica that
    /// restarted without a controller counter starts again from zero).
    pub cpu_s: f64,
    /// Resident memory of all replicas, MiB.
    pub memory_mib: f64,
    pub replicas: usize,
    /// Periods throttled by the CPU quota, summed over the replicas (the
    /// controller's `nr_throttled`; 0 where it keeps none).
    pub throttled_periods: u64,
    /// The quota in force per replica, cores (the largest over the
    /// replicas; `None`: no quota).
    pub limit_cores: Option<f64>,
    /// The replicas run under different quotas (or some under none): the
    /// throttled periods cannot then be read against one quota, as the
    /// allocation's model of evenly sized replicas reads them.
    pub uneven_limits: bool,
}

/// One service's replicas together, as a rate: what the metrics API gives
/// on a cluster (cores now, not a counter).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceRate {
    pub cores: f64,
    pub memory_mib: f64,
    pub replicas: usize,
}

/// Turns rates read now and then into the cumulative CPU-seconds
/// [`DemandTracker`] takes, by the trapezoid rule between readings (the
/// metrics API averages each pod's usage over its own short window, so the
/// readings between are not known).
#[derive(Debug, Default)]
pub struct RateIntegrator {
    /// Per service: when last read (seconds), the cores then, CPU-s so far.
    last: BTreeMap<String, (f64, f64, f64)>,
}

impl RateIntegrator {
    /// Takes the rates read at `t_s` (seconds on any one clock) and returns
    /// each service's cumulative sample; a service seen for the first time
    /// starts from zero CPU-seconds.
    pub fn add(
        &mut self,
        t_s: f64,
        rates: &BTreeMap<String, ServiceRate>,
    ) -> BTreeMap<String, ServiceSample> {
        let mut out = BTreeMap::new();
        for (svc, r) in rates {
            let (t0, cores0, cpu0) = self.last.get(svc).copied().unwrap_or((t_s, r.cores, 0.0));
            let cpu_s = cpu0 + (t_s - t0).max(0.0) * (cores0 + r.cores) / 2.0;
            self.last.insert(svc.clone(), (t_s, r.cores, cpu_s));
            out.insert(
                svc.clone(),
                ServiceSample {
                    cpu_s,
                    memory_mib: r.memory_mib,
                    replicas: r.replicas,
                    ..ServiceSample::default()
                },
            );
        }
        out
    }
}

/// The service a replica's group belongs to: `reviews-2` → `reviews`.
pub fn service_of(group: &str) -> &str {
    match group.rsplit_once('-') {
        Some((svc, n))
            if !svc.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            svc
        }
        _ => group,
    }
}

/// Reads a directory of replica cgroups.
#[derive(Debug, Clone)]
pub struct CgroupUsage {
    dir: PathBuf,
}

const CLOCK_TICKS: f64 = 100.0;

fn read_number(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pids(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// utime + stime of a process, seconds.
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

fn proc_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// A group's CPU-seconds: the controller's counter, else its processes'.
fn group_cpu_s(group: &Path) -> f64 {
    if let Ok(stat) = std::fs::read_to_string(group.join("cpu.stat")) {
        if let Some(us) = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            return us / 1e6;
        }
    }
    if let Some(ns) = read_number(&group.join("cpuacct.usage")) {
        return ns / 1e9;
    }
    pids(group).into_iter().filter_map(proc_cpu_s).sum()
}

/// A group's `nr_throttled` from its `cpu.stat` (v1 and v2 alike).
fn group_throttled(group: &Path) -> u64 {
    std::fs::read_to_string(group.join("cpu.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("nr_throttled "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A group's CPU quota in cores: v2 `cpu.max` (`QUOTA PERIOD` or `max`),
/// else v1 `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`.
pub fn quota_cores(group: &Path) -> Option<f64> {
    if let Ok(max) = std::fs::read_to_string(group.join("cpu.max")) {
        let mut f = max.split_whitespace();
        let quota: f64 = f.next()?.parse().ok()?;
        let period: f64 = f.next().and_then(|p| p.parse().ok()).unwrap_or(100_000.0);
        return (period > 0.0).then(|| quota / period);
    }
    let quota = read_number(&group.join("cpu.cfs_quota_us"))?;
    let period = read_number(&group.join("cpu.cfs_period_us"))?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

impl CgroupUsage {
    pub fn new(dir: &Path) -> Self {
        CgroupUsage {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every service with a replica group in the directory.
    pub fn read(&self) -> std::io::Result<BTreeMap<String, ServiceSample>> {
        let mut out: BTreeMap<String, ServiceSample> = BTreeMap::new();
        let mut quotas: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let s = out.entry(service_of(name).to_owned()).or_default();
            s.cpu_s += group_cpu_s(&path);
            s.memory_mib += pids(&path)
                .into_iter()
                .filter_map(proc_rss_mib)
                .sum::<f64>();
            s.replicas += 1;
            s.throttled_periods += group_throttled(&path);
            let quota = quota_cores(&path);
            if let Some(l) = quota {
                s.limit_cores = Some(s.limit_cores.map_or(l, |m: f64| m.max(l)));
            }
            quotas
                .entry(service_of(name).to_owned())
                .or_default()
                .push(quota);
        }
        for (service, q) in quotas {
            if let Some(s) = out.get_mut(&service) {
                s.uneven_limits = uneven(&q);
            }
        }
        Ok(out)
    }
}

/// Whether replicas' quotas differ: some limited and some not, or limits
/// more than 1 % apart (the kernel rounds a quota to microseconds).
fn uneven(quotas: &[Option<f64>]) -> bool {
    let limited: Vec<f64> = quotas.iter().flatten().copied().collect();
    if limited.is_empty() {
        return false;
    }
    if limited.len() < quotas.len() {
        return true;
    }
    let (lo, hi) = limited
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &l| {
            (lo.min(l), hi.max(l))
        });
    lo < 0.99 * hi
}

/// Working-set samples kept per service (the memory allocation's
/// percentile is over these).
const MEMORY_SAMPLES: usize = 360;
/// Requests between two readings below which the CPU per request is not
/// re-estimated (too few to divide by).
const MIN_REQUESTS: u64 = 50;
/// Weight of the newest estimate of CPU per request.
const DEMAND_WEIGHT: f64 = 0.5;

/// The CFS period the kubelet sets a container's quota per (100 ms).
pub const CFS_PERIOD_S: f64 = 0.1;

/// Throttling readings kept per service: the allocation weighs all of
/// them by their periods, so one calm interval does not undo what busy
/// ones showed, nor one stray throttled period outweigh many quiet ones.
pub const THROTTLE_READINGS: usize = 10;

/// What one interval between readings showed of a replica under its quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleReading {
    /// Share of all the replicas' 100 ms periods in the interval that the
    /// quota throttled.
    pub share: f64,
    /// The quota per replica, cores: the smaller of those in force at the
    /// interval's two ends.
    pub limit_cores: f64,
    /// Requests per wall second per replica in the interval.
    pub rps: f64,
    /// The replicas' 100 ms periods in the interval (the share's base).
    pub periods: f64,
}

/// A service at a reading: CPU-seconds, requests served, throttled
/// periods (cumulative), when, whether its replicas' quotas differed, and
/// the quota in force.
#[derive(Debug, Clone, Copy)]
struct LastReading {
    cpu_s: f64,
    requests: u64,
    throttled_periods: u64,
    wall_s: f64,
    uneven_limits: bool,
    limit_cores: Option<f64>,
}

/// CPU per request, throttling and memory samples per service, from
/// successive readings and the requests each service served meanwhile.
#[derive(Debug, Default)]
pub struct DemandTracker {
    /// Per service at the last reading.
    last: BTreeMap<String, LastReading>,
    demand_s: BTreeMap<String, f64>,
    /// Intervals the CPU per request has been estimated over.
    estimates: BTreeMap<String, usize>,
    memory: BTreeMap<String, VecDeque<f64>>,
    throttling: BTreeMap<String, VecDeque<ThrottleReading>>,
}

impl DemandTracker {
    /// Takes a reading at `wall_s` (seconds of wall time): `usage` per
    /// service and the requests each has served so far (cumulative).
    pub fn add(
        &mut self,
        usage: &BTreeMap<String, ServiceSample>,
        served: &BTreeMap<String, u64>,
        wall_s: f64,
    ) {
        for (svc, s) in usage {
            let m = self.memory.entry(svc.clone()).or_default();
            if s.replicas > 0 {
                // Per replica: each pod's container gets its own limit.
                m.push_back(s.memory_mib / s.replicas as f64);
                while m.len() > MEMORY_SAMPLES {
                    m.pop_front();
                }
            }
            let Some(&requests) = served.get(svc) else {
                continue;
            };
            if let Some(LastReading {
                cpu_s: cpu0,
                requests: req0,
                throttled_periods: thr0,
                wall_s: t0,
                uneven_limits: uneven0,
                limit_cores: limit0,
            }) = self.last.get(svc).copied()
            {
                let dr = requests.saturating_sub(req0);
                let dc = s.cpu_s - cpu0;
                if dr < MIN_REQUESTS {
                    // Wait for more requests before dividing.
                    continue;
                }
                let dt = wall_s - t0;
                // Replicas under different quotas at either end (a start
                // from per-replica sizes, a change half applied): which
                // replica was throttled under which quota is unknown, and
                // one small quota's throttling would read as burstiness.
                let one_quota = !uneven0 && !s.uneven_limits;
                // A quota changed within the interval is read as the smaller
                // of the two: a raise is applied some seconds after the
                // reading that asked for it (a resize, the lab's control
                // plane), and the throttling of those seconds under the old
                // quota would read as a very bursty service under the new
                // one; after a lowering the new one is in force nearly
                // throughout.
                let limit = match (limit0, s.limit_cores) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (_, b) => b,
                };
                if let (Some(limit), true) = (limit, dt > 0.0 && s.replicas > 0 && one_quota) {
                    let periods = dt / CFS_PERIOD_S * s.replicas as f64;
                    // A counter that went back (a restarted replica) says nothing.
                    if s.throttled_periods >= thr0 {
                        let r = self.throttling.entry(svc.clone()).or_default();
                        r.push_back(ThrottleReading {
                            share: ((s.throttled_periods - thr0) as f64 / periods).min(1.0),
                            limit_cores: limit,
                            rps: dr as f64 / dt / s.replicas as f64,
                            periods,
                        });
                        while r.len() > THROTTLE_READINGS {
                            r.pop_front();
                        }
                    }
                }
                // A restarted replica's counter went back: skip this interval.
                if dc > 0.0 {
                    let d = dc / dr as f64;
                    let e = self.demand_s.entry(svc.clone()).or_insert(d);
                    *e += DEMAND_WEIGHT * (d - *e);
                    *self.estimates.entry(svc.clone()).or_default() += 1;
                }
            }
            self.last.insert(
                svc.clone(),
                LastReading {
                    cpu_s: s.cpu_s,
                    requests,
                    throttled_periods: s.throttled_periods,
                    wall_s,
                    uneven_limits: s.uneven_limits,
                    limit_cores: s.limit_cores,
                },
            );
        }
    }

    /// Intervals the service's CPU per request has been estimated over.
    pub fn estimates(&self, service: &str) -> usize {
        self.estimates.get(service).copied().unwrap_or(0)
    }

    /// The service's latest throttling readings, oldest first.
    pub fn throttling(&self, service: &str) -> Vec<ThrottleReading> {
        self.throttling
            .get(service)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// CPU-seconds per request, once measured.
    pub fn demand_s(&self, service: &str) -> Option<f64> {
        self.demand_s.get(service).copied()
    }

    pub fn memory_mib(&self, service: &str) -> Vec<f64> {
        self.memory
            .get(service)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_groups_belong_to_their_service() {
        assert_eq!(service_of("reviews-2"), "reviews");
        assert_eq!(service_of("reviews"), "reviews");
        assert_eq!(service_of("ratings-api"), "ratings-api");
        assert_eq!(service_of("-3"), "-3");
    }

    /// Two ratings replicas at one reading, 40 MiB between them.
    fn reading(
        cpu_s: f64,
        throttled_periods: u64,
        limit_cores: Option<f64>,
    ) -> BTreeMap<String, ServiceSample> {
        BTreeMap::from([(
            "ratings".to_string(),
            ServiceSample {
                cpu_s,
                memory_mib: 40.0,
                replicas: 2,
                throttled_periods,
                limit_cores,
                uneven_limits: false,
            },
        )])
    }

    fn sample(cpu_s: f64) -> BTreeMap<String, ServiceSample> {
        reading(cpu_s, 0, None)
    }

    #[test]
    fn demand_is_cpu_over_requests_between_readings() {
        let mut t = DemandTracker::default();
        let served = |n: u64| BTreeMap::from([("ratings".to_string(), n)]);
        t.add(&sample(10.0), &served(1000), 0.0);
        assert_eq!(t.demand_s("ratings"), None, "one reading is no rate");
        t.add(&sample(10.4), &served(1100), 10.0);
        assert!((t.demand_s("ratings").unwrap() - 0.004).abs() < 1e-12);
        // Too few requests: no new estimate, and the baseline is kept.
        t.add(&sample(10.5), &served(1110), 20.0);
        assert!((t.demand_s("ratings").unwrap() - 0.004).abs() < 1e-12);
        t.add(&sample(10.4 + 0.6), &served(1200), 30.0);
        assert!((t.demand_s("ratings").unwrap() - 0.005).abs() < 1e-12);
        // A restart that reset the counter does not count as negative work.
        t.add(&sample(0.1), &served(1400), 40.0);
        assert!((t.demand_s("ratings").unwrap() - 0.005).abs() < 1e-12);
        assert_eq!(
            t.estimates("ratings"),
            2,
            "two intervals had requests and work"
        );
        assert_eq!(t.memory_mib("ratings"), vec![20.0; 5], "per replica");
        assert!(
            t.throttling("ratings").is_empty(),
            "no quota, no throttling read"
        );
    }

    #[test]
    fn throttling_is_the_share_of_all_periods_the_quota_stopped() {
        let mut t = DemandTracker::default();
        let at = |cpu_s: f64, throttled: u64| reading(cpu_s, throttled, Some(0.25));
        let served = |n: u64| BTreeMap::from([("ratings".to_string(), n)]);
        t.add(&at(1.0, 7), &served(0), 100.0);
        // 10 s of two replicas are 200 periods; 20 of them throttled; 400
        // requests over 10 s over two replicas are 20 req/s each.
        t.add(&at(2.6, 27), &served(400), 110.0);
        assert_eq!(
            t.throttling("ratings"),
            vec![ThrottleReading {
                share: 0.1,
                limit_cores: 0.25,
                rps: 20.0,
                periods: 200.0
            }]
        );
        // A counter that went back (a restarted replica) is skipped.
        t.add(&at(3.0, 3), &served(800), 120.0);
        assert_eq!(t.throttling("ratings").len(), 1);
        for i in 0..20 {
            t.add(
                &at(4.0 + i as f64, 3),
                &served(1200 + 400 * i),
                130.0 + 10.0 * i as f64,
            );
        }
        assert_eq!(t.throttling("ratings").len(), THROTTLE_READINGS, "bounded");
    }

    #[test]
    fn throttling_across_a_quota_change_is_read_against_the_smaller_quota() {
        let mut t = DemandTracker::default();
        let served = |n: u64| BTreeMap::from([("ratings".to_string(), n)]);
        t.add(&reading(1.0, 0, Some(0.1)), &served(0), 100.0);
        // Raised to 0.4 within the interval: its throttled periods came
        // under the 0.1 still in force at its start.
        t.add(&reading(2.0, 30, Some(0.4)), &served(400), 110.0);
        // Lowered back to 0.1: the lower quota again.
        t.add(&reading(3.0, 40, Some(0.1)), &served(800), 120.0);
        // Held at 0.4 over a whole interval: 0.4.
        t.add(&reading(4.0, 40, Some(0.4)), &served(1200), 130.0);
        t.add(&reading(5.0, 40, Some(0.4)), &served(1600), 140.0);
        let limits: Vec<f64> = t
            .throttling("ratings")
            .iter()
            .map(|r| r.limit_cores)
            .collect();
        assert_eq!(limits, vec![0.1, 0.1, 0.1, 0.4]);
    }

    #[test]
    fn throttling_under_uneven_quotas_is_not_read() {
        let mut t = DemandTracker::default();
        let at = |cpu_s: f64, throttled: u64, uneven: bool| {
            let mut r = reading(cpu_s, throttled, Some(0.25));
            if let Some(s) = r.get_mut("ratings") {
                s.uneven_limits = uneven;
            }
            r
        };
        let served = |n: u64| BTreeMap::from([("ratings".to_string(), n)]);
        // Uneven at the end, then at the start, of an interval: its
        // throttled periods are not read; its CPU per request still is.
        t.add(&at(1.0, 0, false), &served(0), 100.0);
        t.add(&at(2.0, 20, true), &served(400), 110.0);
        t.add(&at(3.0, 40, false), &served(800), 120.0);
        assert!(t.throttling("ratings").is_empty());
        assert_eq!(t.estimates("ratings"), 2);
        // Even at both ends again: read.
        t.add(&at(4.0, 50, false), &served(1200), 130.0);
        assert_eq!(t.throttling("ratings").len(), 1);
        assert!((t.throttling("ratings")[0].share - 0.05).abs() < 1e-12);
    }

    #[test]
    fn replicas_quotas_are_uneven_when_they_differ_or_some_have_none() {
        assert!(!uneven(&[]));
        assert!(!uneven(&[None, None]));
        assert!(!uneven(&[Some(0.2), Some(0.2), Some(0.199)]), "rounding");
        assert!(uneven(&[Some(0.2), Some(0.2), Some(0.025)]));
        assert!(uneven(&[Some(0.2), None]));
    }

    #[test]
    fn a_group_is_read_from_its_controller_counter_or_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("ratings-2");
        std::fs::create_dir(&g).unwrap();
        std::fs::write(g.join("cpuacct.usage"), "2500000000\n").unwrap();
        std::fs::write(g.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        let v2 = dir.path().join("details");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(
            v2.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1\nnr_periods 90\nnr_throttled 12\n",
        )
        .unwrap();
        std::fs::write(v2.join("cpu.max"), "25000 100000\n").unwrap();
        std::fs::write(g.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(g.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let read = CgroupUsage::new(dir.path()).read().unwrap();
        assert_eq!(read["details"].throttled_periods, 12);
        assert_eq!(read["details"].limit_cores, Some(0.25));
        assert_eq!(read["ratings"].limit_cores, None, "v1 quota -1: none");
        assert!((read["ratings"].cpu_s - 2.5).abs() < 1e-9);
        assert!(read["ratings"].memory_mib > 1.0, "this test's own RSS");
        assert!((read["details"].cpu_s - 1.5).abs() < 1e-9);
        assert!(!read["details"].uneven_limits && !read["ratings"].uneven_limits);
        // A second details replica under a quarter of the first's quota.
        let d2 = dir.path().join("details-2");
        std::fs::create_dir(&d2).unwrap();
        std::fs::write(d2.join("cpu.max"), "6250 100000\n").unwrap();
        let read = CgroupUsage::new(dir.path()).read().unwrap();
        assert_eq!(read["details"].limit_cores, Some(0.25), "the largest");
        assert!(read["details"].uneven_limits);
        let procs = dir.path().join("reviews");
        std::fs::create_dir(&procs).unwrap();
        std::fs::write(
            procs.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        // Some CPU of this process' own to count (a clock tick is 10 ms).
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let read = CgroupUsage::new(dir.path()).read().unwrap();
        assert!(read["reviews"].cpu_s > 0.05, "this process' own CPU");
    }
}
