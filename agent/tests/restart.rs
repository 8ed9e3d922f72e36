//! The agent binary across restarts: `kill -9` loses at most the last
//! persistence interval and counts nothing twice; SIGTERM flushes; an
//! unreadable store is moved aside and reported.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_filter_core::builders;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 exchange, enough for the agent's API.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    http_with_token(port, method, path, body, "tok")
}

fn http_with_token(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    token: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: agent\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn start(dir: &Path, port: u16) -> Child {
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nauth:\n  token: tok\ndata_dir: {}\npersist_interval_seconds: 0.2\nchains:\n  product:\n    slo_ms: 100\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshtune-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(
                dir.join(format!("agent-{}.log", Instant::now().elapsed().as_nanos())),
            )
            .unwrap(),
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if http(port, "GET", "/readyz", b"").is_some_and(|(s, _)| s == 200) {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("agent did not become ready on port {port}");
}

fn report(vm: &str, seq: u64, n: u64) -> Vec<u8> {
    let latencies: Vec<u64> = (0..n).map(|i| 1 + i % 3).collect();
    let record = builders::record("product", "productpage", &latencies).at_entry();
    serde_json::to_vec(&builders::report(vm, seq, vec![record])).unwrap()
}

fn product_requests(port: u16) -> u64 {
    let (_, body) = http(port, "GET", "/v1/chains", b"").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == "product")
        .unwrap()["requests"]
        .as_u64()
        .unwrap()
}

#[test]
fn kill_9_loses_at_most_the_last_interval_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(dir.path(), port);
    for seq in 1..=5 {
        assert_eq!(
            http(port, "POST", "/v1/reports", &report("vm-a", seq, 10))
                .unwrap()
                .0,
            200
        );
    }
    // Everything above is on disk once a persist has started after the last
    // report: two more completed persists (the first may have begun before it).
    let after_reports = persists(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while persists(port) < after_reports + 2 {
        assert!(Instant::now() < deadline, "no persist within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill().unwrap();
    agent.wait().unwrap();

    let mut agent = start(dir.path(), port);
    assert_eq!(product_requests(port), 50);
    // Replays of counted reports are recognised after the restart.
    for seq in 1..=5 {
        let (status, body) = http(port, "POST", "/v1/reports", &report("vm-a", seq, 10)).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("duplicate"), "{body}");
    }
    assert_eq!(
        http(port, "POST", "/v1/reports", &report("vm-a", 6, 7))
            .unwrap()
            .0,
        200
    );
    assert_eq!(product_requests(port), 57);

    // SIGTERM flushes at once, whatever the interval.
    sigterm(&agent);
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent exit: {status:?}");
    let mut agent = start(dir.path(), port);
    assert_eq!(product_requests(port), 57);
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// Completed writes of the history store, from the agent's metrics.
fn persists(port: u16) -> u64 {
    let (_, body) = http(port, "GET", "/metrics", b"").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("meshtune_store_persists_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap() as u64
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn an_unreadable_store_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/meshtune.redb"), vec![0xAB; 4096]).unwrap();
    let port = free_port();
    let mut agent = start(dir.path(), port);
    let aside: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("meshtune.redb.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept for inspection");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0xAB; 4096]);
    let (_, metrics) = http(port, "GET", "/metrics", b"").unwrap();
    assert!(
        metrics.contains("meshtune_store_recovered_total 1"),
        "{metrics}"
    );
    assert_eq!(
        http(port, "POST", "/v1/reports", &report("vm", 1, 3))
            .unwrap()
            .0,
        200
    );
    assert_eq!(product_requests(port), 3);
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn every_rejection_reason_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(dir.path(), port);
    let good = report("vm", 1, 2);
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (good.clone(), "nope", 401, "unauthorized"),
        (b"{oops".to_vec(), "tok", 400, "bad_json"),
        (
            br#"{"schema_version": 9}"#.to_vec(),
            "tok",
            400,
            "unsupported_schema_version",
        ),
        (
            br#"{"schema_version": 2, "records": 3}"#.to_vec(),
            "tok",
            422,
            "invalid_report",
        ),
    ];
    for (body, token, status, reason) in cases {
        let (got, text) = http_with_token(port, "POST", "/v1/reports", &body, token).unwrap();
        assert_eq!(got, status, "{reason}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], reason);
    }
    // Oversize: the declared length alone is refused, before any body is read.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nhost: agent\r\nauthorization: Bearer tok\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        (1 << 20) + 1
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"too_large\""), "{out}");
    assert_eq!(product_requests(port), 0, "rejected reports change nothing");
    let (_, metrics) = http(port, "GET", "/metrics", b"").unwrap();
    for reason in [
        "unauthorized",
        "bad_json",
        "unsupported_schema_version",
        "too_large",
        "invalid_report",
    ] {
        assert!(
            metrics.contains(&format!(
                "meshtune_reports_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}
