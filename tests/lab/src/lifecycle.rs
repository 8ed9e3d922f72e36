//! Every process the lab starts ends with it, however the lab ends.
//!
//! Children (Envoys, Prometheus) are adopted when spawned and released
//! when their owner stops them. SIGTERM or SIGINT first asks the running
//! command to stop (the quick start prints its totals); a command not
//! listening, a second signal, or no stop within [`GRACE`], ends every
//! adopted child and exits. A panic ends them too (release builds abort
//! on panic, so no destructor would run).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a command has to stop by itself after the first signal.
pub const GRACE: Duration = Duration::from_secs(15);

static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static STOP: OnceLock<watch::Sender<bool>> = OnceLock::new();
static LISTENING: AtomicBool = AtomicBool::new(false);

fn children() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    match CHILDREN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Remembers a child to end with the lab.
pub fn adopt(pid: u32) {
    children().insert(pid);
}

/// Forgets a child its owner has stopped.
pub fn release(pid: u32) {
    children().remove(&pid);
}

fn alive(pid: u32) -> bool {
    // A zombie has no /proc/PID/stat state other than Z; it holds no ports.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Asks every adopted child to stop (SIGTERM), waits up to two seconds,
/// then kills those left (SIGKILL).
pub fn end_children() {
    let pids: Vec<u32> = children().iter().copied().collect();
    for &pid in &pids {
        // SAFETY: kill(2) with a pid the lab spawned and a valid signal.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in &pids {
        if alive(pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    children().clear();
}

/// Ends the children when the lab panics, then runs the previous hook.
pub fn end_children_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        end_children();
        previous(info);
    }));
}

/// A receiver that turns true when the lab is asked to stop; the command
/// holding it gets [`GRACE`] to stop by itself.
pub fn stop_requested() -> watch::Receiver<bool> {
    LISTENING.store(true, Ordering::SeqCst);
    STOP.get_or_init(|| watch::channel(false).0).subscribe()
}

/// Follows SIGTERM and SIGINT for the whole run (spawn it first thing).
pub async fn follow_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let code = tokio::select! {
        _ = term.recv() => 143,
        _ = int.recv() => 130,
    };
    let stop = STOP.get_or_init(|| watch::channel(false).0);
    if LISTENING.load(Ordering::SeqCst) {
        let _ = stop.send(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = tokio::time::sleep(GRACE) => {}
        }
    }
    eprintln!("meshtune-lab: stopping its processes");
    end_children();
    std::process::exit(code);
}
