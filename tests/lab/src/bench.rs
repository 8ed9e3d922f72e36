//! `bench filter`: the cost of the meshtune filter measured side by side
//! with Envoy without any wasm filter and with a no-op wasm filter, on the
//! same upstream, alternating in one run.

use crate::envoy::{find_envoy, find_wasm, Envoy, FilterKind, SidecarSpec};
use crate::load::closed_loop;
use crate::mesh::{filter_config, free_port, MeshOptions};
use meshtune_agent::{Agent, AgentConfig};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rounds: usize,
    pub requests: usize,
    pub concurrency: usize,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    requests: u64,
    ok: u64,
    cpu_us: u64,
    wall_s: f64,
}

/// Clock reads per request in the `noop+8` variant: the no-op filter making
/// that many of the cheapest host calls prices one VM↔Envoy crossing.
const CLOCK_READS: u32 = 8;

pub async fn filter(opts: BenchOptions) -> anyhow::Result<()> {
    let envoy = find_envoy()?;
    let meshtune = find_wasm("meshtune_filter.wasm")?;
    let noop = find_wasm("meshtune_noop_filter.wasm")?;
    let dir = tempfile::Builder::new()
        .prefix("meshtune-bench-")
        .tempdir()?;

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let up_port = upstream.local_addr()?.port();
    let _echo = crate::services::spawn_echo(upstream);

    // A real agent receives the reports, as in production.
    let agent_port = free_port()?;
    let mesh_opts = MeshOptions {
        report_interval_ms: 5000,
        ..MeshOptions::default()
    };
    let yaml = crate::mesh::agent_config_yaml(agent_port, &dir.path().join("agent"), &mesh_opts);
    let agent = Agent::open(
        AgentConfig::parse(&yaml, "bench.yaml")?,
        meshtune_agent::now_secs(),
    )?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", agent_port)).await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let _agent = tokio::spawn(agent.serve(listener, rx));

    let variants = [
        ("none", FilterKind::None),
        (
            "noop",
            FilterKind::Wasm {
                path: noop.clone(),
                config_json: String::new(),
            },
        ),
        (
            "meshtune",
            FilterKind::WasmPerSide {
                path: meshtune.clone(),
                config_json: filter_config(&mesh_opts),
            },
        ),
        (
            "mt-1plugin",
            FilterKind::Wasm {
                path: meshtune.clone(),
                config_json: filter_config(&mesh_opts),
            },
        ),
        (
            "mt-control",
            FilterKind::WasmPerSide {
                path: meshtune,
                config_json: filter_config(&MeshOptions {
                    control: true,
                    ..mesh_opts.clone()
                }),
            },
        ),
        ("native-ac", FilterKind::None),
        (
            "noop+8",
            FilterKind::Wasm {
                path: noop,
                config_json: CLOCK_READS.to_string(),
            },
        ),
    ];
    let mut envoys = Vec::new();
    for (name, filter) in variants {
        let spec = SidecarSpec {
            service: "bench".into(),
            namespace: "bench".into(),
            admin_port: free_port()?,
            inbound_port: free_port()?,
            app_port: up_port,
            outbound_port: None,
            upstreams: vec![],
            agent_port: Some(agent_port),
            filter,
            concurrency: 1,
            extra_inbound_filters: if name == "native-ac" {
                vec![crate::envoy::native_adaptive_concurrency()]
            } else {
                vec![]
            },
        };
        let (bin, d, boot, admin) = (
            envoy.clone(),
            dir.path().to_owned(),
            spec.bootstrap(),
            spec.admin_port,
        );
        let e = tokio::task::spawn_blocking(move || Envoy::start(&bin, &d, name, &boot, 1, admin))
            .await??;
        envoys.push((name, spec.inbound_port, e));
    }

    // Warm up every proxy (connections, VM, JIT) before measuring.
    for (_, port, _) in &envoys {
        closed_loop(
            *port,
            vec!["/productpage".to_string(); 2000],
            opts.concurrency,
            "warm",
        )
        .await;
    }
    let mut totals = vec![Totals::default(); envoys.len()];
    for round in 0..opts.rounds {
        // Rotate the order so no variant always runs first.
        for k in 0..envoys.len() {
            let i = (k + round) % envoys.len();
            let (name, port, e) = &envoys[i];
            let cpu0 = e.cpu_micros();
            let t0 = Instant::now();
            let out = closed_loop(
                *port,
                vec!["/productpage".to_string(); opts.requests],
                opts.concurrency,
                name,
            )
            .await;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = e.cpu_micros().saturating_sub(cpu0);
            let t = &mut totals[i];
            t.requests += out.len() as u64;
            t.ok += out.iter().filter(|o| o.status == 200).count() as u64;
            t.cpu_us += cpu;
            t.wall_s += wall;
        }
        eprintln!("round {}/{} done", round + 1, opts.rounds);
    }
    // Let one report interval pass so the memory gauge is set.
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;

    println!(
        "{:<10} {:>10} {:>12} {:>14} {:>10}",
        "proxy", "requests", "req/s", "cpu_us/req", "rss_MiB"
    );
    let per_req: Vec<f64> = totals
        .iter()
        .map(|t| t.cpu_us as f64 / t.requests.max(1) as f64)
        .collect();
    for (i, (name, _, e)) in envoys.iter().enumerate() {
        let t = &totals[i];
        println!(
            "{:<10} {:>10} {:>12.0} {:>14.2} {:>10.1}",
            name,
            t.requests,
            t.requests as f64 / t.wall_s.max(1e-9),
            per_req[i],
            crate::proc::rss_kib(e.child.id()) as f64 / 1024.0
        );
        if t.ok != t.requests {
            println!(
                "  warning: {} of {} requests failed",
                t.requests - t.ok,
                t.requests
            );
        }
    }
    let mem = envoys[2].2.stats_prometheus();
    let vm_mem = mem
        .lines()
        .find(|l| l.starts_with("meshtune_vm_memory_bytes"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!("(meshtune: one plugin per side, as installed; mt-1plugin: one plugin on both sides, reading each request's cluster name)");
    println!(
        "meshtune filter VM linear memory: {:.1} KiB per worker VM",
        vm_mem / 1024.0
    );
    let _ = stop.send(true);
    println!(
        "(mt-control: meshtune with deadlines, retry budgets and adaptive concurrency on; native-ac: Envoy's adaptive_concurrency filter, no wasm)"
    );
    println!(
        "ratio cpu_per_request mt-control/noop={:.2} mt-control/native-ac={:.2} native-ac/none={:.2}",
        per_req[4] / per_req[1].max(1e-9),
        per_req[4] / per_req[5].max(1e-9),
        per_req[5] / per_req[0].max(1e-9)
    );
    println!(
        "(noop+8: the no-op filter making {CLOCK_READS} clock reads per request) one host call: {:.2} µs of proxy CPU; meshtune over noop: {:.1} µs, {:.1} such calls' worth",
        (per_req[6] - per_req[1]) / f64::from(CLOCK_READS),
        per_req[2] - per_req[1],
        (per_req[2] - per_req[1]) / ((per_req[6] - per_req[1]) / f64::from(CLOCK_READS)).max(1e-9)
    );
    println!(
        "ratio cpu_per_request meshtune/noop={:.2} meshtune/none={:.2}",
        per_req[2] / per_req[1].max(1e-9),
        per_req[2] / per_req[0].max(1e-9)
    );
    Ok(())
}
