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

/// Follows `rates` (requests per second, one entry per `step`), choosing
/// paths round-robin by weight; returns (sent, succeeded).
/// What an open-loop run sent and how it was answered.
#[derive(Debug, Default, Clone)]
pub struct OpenLoopOutcome {
    pub sent: u64,
    pub ok: u64,
    /// Requests not answered 200, by what happened: the status, with the
    /// `x-meshtune-reason` of a reply meshtune made itself, or the error.
    pub failed: std::collections::BTreeMap<String, u64>,
}

pub async fn open_loop(
    port: u16,
    rates: &[f64],
    step: Duration,
    paths: &[(&str, u32)],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> OpenLoopOutcome {
    let c = client();
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let wheel: Vec<&str> = paths
        .iter()
        .flat_map(|(p, w)| std::iter::repeat_n(*p, *w as usize))
        .collect();
    let mut n: usize = 0;
    let mut in_flight = tokio::task::JoinSet::new();
    for rate in rates {
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
                .unwrap_or("/productpage");
            n += 1;
            let (c, sent, ok, failed) = (c.clone(), sent.clone(), ok.clone(), failed.clone());
            let url = format!("http://127.0.0.1:{port}{path}");
            sent.fetch_add(1, Ordering::Relaxed);
            in_flight.spawn(async move {
                let what = match get(&c, &url, &[]).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok((status, body)) => {
                        // meshtune's own replies say why in their body.
                        let text = String::from_utf8_lossy(&body);
                        match text.strip_prefix("meshtune: ") {
                            Some(_) if status == 504 => {
                                format!("{status} (meshtune: deadline exceeded)")
                            }
                            Some(_) => format!("{status} (meshtune: shed)"),
                            None => status.to_string(),
                        }
                    }
                    Err(_) => "no response".to_string(),
                };
                if let Ok(mut f) = failed.lock() {
                    *f.entry(what).or_insert(0) += 1;
                }
            });
            tokio::time::sleep(gap).await;
        }
        // Reap what finished so the set stays small on long runs.
        while in_flight.try_join_next().is_some() {}
        tokio::time::sleep_until(step_end.into()).await;
    }
    // Requests still in flight count once they are answered.
    while in_flight.join_next().await.is_some() {}
    let failed = match failed.lock() {
        Ok(f) => f.clone(),
        Err(p) => p.into_inner().clone(),
    };
    OpenLoopOutcome {
        sent: sent.load(Ordering::Relaxed),
        ok: ok.load(Ordering::Relaxed),
        failed,
    }
}
