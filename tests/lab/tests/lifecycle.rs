//! `meshtune-lab up` ends every process it started, however it is stopped:
//! SIGTERM (as `timeout`, CI or a service manager stop it), SIGINT
//! (Ctrl-C) or a panic. The lab runs in a process group of its own; after
//! it exits, no process of that group may remain.
//!
//! Needs Envoy, the built filter and Prometheus, like the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Pids of the live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state, ppid, pgrp
        if f.len() > 2 && f[0] != "Z" && f[2].parse::<i32>().ok() == Some(pgid) {
            out.push((pid, name.split('(').nth(1).unwrap_or("").to_string()));
        }
    }
    out
}

/// Starts `meshtune-lab up` in its own process group and waits until the
/// mesh serves (the addresses are printed), returning its output so far.
fn start_lab(extra_env: &[(&str, &str)]) -> (Child, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtune-lab"));
    cmd.args(["up", "--duration", "0"])
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("meshtune-lab runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let up = l.starts_with("agent chains view");
                lines.push(l);
                if up {
                    // Let it settle into its loop (load started, view printing).
                    std::thread::sleep(Duration::from_secs(2));
                    return (child, lines);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(s)) = child.try_wait() {
                    panic!("meshtune-lab exited with {s} before it was up: {lines:?} (needs Envoy, the filter and Prometheus: bash scripts/setup.sh)");
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("meshtune-lab did not come up within 120 s: {lines:?}");
}

/// Waits for `child` to exit, then for its group to empty.
fn assert_nothing_left(mut child: Child, how: &str) {
    let pgid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{how}: the lab did not exit within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Children are ended before the lab exits: nothing may be left now.
    let left = group_members(pgid);
    if !left.is_empty() {
        // SAFETY: cleaning up after a failed assertion, our own group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    assert!(
        left.is_empty(),
        "{how}: processes of the lab's group survived it: {left:?}"
    );
}

#[test]
fn sigterm_sigint_and_a_panic_leave_no_process_behind() {
    for (signal, how) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let (child, _) = start_lab(&[]);
        let pgid = child.id() as i32;
        let members = group_members(pgid);
        let count = |name: &str| members.iter().filter(|(_, n)| n == name).count();
        assert_eq!(
            count("envoy"),
            6,
            "{how}: the lab runs six sidecars in its group: {members:?}"
        );
        // The lab itself, six replicas and the agent.
        assert_eq!(
            count("meshtune-lab"),
            8,
            "{how}: replicas and agent are processes: {members:?}"
        );
        // SAFETY: signalling the lab we started.
        unsafe { libc::kill(pgid, signal) };
        assert_nothing_left(child, how);
    }
    let (child, _) = start_lab(&[("MESHTUNE_LAB_PANIC_WHEN_UP", "1")]);
    assert_nothing_left(child, "a panic");
}
