//! How long the CPU allocation takes for a large mesh: 200 services, 50
//! chains of 4–8 services each (shared services throughout), on one core.
//! `cargo run --release -p meshtune-agent --example allocate_bench`
//! The last line: `allocate services=200 chains=50 ms=… feasible=… cores=…`.

use meshtune_agent::plan::resources::{allocate, ChainObjective, ServiceModel};
use meshtune_filter_core::control::Priority;
use std::time::Instant;

fn main() {
    // A fixed pseudo-random mesh (the same every run).
    let mut x: u64 = 42;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    let services: Vec<ServiceModel> = (0..200)
        .map(|i| ServiceModel {
            name: format!("svc-{i}"),
            demand_s: 0.001 + next(9) as f64 * 0.001,
            fixed_ms: next(5) as f64,
            variability: 0.3 + next(8) as f64 * 0.1,
            rps: 10.0 + next(90) as f64,
            replicas: 1,
            min_cpu: 0.05,
            max_cpu: 8.0,
        })
        .collect();
    let chains: Vec<ChainObjective> = (0..50)
        .map(|i| {
            let len = 4 + next(5) as usize;
            let mut names: Vec<String> = Vec::new();
            while names.len() < len {
                let n = format!("svc-{}", next(200));
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            ChainObjective {
                name: format!("chain-{i}"),
                slo_ms: 100.0 + next(200) as f64,
                percentile: 99.0,
                priority: [Priority::High, Priority::Normal, Priority::Low][i % 3],
                services: names,
            }
        })
        .collect();
    let mut best = f64::INFINITY;
    let mut last = None;
    for round in 0..3 {
        let t = Instant::now();
        let a = match allocate(&services, &chains) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("allocation failed: {e}");
                std::process::exit(1);
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("round {}: {ms:.1} ms", round + 1);
        best = best.min(ms);
        last = Some(a);
    }
    let Some(a) = last else { return };
    let cores: f64 = a.cores.values().sum();
    println!(
        "allocate services={} chains={} ms={best:.1} feasible={} cores={cores:.2}",
        services.len(),
        chains.len(),
        a.feasible
    );
}
