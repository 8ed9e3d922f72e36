//! The small services of the lab, shaped like Istio's Bookinfo sample:
//! `productpage` calls `details` and `reviews`, `reviews` calls `ratings`,
//! and `productpage` also serves a ratings API that calls `ratings`
//! directly, so two chains share `productpage` and `ratings`. Each service
//! calls its dependencies through its own sidecar's outbound listener and
//! propagates the chain header and `x-request-id`, as Istio apps propagate
//! trace headers.

use crate::http::{client, HttpClient};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// A downstream call made while serving a path prefix.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: &'static str,
    pub path: &'static str,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: &'static str,
    pub calls: Vec<Call>,
}

/// A fixed worker pool with a bounded queue: requests beyond both get 503.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub workers: usize,
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub capacity: Option<Capacity>,
    /// Own work per request: `base_us` plus a deterministic heavy-ish tail.
    pub base_us: u64,
    pub tail_us: u64,
    pub routes: Vec<Route>,
}

pub const CHAIN_HEADER: &str = "x-meshtune-chain";

/// The Bookinfo-shaped topology.
pub fn bookinfo() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec {
            name: "productpage",
            capacity: None,
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
            capacity: None,
            base_us: 800,
            tail_us: 1500,
            routes: vec![],
        },
        ServiceSpec {
            name: "reviews",
            capacity: None,
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
            capacity: None,
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

/// What a service saw, for tests.
#[derive(Debug, Default)]
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
}

struct Ctx {
    spec: ServiceSpec,
    outbound_port: Option<u16>,
    client: HttpClient,
    workers: Option<Arc<Semaphore>>,
    waiting: AtomicU64,
    stats: Arc<ServiceStats>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
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
    // A capacity-limited service works on `workers` requests at a time and
    // lets at most `queue` wait; beyond that it answers 503.
    let _permit = match (&ctx.workers, ctx.spec.capacity) {
        (Some(sem), Some(cap)) => {
            let waiting = ctx.waiting.fetch_add(1, Ordering::Relaxed);
            if sem.available_permits() == 0 && waiting >= cap.queue as u64 {
                ctx.waiting.fetch_sub(1, Ordering::Relaxed);
                ctx.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                return Ok(Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::from_static(b"overloaded\n")))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))));
            }
            let permit = sem.clone().acquire_owned().await.ok();
            ctx.waiting.fetch_sub(1, Ordering::Relaxed);
            permit
        }
        _ => None,
    };
    let work_started = std::time::Instant::now();
    tokio::time::sleep(ctx.spec.work(&rid)).await;
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
    let body = format!("{} {}\n", ctx.spec.name, path);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Serves `spec` on `listener` until the task is aborted.
pub fn spawn(
    spec: ServiceSpec,
    listener: TcpListener,
    outbound_port: Option<u16>,
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
