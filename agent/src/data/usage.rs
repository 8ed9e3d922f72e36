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
        }
        Ok(out)
    }
}

/// Working-set samples kept per service (the memory allocation's
/// percentile is over these).
const MEMORY_SAMPLES: usize = 360;
/// Requests between two readings below which the CPU per request is not
/// re-estimated (too few to divide by).
const MIN_REQUESTS: u64 = 50;
/// Weight of the newest estimate of CPU per request.
const DEMAND_WEIGHT: f64 = 0.5;

/// CPU per request and memory samples per service, from successive
/// readings and the requests each service served meanwhile.
#[derive(Debug, Default)]
pub struct DemandTracker {
    last: BTreeMap<String, (f64, u64)>,
    demand_s: BTreeMap<String, f64>,
    memory: BTreeMap<String, VecDeque<f64>>,
}

impl DemandTracker {
    /// Takes a reading: `usage` per service and the requests each has
    /// served so far (cumulative).
    pub fn add(&mut self, usage: &BTreeMap<String, ServiceSample>, served: &BTreeMap<String, u64>) {
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
            if let Some((cpu0, req0)) = self.last.get(svc).copied() {
                let dr = requests.saturating_sub(req0);
                let dc = s.cpu_s - cpu0;
                if dr < MIN_REQUESTS {
                    // Wait for more requests before dividing.
                    continue;
                }
                // A restarted replica's counter went back: skip this interval.
                if dc > 0.0 {
                    let d = dc / dr as f64;
                    let e = self.demand_s.entry(svc.clone()).or_insert(d);
                    *e += DEMAND_WEIGHT * (d - *e);
                }
            }
            self.last.insert(svc.clone(), (s.cpu_s, requests));
        }
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

    fn sample(cpu_s: f64) -> BTreeMap<String, ServiceSample> {
        BTreeMap::from([(
            "ratings".to_string(),
            ServiceSample {
                cpu_s,
                memory_mib: 40.0,
                replicas: 2,
            },
        )])
    }

    #[test]
    fn demand_is_cpu_over_requests_between_readings() {
        let mut t = DemandTracker::default();
        let served = |n: u64| BTreeMap::from([("ratings".to_string(), n)]);
        t.add(&sample(10.0), &served(1000));
        assert_eq!(t.demand_s("ratings"), None, "one reading is no rate");
        t.add(&sample(10.4), &served(1100));
        assert!((t.demand_s("ratings").unwrap() - 0.004).abs() < 1e-12);
        // Too few requests: no new estimate, and the baseline is kept.
        t.add(&sample(10.5), &served(1110));
        assert!((t.demand_s("ratings").unwrap() - 0.004).abs() < 1e-12);
        t.add(&sample(10.4 + 0.6), &served(1200));
        assert!((t.demand_s("ratings").unwrap() - 0.005).abs() < 1e-12);
        // A restart that reset the counter does not count as negative work.
        t.add(&sample(0.1), &served(1400));
        assert!((t.demand_s("ratings").unwrap() - 0.005).abs() < 1e-12);
        assert_eq!(t.memory_mib("ratings"), vec![20.0; 5], "per replica");
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
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1500000\nuser_usec 1\n").unwrap();
        let read = CgroupUsage::new(dir.path()).read().unwrap();
        assert!((read["ratings"].cpu_s - 2.5).abs() < 1e-9);
        assert!(read["ratings"].memory_mib > 1.0, "this test's own RSS");
        assert!((read["details"].cpu_s - 1.5).abs() < 1e-9);
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
