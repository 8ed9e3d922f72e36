//! The small services of the lab, shaped like Istio's Bookinfo sample:
//! `productpage` calls `details` and `reviews`, `reviews` calls `ratings`,
//! and `productpage` also serves a ratings API that calls `ratings`
//! directly, so two chains share `productpage` and `ratings`. Each service
//! calls its dependencies through its own sidecar's outbound listener and
//! propagates the chain header and `x-request-id`, as Istio apps propagate
//! trace headers.
//!
//! Each replica of a service is its own process (`meshtune-lab replica`,
//! started by [`crate::replicas`]) with its own sidecar, as a pod is: its
//! service time is real CPU work (calibrated at start) plus waiting, on a
//! finite worker pool. Two paths answer on the app port only, never through
//! the sidecar: `GET /lab/stats` (what it saw) and `PUT /lab/fault` (the
//! fault schedule's slow-down and error share).

use crate::http::{client, HttpClient};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// A downstream call made while serving a path prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub service: &'static str,
    pub path: &'static str,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub prefix: &'static str,
    pub calls: Vec<Call>,
}

/// A fixed worker pool with a bounded queue: requests beyond both get 503.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Capacity {
    pub workers: usize,
    pub queue: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub capacity: Option<Capacity>,
    /// Own work per request: `base_us` plus a deterministic heavy-ish tail.
    pub base_us: u64,
    pub tail_us: u64,
    /// Of that work, the part spent on the CPU (the rest is waiting, as on
    /// a database): real instructions, so a CPU limit slows it.
    pub cpu_us: u64,
    pub routes: Vec<Route>,
    /// Its replicas (at least one): version and locality of each.
    pub replicas: Vec<ReplicaDef>,
}

/// One replica of a service: its version (the subset label `version`) and
/// locality (`region/zone/subzone`, Istio's form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDef {
    pub version: &'static str,
    pub locality: &'static str,
}

/// The locality every replica has unless placed elsewhere.
pub const DEFAULT_LOCALITY: &str = "region1/zone1/sub1";

/// One replica, version `v1`, in the default locality.
pub fn one_replica() -> Vec<ReplicaDef> {
    vec![ReplicaDef {
        version: "v1",
        locality: DEFAULT_LOCALITY,
    }]
}

/// The worker pool every lab service has unless given another: finite, as
/// a real service's is, and well above what the lab's load needs.
pub const DEFAULT_CAPACITY: Capacity = Capacity {
    workers: 32,
    queue: 128,
};

pub const CHAIN_HEADER: &str = "x-meshtune-chain";

/// Bookinfo as it ships: `reviews` in three versions, here also in two
/// zones (v1 and v2 beside the callers, v3 in another zone), so subsets,
/// outlier detection and locality weights have something to act on.
pub fn bookinfo_with_versions() -> Vec<ServiceSpec> {
    let mut s = bookinfo();
    for svc in &mut s {
        if svc.name == "reviews" {
            svc.replicas = vec![
                ReplicaDef {
                    version: "v1",
                    locality: DEFAULT_LOCALITY,
                },
                ReplicaDef {
                    version: "v2",
                    locality: DEFAULT_LOCALITY,
                },
                ReplicaDef {
                    version: "v3",
                    locality: "region1/zone2/sub1",
                },
            ];
        }
    }
    s
}

/// The Bookinfo-shaped topology, one replica per service.
pub fn bookinfo() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec {
            name: "productpage",
            capacity: Some(DEFAULT_CAPACITY),
            cpu_us: 300,
            replicas: one_replica(),
            base_us: 1500,
            tail_us: 3000,
            routes: vec![
                Route {
                    prefix: "/productpage",
                    calls: vec![
                        Call {
                            service: "details",
                            path: "/details/0",
                        },
                        Call {
                            service: "reviews",
                            path: "/reviews/0",
                        },
                    ],
                },
                Route {
                    prefix: "/api/v1/ratings",
                    calls: vec![Call {
                        service: "ratings",
                        path: "/ratings/0",
                    }],
                },
            ],
        },
        ServiceSpec {
            name: "details",
            capacity: Some(DEFAULT_CAPACITY),
            cpu_us: 150,
            replicas: one_replica(),
            base_us: 800,
            tail_us: 1500,
            routes: vec![],
        },
        ServiceSpec {
            name: "reviews",
            capacity: Some(DEFAULT_CAPACITY),
            cpu_us: 400,
            replicas: one_replica(),
            base_us: 2000,
            tail_us: 4000,
            routes: vec![Route {
                prefix: "/reviews",
                calls: vec![Call {
                    service: "ratings",
                    path: "/ratings/0",
                }],
            }],
        },
        ServiceSpec {
            name: "ratings",
            capacity: Some(DEFAULT_CAPACITY),
            cpu_us: 150,
            replicas: one_replica(),
            base_us: 700,
            tail_us: 2000,
            routes: vec![],
        },
    ]
}

/// FNV-1a, to draw a repeatable latency from a request id.
fn hash(bytes: &[u8], salt: u64) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ salt;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl ServiceSpec {
    /// Work time for one request: base plus a cubic tail, so quantiles differ.
    pub fn work(&self, request_id: &[u8]) -> Duration {
        let u = (hash(request_id, self.name.len() as u64 * 7919) % 10_000) as f64 / 10_000.0;
        Duration::from_micros(self.base_us + (u * u * u * self.tail_us as f64) as u64)
    }
}

/// What a replica saw, for tests and the live view (`GET /lab/stats`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServiceStats {
    pub received: AtomicU64,
    /// Requests that arrived with their chain's deadline already past.
    pub arrived_expired: AtomicU64,
    /// Requests refused because workers and queue were full.
    pub overflowed: AtomicU64,
    /// Requests whose work was done (a worker held for the whole work time).
    pub worked: AtomicU64,
    /// Microseconds workers spent on that work, summed over workers.
    pub busy_us: AtomicU64,
    /// Requests answered with the fault's error status.
    pub faulted: AtomicU64,
}

/// The same counts as plain numbers, summed over replicas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub arrived_expired: u64,
    pub overflowed: u64,
    pub worked: u64,
    pub busy_us: u64,
    pub faulted: u64,
}

impl std::ops::Add for StatsSnapshot {
    type Output = StatsSnapshot;
    fn add(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received + o.received,
            arrived_expired: self.arrived_expired + o.arrived_expired,
            overflowed: self.overflowed + o.overflowed,
            worked: self.worked + o.worked,
            busy_us: self.busy_us + o.busy_us,
            faulted: self.faulted + o.faulted,
        }
    }
}

/// A replica's fault, as the fault schedule sets it (`PUT /lab/fault`):
/// its work takes `slow` times as long, and `error_share` of its requests
/// are answered `status` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub slow: f64,
    pub error_share: f64,
    pub status: u16,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            slow: 1.0,
            error_share: 0.0,
            status: 500,
        }
    }
}

/// Spends real CPU time: a calibrated number of hash rounds per microsecond.
#[derive(Debug, Clone, Copy)]
pub struct Burner {
    rounds_per_us: f64,
}

impl Burner {
    /// Measures this machine's rounds per microsecond (best of five).
    pub fn calibrate() -> Burner {
        const ROUNDS: u64 = 200_000;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            std::hint::black_box(spin(ROUNDS));
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
        }
        Burner {
            rounds_per_us: ROUNDS as f64 / best.max(1.0),
        }
    }

    pub fn burn(&self, us: u64) {
        std::hint::black_box(spin((us as f64 * self.rounds_per_us) as u64));
    }
}

fn spin(rounds: u64) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for i in 0..rounds {
        h ^= i;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

struct Ctx {
    spec: ServiceSpec,
    outbound_port: Option<u16>,
    client: HttpClient,
    workers: Option<Arc<Semaphore>>,
    waiting: AtomicU64,
    stats: Arc<ServiceStats>,
    fault: std::sync::Mutex<Fault>,
    /// Requests seen while erring, to answer exactly the share asked.
    fault_seen: AtomicU64,
    burner: Burner,
}

impl Ctx {
    fn fault(&self) -> Fault {
        self.fault.lock().map(|f| *f).unwrap_or_default()
    }

    /// Whether this request is one of the fault's erring share: drawn
    /// from a fixed pseudo-random sequence, so runs of errors occur as
    /// they do in a real failing replica (an even spread would never give
    /// outlier detection the consecutive errors it counts).
    fn errs(&self, share: f64) -> bool {
        if share <= 0.0 {
            return false;
        }
        let n = self.fault_seen.fetch_add(1, Ordering::Relaxed);
        (hash(&n.to_le_bytes(), 0x5eed) % 1_000_000) as f64 / 1_000_000.0 < share
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn text(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// `/lab/stats` and `/lab/fault`, answered on the app port only.
fn lab_endpoint(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/lab/stats") => text(200, serde_json::to_string(&*ctx.stats).unwrap_or_default()),
        ("PUT", "/lab/fault") => {
            let mut f = Fault::default();
            for (k, v) in req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
            {
                match k {
                    "slow" => f.slow = v.parse().unwrap_or(1.0),
                    "error_share" => f.error_share = v.parse().unwrap_or(0.0),
                    "status" => f.status = v.parse().unwrap_or(500),
                    _ => return text(400, format!("unknown fault field {k}\n")),
                }
            }
            if let Ok(mut g) = ctx.fault.lock() {
                *g = f;
            }
            text(200, format!("{f:?}\n"))
        }
        _ => text(404, "unknown lab path\n".into()),
    }
}

async fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path().starts_with("/lab/") {
        return Ok(lab_endpoint(&ctx, &req));
    }
    let rid = req
        .headers()
        .get("x-request-id")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let chain = req
        .headers()
        .get(CHAIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ctx.stats.received.fetch_add(1, Ordering::Relaxed);
    let deadline = req
        .headers()
        .get("x-meshtune-deadline")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if deadline.is_some_and(|d| now_ms() > d) {
        ctx.stats.arrived_expired.fetch_add(1, Ordering::Relaxed);
    }
    let fault = ctx.fault();
    if ctx.errs(fault.error_share) {
        ctx.stats.faulted.fetch_add(1, Ordering::Relaxed);
        return Ok(text(fault.status, "injected fault\n".into()));
    }
    // A capacity-limited service works on `workers` requests at a time and
    // lets at most `queue` wait; beyond that it answers 503.
    let _permit = match (&ctx.workers, ctx.spec.capacity) {
        (Some(sem), Some(cap)) => {
            let waiting = ctx.waiting.fetch_add(1, Ordering::Relaxed);
            if sem.available_permits() == 0 && waiting >= cap.queue as u64 {
                ctx.waiting.fetch_sub(1, Ordering::Relaxed);
                ctx.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                return Ok(text(503, "overloaded\n".into()));
            }
            let permit = sem.clone().acquire_owned().await.ok();
            ctx.waiting.fetch_sub(1, Ordering::Relaxed);
            permit
        }
        _ => None,
    };
    let work_started = std::time::Instant::now();
    // Real CPU work first, then the rest of the work time waiting; a slow
    // replica waits longer.
    let work = ctx.spec.work(&rid).mul_f64(fault.slow.max(0.0));
    let cpu = Duration::from_micros(ctx.spec.cpu_us).min(work);
    ctx.burner.burn(cpu.as_micros() as u64);
    tokio::time::sleep(work.saturating_sub(work_started.elapsed())).await;
    ctx.stats.worked.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .busy_us
        .fetch_add(work_started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let mut status = 200u16;
    if let (Some(route), Some(port)) = (
        ctx.spec.routes.iter().find(|r| path.starts_with(r.prefix)),
        ctx.outbound_port,
    ) {
        for call in &route.calls {
            let mut headers: Vec<(&str, &str)> = vec![("host", call.service)];
            let rid_str = String::from_utf8_lossy(&rid).into_owned();
            if !rid.is_empty() {
                headers.push(("x-request-id", rid_str.as_str()));
            }
            if let Some(c) = &chain {
                headers.push((CHAIN_HEADER, c.as_str()));
            }
            let url = format!("http://127.0.0.1:{port}{}", call.path);
            match crate::http::get(&ctx.client, &url, &headers).await {
                Ok((s, _)) if s < 400 => {}
                Ok((s, _)) => status = status.max(s.max(502)),
                Err(_) => status = 502,
            }
        }
    }
    Ok(text(status, format!("{} {}\n", ctx.spec.name, path)))
}

/// Serves `spec` on `listener` until the task is aborted.
pub fn spawn(
    spec: ServiceSpec,
    listener: TcpListener,
    outbound_port: Option<u16>,
    burner: Burner,
) -> (JoinHandle<()>, Arc<ServiceStats>) {
    let stats = Arc::new(ServiceStats::default());
    let workers = spec.capacity.map(|c| Arc::new(Semaphore::new(c.workers)));
    let ctx = Arc::new(Ctx {
        spec,
        outbound_port,
        client: client(),
        workers,
        waiting: AtomicU64::new(0),
        stats: stats.clone(),
        fault: std::sync::Mutex::new(Fault::default()),
        fault_seen: AtomicU64::new(0),
        burner,
    });
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(ctx.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (handle, stats)
}

/// A plain upstream answering 200 at once, for filter benchmarks.
pub fn spawn_echo(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// CPU-bound Bookinfo: each request's work is all CPU, no tail (where the
/// CPU a service is given is what decides its latency).
pub fn cpu_bound_services() -> Vec<ServiceSpec> {
    let mut s = bookinfo();
    for svc in &mut s {
        svc.cpu_us = svc.base_us;
        svc.tail_us = 0;
        svc.capacity = None;
    }
    s
}
