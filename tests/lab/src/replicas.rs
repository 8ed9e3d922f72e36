//! Service replicas as processes, as pods are: `meshtune-lab replica` runs
//! one replica of one service, so it can be killed, limited by a cgroup and
//! have its CPU read from `/proc`. The lab starts them with [`Replica::start`]
//! and ends them with itself.

use crate::services::{self, Burner, Fault, ReplicaDef, ServiceSpec, StatsSnapshot};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `meshtune-lab` binary: `MESHTUNE_LAB_EXE`, this program when it is
/// the lab, or the lab beside a test binary (tests run from `deps/`, the
/// binary Cargo builds for them is one directory up).
pub fn lab_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHTUNE_LAB_EXE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("finding this program")?;
    if me
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == "meshtune-lab")
    {
        return Ok(me);
    }
    let dir = me.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join("meshtune-lab"), dir.join("../meshtune-lab")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the meshtune-lab binary is not beside {}; build it with `cargo build -p meshtune-lab` or set MESHTUNE_LAB_EXE",
        me.display()
    )
}

/// The name of replica `index` of `service`: the first keeps the service's
/// name (so one-replica labs look as before), the others are `SERVICE-N`.
pub fn replica_name(service: &str, index: usize) -> String {
    if index == 0 {
        service.to_owned()
    } else {
        format!("{service}-{}", index + 1)
    }
}

/// A running replica process.
pub struct Replica {
    pub name: String,
    pub service: &'static str,
    pub def: ReplicaDef,
    pub app_port: u16,
    spec_json: String,
    outbound_port: Option<u16>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Starts replica `index` of `spec` serving on `app_port`, calling its
    /// dependencies through `outbound_port`; returns once it answers.
    pub fn start(
        dir: &Path,
        spec: &ServiceSpec,
        index: usize,
        app_port: u16,
        outbound_port: Option<u16>,
    ) -> anyhow::Result<Replica> {
        let def = spec
            .replicas
            .get(index)
            .cloned()
            .with_context(|| format!("{} has no replica {index}", spec.name))?;
        let name = replica_name(spec.name, index);
        let mut r = Replica {
            log_path: dir.join(format!("{name}.app.log")),
            name,
            service: spec.name,
            def,
            app_port,
            spec_json: serde_json::to_string(spec)?,
            outbound_port,
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let exe = lab_exe()?;
        let log = std::fs::File::create(&self.log_path)?;
        let mut c = Command::new(&exe);
        c.arg("replica")
            .args(["--spec", &self.spec_json])
            .args(["--app-port", &self.app_port.to_string()]);
        if let Some(p) = self.outbound_port {
            c.args(["--outbound-port", &p.to_string()]);
        }
        // The replica dies with the lab even when the lab is killed.
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs here.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} replica {}", exe.display(), self.name))?;
        crate::lifecycle::adopt(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                bail!("replica {} exited with {status}: {log}", self.name);
            }
            if self.stats().is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "replica {} did not answer in 20 s; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (a killed replica is not).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// What it saw; `None` when it is down.
    pub fn stats(&self) -> Option<StatsSnapshot> {
        let (status, body) = crate::http::get_blocking(self.app_port, "/lab/stats")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Sets (or, with the default, clears) its fault.
    pub fn set_fault(&self, f: Fault) -> anyhow::Result<()> {
        let path = format!(
            "/lab/fault?slow={}&error_share={}&status={}",
            f.slow, f.error_share, f.status
        );
        match crate::http::request_blocking(self.app_port, "PUT", &path, &[], b"") {
            Some((200, _)) => Ok(()),
            other => bail!("replica {}: setting its fault: {other:?}", self.name),
        }
    }

    /// Kills it (`-9`, as a crashed pod); its sidecar stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            crate::lifecycle::release(c.id());
        }
    }

    /// Starts it again on the same ports after [`Replica::kill`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of `meshtune-lab replica`: serves one replica until killed.
pub async fn run(spec_json: String, app_port: u16, outbound_port: Option<u16>) -> anyhow::Result<()> {
    // The names in a spec live as long as the process.
    let leaked: &'static str = Box::leak(spec_json.into_boxed_str());
    let spec: ServiceSpec = serde_json::from_str(leaked).context("--spec: not a service spec")?;
    let burner = Burner::calibrate();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{app_port}"))?;
    let (task, _) = services::spawn(spec, listener, outbound_port, burner);
    task.await.context("the replica's server stopped")?;
    Ok(())
}
