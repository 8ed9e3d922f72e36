//! A real Prometheus server (Debian package `prometheus`) scraping targets
//! on loopback, for tests and the quick start.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str = "install it with `apt-get install -y prometheus` (or run `bash scripts/setup.sh`), or set MESHTUNE_PROMETHEUS";

pub fn find_prometheus() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MESHTUNE_PROMETHEUS") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("Prometheus server not found; {INSTALL_HINT}")
}

pub struct Prometheus {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port, path /metrics) every second.
    pub fn start(targets: &[(String, String)]) -> anyhow::Result<Prometheus> {
        let bin = find_prometheus()?;
        let dir = tempfile::Builder::new()
            .prefix("meshtune-prom-")
            .tempdir()?;
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let data = dir.path().join("data");
        Self::launch(&bin, dir, &cfg, &data)
    }

    /// Runs `bin` with the configuration `cfg` and the TSDB at `data`
    /// (the files live in `dir`) until it is ready.
    fn launch(
        bin: &Path,
        dir: tempfile::TempDir,
        cfg: &str,
        data: &Path,
    ) -> anyhow::Result<Prometheus> {
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, cfg)?;
        let port = crate::mesh::free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        crate::lifecycle::adopt(child.id());
        let p = Prometheus {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if crate::http::get_blocking(port, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("prometheus did not become ready on port {port}")
    }

    /// Starts Prometheus on the series in `openmetrics` (OpenMetrics text
    /// with timestamps), backfilled with `promtool tsdb
    /// create-blocks-from openmetrics` as a user would import history;
    /// nothing is scraped.
    pub fn start_backfilled(openmetrics: &str) -> anyhow::Result<Prometheus> {
        let bin = find_prometheus()?;
        let promtool = bin.with_file_name("promtool");
        if !promtool.is_file() {
            bail!(
                "promtool not found beside {}; {INSTALL_HINT}",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("meshtune-prom-")
            .tempdir()?;
        let fixture = dir.path().join("series.om");
        std::fs::write(&fixture, openmetrics)?;
        let data = dir.path().join("data");
        let out = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&fixture)
            .arg(&data)
            .output()
            .with_context(|| format!("running {}", promtool.display()))?;
        if !out.status.success() {
            bail!(
                "promtool could not backfill: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::launch(&bin, dir, "global:\n  scrape_interval: 15s\n", &data)
    }

    /// Runs an instant query through the HTTP API and returns `data.result`.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let enc: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) =
            crate::http::get_blocking(self.port, &format!("/api/v1/query?query={enc}"))
                .context("querying prometheus")?;
        if status != 200 {
            bail!("prometheus answered {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::lifecycle::release(self.child.id());
    }
}
