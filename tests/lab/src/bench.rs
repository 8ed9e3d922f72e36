//! `bench filter`: the cost of the meshtune filter measured side by side
//! with Envoy without any wasm filter and with a no-op wasm filter, on the
//! same upstream, alternating in one run.

use crate::envoy::{find_envoy, find_wasm, Envoy, FilterKind, SidecarSpec};
use crate::load::closed_loop;
use crate::mesh::{filter_config, free_port, MeshOptions};
use anyhow::Context;
use meshtune_agent::{Agent, AgentConfig};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rounds: usize,
    pub requests: usize,
    pub concurrency: usize,
    /// Variants to run by name; empty runs them all.
    pub variants: Vec<String>,
    /// Count the instructions each proxy executes per request (Envoy under
    /// valgrind's callgrind): exact where CPU time on a shared machine is not.
    pub instructions: bool,
}

/// Every variant `bench filter` knows, in the order it prints them.
pub const VARIANTS: [&str; 8] = [
    "none",
    "noop",
    "meshtune",
    "mt-1plugin",
    "mt-control",
    "native-ac",
    "noop+8",
    "noop+read",
];

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

/// What one variant measured.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub name: &'static str,
    pub requests: u64,
    pub failed: u64,
    pub cpu_us_per_request: f64,
    /// Worker-thread instructions per request, with `--instructions`.
    pub instructions_per_request: Option<f64>,
}

/// Runs the benchmark, prints its table and ratios, and returns them.
pub async fn filter(opts: BenchOptions) -> anyhow::Result<Vec<VariantResult>> {
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
    let _agent = tokio::spawn(meshtune_agent::app::serve(agent, listener, rx));

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
                path: noop.clone(),
                config_json: CLOCK_READS.to_string(),
            },
        ),
        (
            "noop+read",
            FilterKind::Wasm {
                path: noop,
                config_json: "read".into(),
            },
        ),
    ];
    for v in &opts.variants {
        anyhow::ensure!(
            VARIANTS.contains(&v.as_str()),
            "--variants: unknown variant {v:?}; known: {}",
            VARIANTS.join(", ")
        );
    }
    if opts.instructions {
        crate::callgrind::require()?;
    }
    let mut envoys = Vec::new();
    for (name, filter) in variants {
        if !opts.variants.is_empty() && !opts.variants.iter().any(|v| v == name) {
            continue;
        }
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
            xds_dir: None,
            pod: crate::envoy::Pod::only("bench"),
        };
        let (bin, d, boot, admin) = (
            envoy.clone(),
            dir.path().to_owned(),
            spec.bootstrap(),
            spec.admin_port,
        );
        let launcher = if opts.instructions {
            crate::callgrind::launcher(&dir.path().join(format!("{name}.callgrind")))
        } else {
            Vec::new()
        };
        if opts.instructions {
            eprintln!("starting {name} under callgrind (a minute or more)");
        }
        let e = tokio::task::spawn_blocking(move || {
            Envoy::start_under(&launcher, &bin, &d, name, &boot, 1, admin)
        })
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
    if opts.instructions {
        // Count only the measured rounds, not start-up and warm-up.
        for (name, _, e) in &envoys {
            crate::callgrind::start_counting(e.child.id())
                .with_context(|| format!("switching on counting for {name}"))?;
        }
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
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let vm_mem = envoys
        .iter()
        .find(|(name, _, _)| *name == "meshtune")
        .and_then(|(_, _, e)| {
            e.stats_prometheus()
                .lines()
                .find(|l| l.starts_with("meshtune_vm_memory_bytes"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        });
    let rss: Vec<f64> = envoys
        .iter()
        .map(|(_, _, e)| crate::proc::rss_kib(e.child.id()) as f64 / 1024.0)
        .collect();
    let cpu: Vec<f64> = totals
        .iter()
        .map(|t| t.cpu_us as f64 / t.requests.max(1) as f64)
        .collect();
    let mut instructions = Vec::new();
    if opts.instructions {
        // callgrind writes its counts when Envoy exits.
        for (name, _, e) in &mut envoys {
            e.quit(Duration::from_secs(120))?;
            let total =
                crate::callgrind::worker_total(&dir.path().join(format!("{name}.callgrind")))?;
            instructions.push(total as f64);
        }
        for (i, t) in totals.iter().enumerate() {
            instructions[i] /= t.requests.max(1) as f64;
        }
    }
    let _ = stop.send(true);

    let names: Vec<&str> = envoys.iter().map(|(n, _, _)| *n).collect();
    print!(
        "{:<10} {:>10} {:>12} {:>14} {:>10}",
        "proxy", "requests", "req/s", "cpu_us/req", "rss_MiB"
    );
    println!(
        "{}",
        if opts.instructions {
            "   instr/req"
        } else {
            ""
        }
    );
    for (i, name) in names.iter().enumerate() {
        let t = &totals[i];
        print!(
            "{:<10} {:>10} {:>12.0} {:>14.2} {:>10.1}",
            name,
            t.requests,
            t.requests as f64 / t.wall_s.max(1e-9),
            cpu[i],
            rss[i]
        );
        match instructions.get(i) {
            Some(n) => println!(" {n:>11.0}"),
            None => println!(),
        }
        if t.ok != t.requests {
            println!(
                "  warning: {} of {} requests failed",
                t.requests - t.ok,
                t.requests
            );
        }
    }
    if opts.instructions {
        println!("(under callgrind: cpu_us/req and req/s are valgrind's; instr/req counts the worker thread, which serves every request)");
    }
    if let Some(m) = vm_mem {
        println!("(meshtune: one plugin per side, as installed; mt-1plugin: one plugin on both sides, reading each request's cluster name)");
        println!(
            "meshtune filter VM linear memory: {:.1} KiB per worker VM",
            m / 1024.0
        );
    }
    println!(
        "(mt-control: meshtune with deadlines, retry budgets and adaptive concurrency on; native-ac: Envoy's adaptive_concurrency filter, no wasm)"
    );
    let per_req = |metric: &[f64], name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| metric.get(i).copied())
    };
    let ratios = |label: &str, metric: &[f64], pairs: &[(&str, &str)]| {
        let parts: Vec<String> = pairs
            .iter()
            .filter_map(|(a, b)| {
                let (x, y) = (per_req(metric, a)?, per_req(metric, b)?);
                Some(format!("{a}/{b}={:.2}", x / y.max(1e-9)))
            })
            .collect();
        if !parts.is_empty() {
            println!("ratio {label} {}", parts.join(" "));
        }
    };
    let control_pairs = [
        ("mt-control", "noop"),
        ("mt-control", "native-ac"),
        ("native-ac", "none"),
    ];
    let main_pairs = [("meshtune", "noop"), ("meshtune", "none")];
    // The least any filter that attributes requests and counts errors pays:
    // one request header and the status handed into the VM.
    let floor_pairs = [("noop+read", "noop"), ("meshtune", "noop+read")];
    let (metric, unit, digits) = if opts.instructions {
        (&instructions, "instructions", 0)
    } else {
        (&cpu, "µs of proxy CPU", 2)
    };
    if let (Some(noop), Some(noop8), Some(mt)) = (
        per_req(metric, "noop"),
        per_req(metric, "noop+8"),
        per_req(metric, "meshtune"),
    ) {
        let call = (noop8 - noop) / f64::from(CLOCK_READS);
        println!(
            "(noop+8: the no-op filter making {CLOCK_READS} clock reads per request) one host call: {call:.digits$} {unit}; meshtune over noop: {:.digits$} {unit}, {:.1} such calls' worth",
            mt - noop,
            (mt - noop) / call.max(1e-9)
        );
    }
    if per_req(metric, "noop+read").is_some() {
        println!("(noop+read: the no-op filter reading `:path` and `:status`, the least a filter that attributes requests and counts errors asks of Envoy)");
        let label = if opts.instructions {
            "instructions_per_request"
        } else {
            "cpu_per_request"
        };
        ratios(label, metric, &floor_pairs);
    }
    if opts.instructions {
        println!("(the worker's count includes its share of timer work, e.g. the filter's reports, which under valgrind fall on fewer requests; with control, requests shed under valgrind's slowness cost less)");
        ratios("instructions_per_request", &instructions, &control_pairs);
        ratios("instructions_per_request", &instructions, &main_pairs);
    } else {
        ratios("cpu_per_request", &cpu, &control_pairs);
        ratios("cpu_per_request", &cpu, &main_pairs);
    }
    Ok(names
        .iter()
        .enumerate()
        .map(|(i, name)| VariantResult {
            name,
            requests: totals[i].requests,
            failed: totals[i].requests - totals[i].ok,
            cpu_us_per_request: cpu[i],
            instructions_per_request: instructions.get(i).copied(),
        })
        .collect())
}
