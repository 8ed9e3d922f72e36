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

/// How requests are spread within a step of the open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// `rate × step` requests evenly spaced (a replayed trace's count, no
    /// burst within the step).
    Even,
    /// Exponential gaps at the step's rate from a generator seeded with
    /// this (many independent users: bursts as a Poisson process has them).
    Poisson(u64),
}

impl Arrivals {
    pub fn name(self) -> &'static str {
        match self {
            Arrivals::Even => "even",
            Arrivals::Poisson(_) => "poisson",
        }
    }
}

/// A seeded generator of uniforms in (0, 1) (a 64-bit LCG's high bits).
pub(crate) fn uniforms(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// When each request of a step leaves, as offsets from the step's start.
fn due_times(
    rate: f64,
    step: Duration,
    arrivals: Arrivals,
    uniform: &mut impl FnMut() -> f64,
) -> Vec<Duration> {
    let len = step.as_secs_f64();
    match arrivals {
        Arrivals::Even => {
            let count = (rate * len).round() as u64;
            (0..count)
                .map(|i| Duration::from_secs_f64(len * i as f64 / count as f64))
                .collect()
        }
        Arrivals::Poisson(_) => {
            let mut at = 0.0;
            let mut out = Vec::new();
            if rate <= 0.0 {
                return out;
            }
            loop {
                at += -uniform().ln() / rate;
                if at >= len {
                    return out;
                }
                out.push(Duration::from_secs_f64(at));
            }
        }
    }
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
    open_loop_arrivals(port, rates, step, paths, stop, Arrivals::Even).await
}

/// [`open_loop_recorded`] with the requests of each step spread as `arrivals` says.
pub async fn open_loop_arrivals(
    port: u16,
    rates: &[f64],
    step: Duration,
    paths: &[(&str, u32)],
    stop: &tokio::sync::watch::Receiver<bool>,
    arrivals: Arrivals,
) -> Vec<Record> {
    let mut uniform = uniforms(match arrivals {
        Arrivals::Poisson(seed) => seed,
        Arrivals::Even => 0,
    });
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
        let step_start = Instant::now();
        let step_end = step_start + step;
        for due in due_times(*rate, step, arrivals, &mut uniform) {
            // Due times are absolute, so the rate holds whatever the
            // timer's resolution: requests due together leave together.
            tokio::time::sleep_until((step_start + due).into()).await;
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

#[cfg(test)]
mod arrival_tests {
    use super::*;

    #[test]
    fn even_arrivals_are_the_steps_count_evenly_spaced() {
        let mut u = uniforms(1);
        let d = due_times(10.0, Duration::from_secs(2), Arrivals::Even, &mut u);
        assert_eq!(d.len(), 20);
        assert_eq!(d[1], Duration::from_millis(100));
        assert_eq!(d[19], Duration::from_millis(1900));
    }

    #[test]
    fn poisson_arrivals_keep_the_rate_and_burst_like_a_poisson_process() {
        // 200 steps of 1 s at 20 req/s: counts per 100 ms have mean 2 and,
        // for a Poisson process, variance 2 (evenly spaced: none).
        let mut u = uniforms(7);
        let mut per_tenth = vec![0u32; 2000];
        let mut total = 0;
        for step in 0..200 {
            for d in due_times(20.0, Duration::from_secs(1), Arrivals::Poisson(7), &mut u) {
                per_tenth[step * 10 + (d.as_secs_f64() * 10.0) as usize] += 1;
                total += 1;
            }
        }
        let mean = f64::from(total) / 2000.0;
        let var = per_tenth
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / 2000.0;
        assert!((mean - 2.0).abs() < 0.1, "{mean}");
        assert!((var / mean - 1.0).abs() < 0.15, "{var} / {mean}");
        // Seeded: the same seed, the same arrivals.
        let a = due_times(
            20.0,
            Duration::from_secs(1),
            Arrivals::Poisson(3),
            &mut uniforms(3),
        );
        let b = due_times(
            20.0,
            Duration::from_secs(1),
            Arrivals::Poisson(3),
            &mut uniforms(3),
        );
        assert_eq!(a, b);
    }
}
