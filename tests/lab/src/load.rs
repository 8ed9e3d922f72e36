//! Load for the lab: closed loops with exact request counts for tests, and
//! an open loop that follows a trace for the quick start.

use crate::http::{client, get};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Outcome {
    pub request_id: String,
    pub path: String,
    pub status: u16,
    pub latency: Duration,
}

/// Sends every path in `plan` once (request ids `{prefix}-{index}`), with
/// `concurrency` requests in flight, and measures each at the client.
pub async fn closed_loop(
    port: u16,
    plan: Vec<String>,
    concurrency: usize,
    prefix: &str,
) -> Vec<Outcome> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (plan, next, prefix) = (plan.clone(), next.clone(), prefix.to_owned());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(path) = plan.get(i) else { break };
                let rid = format!("{prefix}-{i}");
                let start = Instant::now();
                let res = get(
                    &c,
                    &format!("http://127.0.0.1:{port}{path}"),
                    &[("x-request-id", &rid)],
                )
                .await;
                let latency = start.elapsed();
                out.push(Outcome {
                    request_id: rid,
                    path: path.clone(),
                    status: res.map(|r| r.0).unwrap_or(0),
                    latency,
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(v) = w.await {
            all.extend(v);
        }
    }
    all
}

/// What an open-loop run sent and how it was answered.
#[derive(Debug, Default, Clone)]
pub struct OpenLoopOutcome {
    pub sent: u64,
    pub ok: u64,
    /// Requests not answered 200, by what happened: the status, with the
    /// `x-meshtune-reason` of a reply meshtune made itself, or the error.
    pub failed: std::collections::BTreeMap<String, u64>,
}

/// One request of an open-loop run, as the client saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent, seconds from the run's start.
    pub at_s: f64,
    /// The step of `rates` it was sent in (a trace minute).
    pub step: usize,
    pub path: String,
    /// 0: no response (connection failed, or the client gave up).
    pub status: u16,
    pub latency_ms: f64,
    /// For a request not answered 200: what happened (the status, with
    /// meshtune's reason for a reply it made itself, or the error).
    pub failure: Option<String>,
}

/// How long the load generator waits for an answer before it counts the
/// request as timed out (a user's browser gives up too).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn open_loop(
    port: u16,
    rates: &[f64],
    step: Duration,
    paths: &[(&str, u32)],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> OpenLoopOutcome {
    let records = open_loop_recorded(port, rates, step, paths, stop).await;
    let mut out = OpenLoopOutcome::default();
    for r in records {
        out.sent += 1;
        match r.failure {
            None => out.ok += 1,
            Some(what) => *out.failed.entry(what).or_insert(0) += 1,
        }
    }
    out
}

/// Follows `rates` (requests per second, one entry per `step`), choosing
/// paths round-robin by weight, and records every request.
pub async fn open_loop_recorded(
    port: u16,
    rates: &[f64],
    step: Duration,
    paths: &[(&str, u32)],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<Record> {
    let c = client();
    let wheel: Vec<&str> = paths
        .iter()
        .flat_map(|(p, w)| std::iter::repeat_n(*p, *w as usize))
        .collect();
    let mut n: usize = 0;
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut records = Vec::new();
    for (step_index, rate) in rates.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        let step_end = Instant::now() + step;
        let count = (rate * step.as_secs_f64()).round() as u64;
        let gap = if count > 0 { step / count as u32 } else { step };
        for _ in 0..count {
            let path = wheel
                .get(n % wheel.len().max(1))
                .copied()
                .unwrap_or("/productpage")
                .to_owned();
            n += 1;
            let c = c.clone();
            let url = format!("http://127.0.0.1:{port}{path}");
            in_flight.spawn(async move {
                let sent = Instant::now();
                let at_s = sent.duration_since(start).as_secs_f64();
                let res = tokio::time::timeout(CLIENT_TIMEOUT, get(&c, &url, &[])).await;
                let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
                let (status, failure) = match res {
                    Ok(Ok((200, _))) => (200, None),
                    Ok(Ok((status, body))) => {
                        // meshtune's own replies say why in their body.
                        let text = String::from_utf8_lossy(&body);
                        let what = match text.strip_prefix("meshtune: ") {
                            Some(_) if status == 504 => {
                                format!("{status} (meshtune: deadline exceeded)")
                            }
                            Some(_) => format!("{status} (meshtune: shed)"),
                            None => status.to_string(),
                        };
                        (status, Some(what))
                    }
                    Ok(Err(_)) => (0, Some("no response".to_string())),
                    Err(_) => (0, Some("client timeout".to_string())),
                };
                Record {
                    at_s,
                    step: step_index,
                    path,
                    status,
                    latency_ms,
                    failure,
                }
            });
            tokio::time::sleep(gap).await;
        }
        // Collect what finished so the set stays small on long runs.
        while let Some(r) = in_flight.try_join_next() {
            records.extend(r.ok());
        }
        tokio::time::sleep_until(step_end.into()).await;
    }
    // Requests still in flight count once they are answered.
    while let Some(r) = in_flight.join_next().await {
        records.extend(r.ok());
    }
    records.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    records
}
