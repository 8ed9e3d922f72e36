//! Counting the instructions a process executes with valgrind's callgrind:
//! exact and repeatable where CPU time on a shared machine is not. Used by
//! `bench filter --instructions`.

use anyhow::Context;

/// valgrind's callgrind with instrumentation off until the measured rounds
/// start; `--smc-check` because V8 writes the filter's machine code at run
/// time; one count per thread, so the worker's can be told from the main
/// thread's timer work (stats flushes, admin), which under valgrind's
/// slowdown would fall on few requests and blur the comparison.
pub fn launcher(out: &std::path::Path) -> Vec<String> {
    [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--smc-check=all-non-file",
        "--separate-threads=yes",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--callgrind-out-file={}", out.display())])
    .collect()
}

/// Instructions the worker thread executed while instrumentation was on:
/// callgrind writes one file per thread (`OUT-01`, `OUT-02`, …); with one
/// worker serving every request, the worker's is the largest.
pub fn worker_total(out: &std::path::Path) -> anyhow::Result<u64> {
    let (dir, stem) = match (out.parent(), out.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, format!("{n}-")),
        _ => anyhow::bail!("bad callgrind output path {}", out.display()),
    };
    let mut best = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_thread = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&stem));
        if !is_thread {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading callgrind output {}", path.display()))?;
        let total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no `summary:` line in {}", path.display()))?;
        best = best.max(Some(total));
    }
    best.with_context(|| format!("no callgrind output {}*", out.display()))
}

fn require_tool(program: &str, args: &[&str]) -> anyhow::Result<()> {
    match std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "counting instructions needs `{program}` ({e}); install it with `bash scripts/setup.sh` or `sudo apt-get install -y valgrind`"
        ),
    }
}

/// Checks valgrind and callgrind_control are installed.
pub fn require() -> anyhow::Result<()> {
    require_tool("valgrind", &["--version"])?;
    require_tool("callgrind_control", &["-h"])
}

/// Switches counting on in the callgrind-run process `pid` (started with
/// counting off, so start-up and warm-up are left out).
pub fn start_counting(pid: u32) -> anyhow::Result<()> {
    let ok = std::process::Command::new("callgrind_control")
        .args(["--instr=on", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?
        .success();
    anyhow::ensure!(ok, "callgrind_control --instr=on {pid} failed");
    Ok(())
}
