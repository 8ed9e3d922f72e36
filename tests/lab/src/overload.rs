//! The overload scenario: the Bookinfo-shaped mesh whose shared `ratings`
//! service has a fixed worker pool, open-loop load above its capacity on
//! two chains of different priority, run without control, with Envoy's
//! native adaptive concurrency, or with meshtune's control.

use crate::http::{client, get};
use crate::mesh::{ChainDef, Mesh, MeshOptions};
use crate::services::{self, Capacity};
use std::time::{Duration, Instant};

pub const HIGH: &str = "ratings-api";
pub const LOW: &str = "product-page";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    None,
    /// Envoy's `envoy.filters.http.adaptive_concurrency` on the ratings sidecar.
    Native,
    Meshtune,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::None => "none",
            Control::Native => "native",
            Control::Meshtune => "meshtune",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OverloadOptions {
    pub seconds: f64,
    /// Warm-up before measuring (the controllers settle, the agent learns).
    pub warmup_seconds: f64,
    pub high_rps: f64,
    pub low_rps: f64,
    /// `ratings`: parallel workers and the time each request takes.
    pub workers: usize,
    pub work_ms: u64,
    pub high_slo_ms: f64,
    pub low_slo_ms: f64,
}

impl Default for OverloadOptions {
    fn default() -> Self {
        // ratings serves 2 / 10 ms = 200 req/s; it is offered 60 + 220.
        OverloadOptions {
            seconds: 12.0,
            warmup_seconds: 4.0,
            high_rps: 60.0,
            low_rps: 220.0,
            workers: 2,
            work_ms: 10,
            high_slo_ms: 50.0,
            low_slo_ms: 200.0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ChainResult {
    pub sent: u64,
    pub ok: u64,
    pub within_slo: u64,
    pub p99_ms: f64,
    pub p50_ms: f64,
    /// p99 of the successful responses only.
    pub p99_ok_ms: f64,
}

impl ChainResult {
    /// Share of the chain's requests answered successfully within its
    /// objective (the agent's one rule: failures count against it).
    pub fn attainment(&self) -> f64 {
        meshtune_agent::data::attainment::attainment(self.sent, self.within_slo).unwrap_or(0.0)
    }
}

#[derive(Debug, Clone)]
pub struct OverloadResult {
    pub control: Control,
    pub seconds: f64,
    pub high: ChainResult,
    pub low: ChainResult,
    /// Successful responses within their chain's objective, per second.
    pub goodput: f64,
    /// Requests that reached `ratings` with their deadline already spent
    /// (whole run, warm-up included).
    pub ratings_arrived_expired: u64,
    /// Requests `ratings` received while the measured requests were sent.
    pub ratings_received: u64,
    /// Requests `ratings` did the work of (a worker held for the work time).
    pub ratings_worked: u64,
    /// Share of the time `ratings`' workers were busy meanwhile: at 1 no
    /// control can get more good responses out of it.
    pub ratings_busy: f64,
}

/// The scenario's mesh: `ratings` has a fixed pool and a long queue.
pub fn mesh_options(control: Control, o: &OverloadOptions) -> MeshOptions {
    let mut svcs = services::bookinfo();
    for s in &mut svcs {
        if s.name == "ratings" {
            s.capacity = Some(Capacity {
                workers: o.workers,
                queue: 100_000,
            });
            s.base_us = o.work_ms * 1000;
            s.tail_us = 0;
        }
    }
    MeshOptions {
        report_interval_ms: 500,
        envoy_concurrency: 2,
        agent_window_secs: 10,
        chains: vec![
            ChainDef {
                name: HIGH,
                path_prefix: "/api/v1/ratings",
                slo_ms: o.high_slo_ms,
                priority: "high",
            },
            ChainDef {
                name: LOW,
                path_prefix: "/productpage",
                slo_ms: o.low_slo_ms,
                priority: "low",
            },
        ],
        services: svcs,
        control: control == Control::Meshtune,
        native_adaptive: (control == Control::Native).then_some("ratings"),
        policy_ttl_s: 5,
        ..MeshOptions::default()
    }
}

struct Sample {
    high: bool,
    status: u16,
    latency: Duration,
    measured: bool,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Drives the open-loop load on a running mesh and measures at the client.
pub async fn drive(mesh: &Mesh, control: Control, o: &OverloadOptions) -> OverloadResult {
    let port = mesh.entry_port;
    let c = client();
    let total = o.warmup_seconds + o.seconds;
    // A fixed schedule: both chains evenly spaced, the same in every run.
    let mut schedule: Vec<(f64, bool)> = Vec::new();
    for (rps, high) in [(o.high_rps, true), (o.low_rps, false)] {
        let n = (rps * total) as usize;
        schedule.extend((0..n).map(|i| (i as f64 / rps, high)));
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let start = Instant::now();
    // What `ratings` saw while the measured requests were sent.
    let ratings_counts = || {
        let s = mesh.service_stats("ratings");
        [s.received, s.arrived_expired, s.worked, s.busy_us]
    };
    let at_start = ratings_counts();
    let mut at_measure_start = None;
    let mut tasks = Vec::with_capacity(schedule.len());
    for (i, (at, high)) in schedule.into_iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        if at >= o.warmup_seconds && at_measure_start.is_none() {
            at_measure_start = Some((ratings_counts(), Instant::now()));
        }
        let c = c.clone();
        let path = if high {
            format!("/api/v1/ratings/{i}")
        } else {
            format!("/productpage?i={i}")
        };
        let measured = at >= o.warmup_seconds;
        tasks.push(tokio::spawn(async move {
            let rid = format!("ov-{i}");
            let t0 = Instant::now();
            let url = format!("http://127.0.0.1:{port}{path}");
            let headers = [("x-request-id", rid.as_str())];
            let fut = get(&c, &url, &headers);
            let status = match tokio::time::timeout(Duration::from_secs(10), fut).await {
                Ok(Ok((s, _))) => s,
                _ => 0,
            };
            Sample {
                high,
                status,
                latency: t0.elapsed(),
                measured,
            }
        }));
    }
    let (measured_counts, measured_for) = {
        let (begin, since) = at_measure_start.unwrap_or((at_start, start));
        let end = ratings_counts();
        ([0, 1, 2, 3].map(|i| end[i] - begin[i]), since.elapsed())
    };
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    let summarize = |high: bool, slo_ms: f64| -> ChainResult {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.high == high && s.measured)
            .collect();
        let mut lat: Vec<f64> = mine
            .iter()
            .map(|s| s.latency.as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        let mut ok_lat: Vec<f64> = mine
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency.as_secs_f64() * 1000.0)
            .collect();
        ok_lat.sort_by(f64::total_cmp);
        ChainResult {
            sent: mine.len() as u64,
            ok: mine.iter().filter(|s| s.status == 200).count() as u64,
            within_slo: mine
                .iter()
                .filter(|s| s.status == 200 && s.latency.as_secs_f64() * 1000.0 <= slo_ms)
                .count() as u64,
            p99_ms: quantile(&lat, 0.99),
            p50_ms: quantile(&lat, 0.5),
            p99_ok_ms: quantile(&ok_lat, 0.99),
        }
    };
    let high = summarize(true, o.high_slo_ms);
    let low = summarize(false, o.low_slo_ms);
    OverloadResult {
        control,
        seconds: o.seconds,
        goodput: (high.within_slo + low.within_slo) as f64 / o.seconds,
        high,
        low,
        ratings_received: measured_counts[0],
        // Over the whole run: none may arrive expired, warm-up included.
        ratings_arrived_expired: ratings_counts()[1] - at_start[1],
        ratings_worked: measured_counts[2],
        ratings_busy: measured_counts[3] as f64
            / (o.workers as f64 * measured_for.as_micros().max(1) as f64),
    }
}

/// Starts the scenario's mesh with `control` and runs the load once.
pub async fn run(control: Control, o: &OverloadOptions) -> anyhow::Result<OverloadResult> {
    let mesh = Mesh::start(mesh_options(control, o)).await?;
    Ok(drive(&mesh, control, o).await)
}

pub fn print(r: &OverloadResult, o: &OverloadOptions) {
    println!(
        "{:<9} {HIGH} within its {} ms objective: {:.1} % of requests; {LOW} within {} ms: {:.1} %",
        r.control.as_str(),
        o.high_slo_ms,
        r.high.attainment() * 100.0,
        o.low_slo_ms,
        r.low.attainment() * 100.0
    );
    println!(
        "{:<9} goodput {:>6.1}/s | {HIGH} (high, slo {} ms): ok {:>5}/{:<5} in-slo {:>5} p50 {:>7.1} p99 {:>7.1} ms | {LOW} (low, slo {} ms): ok {:>5}/{:<5} in-slo {:>5} p50 {:>7.1} p99 {:>7.1} ms",
        r.control.as_str(),
        r.goodput,
        o.high_slo_ms,
        r.high.ok,
        r.high.sent,
        r.high.within_slo,
        r.high.p50_ms,
        r.high.p99_ms,
        o.low_slo_ms,
        r.low.ok,
        r.low.sent,
        r.low.within_slo,
        r.low.p50_ms,
        r.low.p99_ms,
    );
    println!(
        "{:<9} ratings received {:.1}/s, worked {:.1}/s, workers busy {:.1} % while the measured requests were sent; {} arrived with the deadline spent (whole run)",
        r.control.as_str(),
        r.ratings_received as f64 / r.seconds,
        r.ratings_worked as f64 / r.seconds,
        r.ratings_busy * 100.0,
        r.ratings_arrived_expired
    );
}
