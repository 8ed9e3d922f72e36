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

/// Every replica name of `services`, in order.
pub fn replica_names(services: &[ServiceSpec]) -> Vec<String> {
    services
        .iter()
        .flat_map(|s| (0..s.replicas.len()).map(|i| replica_name(s.name, i)))
        .collect()
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
    /// Its CPU limit, once one is set (kept across restarts, as a pod's
    /// `resources` outlive its containers).
    cpu_group: Option<crate::cgroup::Cgroup>,
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
            cpu_group: None,
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
        // Adopted below: it ends with the lab (no PR_SET_PDEATHSIG, which
        // fires when the spawning thread ends, a pool thread here).
        let child = c
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} replica {}", exe.display(), self.name))?;
        crate::lifecycle::adopt(child.id());
        if let Some(g) = &self.cpu_group {
            g.add_process(child.id())?;
        }
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

    /// Limits it to `cores` CPUs (a CFS quota, as kubelet enforces
    /// `limits.cpu`); `None` lifts the limit.
    pub fn limit_cpu(&mut self, cores: Option<f64>) -> anyhow::Result<()> {
        if self.cpu_group.is_none() {
            if cores.is_none() {
                return Ok(());
            }
            self.join_cgroup()?;
        }
        if let Some(g) = &self.cpu_group {
            match cores {
                Some(c) => g.set_cpu(c)?,
                None => g.clear_cpu()?,
            }
        }
        Ok(())
    }

    /// Puts it in its own cgroup (no limit yet), where the lab's control
    /// plane applies the resources of its Deployment and the agent reads
    /// its CPU and memory.
    pub fn join_cgroup(&mut self) -> anyhow::Result<()> {
        if self.cpu_group.is_none() {
            let g = crate::cgroup::Cgroup::create(&crate::cgroup::replica_group(&self.name))?;
            if let Some(pid) = self.pid() {
                g.add_process(pid)?;
            }
            self.cpu_group = Some(g);
        }
        Ok(())
    }

    /// The CPU limit in force, cores (`None`: unlimited).
    pub fn cpu_limit(&self) -> Option<f64> {
        self.cpu_group.as_ref().and_then(|g| g.cpu_limit())
    }

    /// CPU seconds it has used since it (last) started.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::proc::cpu_seconds(self.pid()?)
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
pub async fn run(
    spec_json: String,
    app_port: u16,
    outbound_port: Option<u16>,
) -> anyhow::Result<()> {
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

/// The agent's clock on trace time: one trace minute per
/// `seconds_per_minute` wall seconds from `origin_ms` (Unix ms), the same
/// for every start of the run's agent (`meshtune_agent::clock`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceTime {
    pub origin_ms: u64,
    pub seconds_per_minute: f64,
}

impl TraceTime {
    /// Trace time starting now.
    pub fn from_now(seconds_per_minute: f64) -> Self {
        TraceTime {
            origin_ms: meshtune_agent::clock::wall_ms(),
            seconds_per_minute,
        }
    }
}

/// The lab's agent as its own process (`meshtune-lab agent`): the agent
/// library's server and, when it tunes, its directory sink in apply mode.
pub struct AgentProcess {
    pub port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// Starts the agent with `config` (YAML file); `sink_dir` when it tunes,
    /// `also_read`: the user's directory it sees as the cluster's;
    /// `trace_time`: the agent's clock runs on trace time.
    pub fn start(
        dir: &Path,
        config: &Path,
        port: u16,
        sink_dir: Option<&Path>,
        also_read: Option<&Path>,
        trace_time: Option<TraceTime>,
    ) -> anyhow::Result<AgentProcess> {
        let mut args = vec![
            "agent".to_owned(),
            "--config".into(),
            config.display().to_string(),
        ];
        if let Some(d) = sink_dir {
            args.extend(["--sink-dir".into(), d.display().to_string()]);
        }
        if let Some(d) = also_read {
            args.extend(["--also-read".into(), d.display().to_string()]);
        }
        if let Some(t) = trace_time {
            args.extend([
                "--seconds-per-minute".into(),
                t.seconds_per_minute.to_string(),
                "--trace-origin-ms".into(),
                t.origin_ms.to_string(),
            ]);
        }
        let mut a = AgentProcess {
            port,
            args,
            log_path: dir.join("agent.log"),
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let exe = lab_exe()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut c = Command::new(&exe);
        c.args(&self.args);
        let child = c
            .env(
                "MESHTUNE_LOG",
                std::env::var("MESHTUNE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} agent", exe.display()))?;
        crate::lifecycle::adopt(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                bail!("the agent exited with {status}: {log}");
            }
            if crate::http::get_blocking(self.port, "/healthz").is_some_and(|(s, _)| s == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not answer in 30 s; see {}",
                    self.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal_and_wait(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the child we spawned.
            unsafe { libc::kill(c.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            crate::lifecycle::release(c.id());
        }
    }

    /// Stops it as Kubernetes stops a pod (SIGTERM: it saves its state).
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGTERM);
    }

    /// Kills it (`-9`): nothing saved beyond its last periodic write.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Starts it again with the same arguments (its store is reopened).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of `meshtune-lab agent`.
pub async fn run_agent(
    config: PathBuf,
    sink_dir: Option<PathBuf>,
    also_read: Option<PathBuf>,
    trace_time: Option<TraceTime>,
) -> anyhow::Result<()> {
    if let Some(t) = trace_time {
        meshtune_agent::clock::run_on_trace_time(meshtune_agent::clock::TraceClock::try_new(
            t.origin_ms,
            t.seconds_per_minute,
        )?)?;
    }
    let yaml = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let cfg = meshtune_agent::AgentConfig::parse(&yaml, &config.display().to_string())?;
    let listen = cfg.listen;
    let agent = meshtune_agent::Agent::open(cfg, meshtune_agent::now_secs())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
        }
        let _ = tx.send(true);
    });
    if let Some(d) = sink_dir {
        let sink = meshtune_agent::write::dir::DirSink::new(&d)?
            .also_reading(also_read.into_iter().collect())
            .resizing_in_place(agent.config.resources.in_place_resize);
        tokio::spawn(meshtune_agent::app::tuner::run_local(
            agent.clone(),
            sink,
            rx.clone(),
        ));
    }
    meshtune_agent::app::serve(agent, listener, rx).await?;
    Ok(())
}
