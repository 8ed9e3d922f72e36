//! CPU and memory limits on lab processes through cgroups: what kubelet
//! writes for a container's `resources.limits` (a CFS quota per period,
//! and a memory limit), so an allocation the agent decides is enforced in
//! the lab the way a cluster enforces it. cgroup v2 (`cpu.max`,
//! `memory.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`,
//! `memory.limit_in_bytes`) are both supported; which one the machine has
//! is read from `/sys/fs/cgroup`.

use std::fs;
use std::path::{Path, PathBuf};

/// The CFS period kubelet uses (100 ms).
pub const PERIOD_US: u64 = 100_000;
/// The least quota the kernel accepts (1 ms per period).
const MIN_QUOTA_US: u64 = 1_000;
const ROOT: &str = "/sys/fs/cgroup";
/// The lab's cgroups live under this one, per hierarchy.
const PARENT: &str = "meshtune-lab";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cgroups: no writable cpu controller under {ROOT} ({0}); the lab needs root and the cpu \
         controller: on cgroup v1 `mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu`, on v2 \
         `echo +cpu > /sys/fs/cgroup/cgroup.subtree_control`"
    )]
    NoCpuController(String),
    #[error("cgroups: cannot write {path}: {source}; run the lab as root (`sudo`)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroups: cpu limit {0} cores is not a positive number")]
    BadCores(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One lab process's cgroup (in the cpu hierarchy, and in the memory one
/// where it can be written). Removed when dropped, unless only opened.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    cpu: PathBuf,
    memory: Option<PathBuf>,
    /// Made by this handle (removed on drop) rather than opened.
    made: bool,
}

/// The cgroup name of a lab replica: under this lab process' own group,
/// so one directory holds the replicas of one lab (what the agent reads).
pub fn replica_group(replica: &str) -> String {
    format!("{}/{replica}", std::process::id())
}

/// The directory (cpu hierarchy) holding this lab's replica groups.
pub fn lab_dir() -> Result<PathBuf, CgroupError> {
    let id = std::process::id().to_string();
    Ok(match detect()? {
        Version::V2 => Path::new(ROOT).join(PARENT).join(id),
        Version::V1 => Path::new(ROOT).join("cpu").join(PARENT).join(id),
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Which cgroup version `/sys/fs/cgroup` is, with its cpu controller.
pub fn detect() -> Result<Version, CgroupError> {
    let root = Path::new(ROOT);
    if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
        return if controllers.split_whitespace().any(|c| c == "cpu") {
            Ok(Version::V2)
        } else {
            Err(CgroupError::NoCpuController(format!(
                "cgroup v2 without cpu among its controllers: {}",
                controllers.trim()
            )))
        };
    }
    if root.join("cpu/cpu.cfs_quota_us").exists() {
        return Ok(Version::V1);
    }
    Err(CgroupError::NoCpuController(
        "neither cgroup.controllers (v2) nor cpu/cpu.cfs_quota_us (v1) found".into(),
    ))
}

/// Creates `dir` (and its parents); with v2, enables the controllers the
/// lab uses for the children of every level on the way.
fn make_dir(dir: &Path, version: Version) -> Result<(), CgroupError> {
    if version == Version::V2 {
        if let Some(parent) = dir.parent() {
            // Best effort: the parent may already delegate them.
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
        }
    }
    fs::create_dir_all(dir).map_err(|source| CgroupError::Write {
        path: dir.to_owned(),
        source,
    })
}

impl Cgroup {
    /// Creates the lab's cgroup `name` (an existing one is reused).
    pub fn create(name: &str) -> Result<Cgroup, CgroupError> {
        let version = detect()?;
        let (cpu, memory) = match version {
            Version::V2 => {
                let parent = Path::new(ROOT).join(PARENT);
                make_dir(&parent, version)?;
                let dir = parent.join(name);
                make_dir(&dir, version)?;
                let memory = dir.join("memory.max").exists().then(|| dir.clone());
                (dir, memory)
            }
            Version::V1 => {
                let dir = Path::new(ROOT).join("cpu").join(PARENT).join(name);
                make_dir(&dir, version)?;
                let mem = Path::new(ROOT).join("memory").join(PARENT).join(name);
                let memory = make_dir(&mem, version)
                    .ok()
                    .filter(|_| mem.join("memory.limit_in_bytes").exists())
                    .map(|_| mem);
                (dir, memory)
            }
        };
        Ok(Cgroup {
            version,
            cpu,
            memory,
            made: true,
        })
    }

    /// The lab's existing cgroup `name`, to change its limits without
    /// owning it (it is not removed when the handle drops).
    pub fn open(name: &str) -> Result<Cgroup, CgroupError> {
        let mut g = Cgroup::create(name)?;
        g.made = false;
        Ok(g)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Limits the group to `cores` CPUs: a quota of `cores × period` per
    /// 100 ms period, as kubelet writes `limits.cpu`.
    pub fn set_cpu(&self, cores: f64) -> Result<(), CgroupError> {
        if !(cores.is_finite() && cores > 0.0) {
            return Err(CgroupError::BadCores(cores));
        }
        let quota = ((cores * PERIOD_US as f64).round() as u64).max(MIN_QUOTA_US);
        match self.version {
            Version::V2 => write(&self.cpu.join("cpu.max"), &format!("{quota} {PERIOD_US}")),
            Version::V1 => {
                write(&self.cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&self.cpu.join("cpu.cfs_quota_us"), &quota.to_string())
            }
        }
    }

    /// Removes the CPU limit.
    pub fn clear_cpu(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V2 => write(&self.cpu.join("cpu.max"), &format!("max {PERIOD_US}")),
            Version::V1 => write(&self.cpu.join("cpu.cfs_quota_us"), "-1"),
        }
    }

    /// Limits memory to `bytes`; `Ok(false)` when the memory controller
    /// cannot be written here (memory is then judged on the working set).
    pub fn set_memory(&self, bytes: u64) -> Result<bool, CgroupError> {
        let Some(dir) = &self.memory else {
            return Ok(false);
        };
        match self.version {
            Version::V2 => write(&dir.join("memory.max"), &bytes.to_string())?,
            Version::V1 => write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?,
        }
        Ok(true)
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        write(&self.cpu.join("cgroup.procs"), &pid.to_string())?;
        if let (Some(dir), Version::V1) = (&self.memory, self.version) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The quota in force, cores (`None`: unlimited), read as the agent
    /// reads a replica's group.
    pub fn cpu_limit(&self) -> Option<f64> {
        meshtune_agent::data::usage::quota_cores(&self.cpu)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.made {
            return;
        }
        // Only an empty group can be removed: the lab stops its processes
        // first; a group left behind is reused by the next run.
        let _ = fs::remove_dir(&self.cpu);
        if let Some(m) = &self.memory {
            if m != &self.cpu {
                let _ = fs::remove_dir(m);
            }
        }
    }
}
