//! Headless Chromium (Debian package `chromium`) loading a page on
//! loopback: the DOM after the page's scripts ran, every console message
//! it printed, and a screenshot.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const INSTALL_HINT: &str =
    "install it with `apt-get install -y chromium` (or run `bash scripts/setup.sh`), or set MESHTUNE_CHROMIUM";

pub fn find_chromium() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MESHTUNE_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("Chromium not found; {INSTALL_HINT}")
}

/// What the page showed and said.
#[derive(Debug)]
pub struct Loaded {
    /// The DOM once the page's scripts ran for the time budget.
    pub dom: String,
    /// Every `console.*` message and uncaught error, as Chromium logs them.
    pub console: Vec<String>,
}

/// Flags for a headless Chromium on a machine without internet: no
/// background connections (refused here, each one logged), a fresh profile.
fn command(bin: &Path, profile: &Path, budget: Duration) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    // Virtual time runs the page's timers and waits for its fetches.
    .arg(format!("--virtual-time-budget={}", budget.as_millis()));
    c
}

/// Loads `url` and returns its DOM and console messages.
pub fn load(url: &str, budget: Duration) -> anyhow::Result<Loaded> {
    let bin = find_chromium()?;
    let profile = tempfile::Builder::new()
        .prefix("meshtune-chromium-")
        .tempdir()?;
    let out = command(&bin, profile.path(), budget)
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "chromium exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Ok(Loaded {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    })
}

/// Writes a PNG screenshot of `url` (`width` × `height`) to `png`.
pub fn screenshot(
    url: &str,
    png: &Path,
    width: u32,
    height: u32,
    budget: Duration,
) -> anyhow::Result<()> {
    let bin = find_chromium()?;
    let profile = tempfile::Builder::new()
        .prefix("meshtune-chromium-")
        .tempdir()?;
    let out = command(&bin, profile.path(), budget)
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() || !png.is_file() {
        bail!(
            "chromium wrote no screenshot ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
