//! The lab's CPU actuator really limits CPU: a busy loop under a 0.2-core
//! quota uses about 0.2 of a core, and about a whole one when the quota is
//! raised to 1 (what kubelet's `limits.cpu` does to a container). Needs
//! root and a writable cpu controller; without them it fails naming the fix.

use meshtune_lab::cgroup::Cgroup;
use meshtune_lab::proc::cpu_seconds as process_cpu_seconds;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Busy(Child);
impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cores the process used over `span` of wall time.
fn cores_used(pid: u32, span: Duration) -> f64 {
    let (t0, c0) = (
        Instant::now(),
        process_cpu_seconds(pid).expect("/proc stat"),
    );
    std::thread::sleep(span);
    let c1 = process_cpu_seconds(pid).expect("/proc stat");
    (c1 - c0) / t0.elapsed().as_secs_f64()
}

#[test]
fn a_busy_loop_gets_the_cpu_its_quota_allows() {
    let group = Cgroup::create("quota-test").unwrap_or_else(|e| panic!("{e}"));
    group.set_cpu(0.2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(group.cpu_limit(), Some(0.2));
    let busy = Busy(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh"),
    );
    let pid = busy.0.id();
    group.add_process(pid).unwrap_or_else(|e| panic!("{e}"));
    let limited = cores_used(pid, Duration::from_secs(3));
    assert!(
        (0.1..=0.3).contains(&limited),
        "under a 0.2-core quota the loop used {limited:.2} cores"
    );
    group.set_cpu(1.0).unwrap_or_else(|e| panic!("{e}"));
    let raised = cores_used(pid, Duration::from_secs(3));
    println!("busy loop: {limited:.3} cores under 0.2, {raised:.3} under 1.0");
    assert!(
        raised > 0.6 && raised > 2.5 * limited,
        "under a 1-core quota the loop used {raised:.2} cores (0.2-core quota: {limited:.2})"
    );
    group.clear_cpu().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(group.cpu_limit(), None);
    drop(busy);
}

#[test]
fn a_bad_limit_is_refused() {
    let group = Cgroup::create("quota-test-bad").unwrap_or_else(|e| panic!("{e}"));
    let err = group.set_cpu(-1.0).expect_err("negative cores");
    assert!(err.to_string().contains("-1"), "{err}");
}
