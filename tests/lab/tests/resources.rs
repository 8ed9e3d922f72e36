//! The lab enforces a service's CPU the way a cluster does: its replicas
//! run under a CFS quota (`Mesh::limit_service_cpu`), so a service given
//! too little CPU answers slower and uses no more than it was given.
//! Needs root and a writable cpu controller (it fails naming the fix).

use meshtune_lab::load::closed_loop;
use meshtune_lab::mesh::{Mesh, MeshOptions};
use meshtune_lab::services;
use std::time::Instant;

/// Median latency (ms) of `n` requests straight to the ratings replica,
/// two in flight, and the cores it used meanwhile.
async fn ratings_p50_and_cores(mesh: &Mesh, n: usize) -> (f64, f64) {
    let r = &mesh.replicas["ratings"];
    let (t0, c0) = (Instant::now(), r.cpu_seconds().expect("ratings runs"));
    let out = closed_loop(r.app_port, vec!["/ratings/0".into(); n], 2, "cpu").await;
    let cores = (r.cpu_seconds().expect("ratings runs") - c0) / t0.elapsed().as_secs_f64();
    assert!(out.iter().all(|o| o.status == 200), "ratings failed");
    let mut ms: Vec<f64> = out.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], cores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_limit_slows_the_service_and_caps_what_it_uses() {
    let mut svcs = services::bookinfo();
    for s in &mut svcs {
        if s.name == "ratings" {
            // 4 ms of CPU per request, nothing else: CPU-bound.
            s.cpu_us = 4000;
            s.base_us = 4000;
            s.tail_us = 0;
        }
    }
    let mut mesh = Mesh::start(MeshOptions {
        services: svcs,
        filter: false,
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (free_ms, _) = ratings_p50_and_cores(&mesh, 200).await;
    mesh.limit_service_cpu("ratings", Some(0.1))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(mesh.replicas["ratings"].cpu_limit(), Some(0.1));
    let (limited_ms, cores) = ratings_p50_and_cores(&mesh, 100).await;
    println!("ratings p50 {free_ms:.1} ms unlimited, {limited_ms:.1} ms at 0.1 core using {cores:.3} cores");
    // Two requests of 4 ms CPU each in flight on 0.1 core: about 80 ms each.
    assert!(
        limited_ms > 4.0 * free_ms,
        "p50 {limited_ms:.1} ms at 0.1 core vs {free_ms:.1} ms unlimited"
    );
    assert!(
        cores <= 0.15,
        "used {cores:.3} cores under a 0.1-core limit"
    );
    // Lifted, it is fast again.
    mesh.limit_service_cpu("ratings", None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (lifted_ms, _) = ratings_p50_and_cores(&mesh, 200).await;
    assert!(
        lifted_ms < limited_ms / 3.0,
        "{lifted_ms:.1} ms after lifting"
    );
    assert!(mesh.limit_service_cpu("nope", Some(1.0)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_sweep_measures_what_the_service_burns() {
    use meshtune_lab::cpu_model::{fit, sweep, SweepOptions};
    let o = SweepOptions {
        cpu_us: 3000,
        quotas: vec![0.3, 0.9],
        utilisations: vec![0.5],
        seconds: 2.0,
    };
    let points = sweep(&o, |p| println!("{p}"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(points.len(), 2);
    for p in &points {
        assert_eq!(p.failed, 0, "{p:?}");
        // What the process burns per request is the service's 3 ms of CPU
        // plus its HTTP handling.
        assert!(
            (0.0025..0.006).contains(&p.cpu_s_per_request),
            "{:.2} ms of CPU per request",
            p.cpu_s_per_request * 1e3
        );
    }
    // The same utilisation on 3 × the cores is 3 × the load.
    assert!((points[1].rps / points[0].rps - 3.0).abs() < 1e-9);
    let f = fit(&points);
    assert!((0.0025..0.006).contains(&f.demand_s), "{f:?}");
}

/// The loop closed: the agent measures each service's CPU per request from
/// the replicas' cgroups, plans the least CPU that keeps both chains
/// within their objectives, writes each service's Deployment resources
/// through its directory sink, and the control plane puts that quota on
/// the replicas, as the kubelet would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sizes_each_service_and_the_lab_enforces_it() {
    use meshtune_lab::services::cpu_bound_services;
    let specs = cpu_bound_services();
    let ratings_cpu_ms = specs
        .iter()
        .find(|s| s.name == "ratings")
        .map(|s| s.cpu_us as f64 / 1e3)
        .expect("ratings");
    let mesh = Mesh::start(MeshOptions {
        services: specs,
        tune: true,
        agent_sizes_resources: true,
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let port = mesh.entry_port;
    let load = tokio::spawn(async move {
        meshtune_lab::load::open_loop(
            port,
            &[40.0; 60],
            std::time::Duration::from_secs(1),
            &[("/productpage", 1), ("/api/v1/ratings/0", 1)],
            &stop,
        )
        .await
    });
    let file = mesh.desired_dir.join("bookinfo.deployment.ratings.yaml");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed().as_secs() < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        let rec = meshtune_lab::http::get_blocking(mesh.agent_port, "/v1/recommendations");
        panic!(
            "no Deployment for ratings in {}: {e}; {rec:?}",
            file.display()
        )
    });
    let limit_in = |text: &str| {
        let object: serde_json::Value = serde_yaml_ng::from_str(text).expect("YAML");
        object["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
            .as_str()
            .and_then(meshtune_agent::plan::deployment::parse_cpu)
            .expect("a CPU limit")
    };
    let mut limit = limit_in(&text);
    // The control plane puts it on the replica's cgroup within a pass or
    // two (the agent may raise it meanwhile: the file's latest is compared).
    let t1 = Instant::now();
    let mut in_force = None;
    while t1.elapsed().as_secs() < 5 {
        if let Ok(t) = std::fs::read_to_string(&file) {
            limit = limit_in(&t);
        }
        in_force = mesh.replicas["ratings"].cpu_limit();
        if in_force.is_some_and(|c| (c - limit).abs() < 1e-3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, body) = meshtune_lab::http::get_blocking(mesh.agent_port, "/v1/recommendations")
        .expect("the agent answers");
    let rec: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let planned = &rec["resources"]["services"]["ratings"];
    println!("ratings: limit {limit} cores written, {in_force:?} in force; plan {planned}");
    assert_eq!(
        in_force.map(|c| (c * 1000.0).round()),
        Some((limit * 1000.0).round())
    );
    // What it measured is the work each request does (the replica's own
    // CPU per request, sidecar excluded), within the noise of a busy box.
    let demand_ms = planned["demand_ms"].as_f64().expect("demand measured");
    assert!(
        (0.5 * ratings_cpu_ms..=2.5 * ratings_cpu_ms).contains(&demand_ms),
        "measured {demand_ms:.2} ms per request, the service burns {ratings_cpu_ms} ms"
    );
    // Enough to serve what it is sent, and no more than the bound.
    let rps = planned["planned_rps"].as_f64().expect("rps");
    assert!(
        limit >= rps * demand_ms / 1e3 / 0.9 - 0.011 && limit <= 2.0,
        "{planned}"
    );
    assert!(rec["objects"]["Deployment bookinfo/ratings"]["reasons"]
        .to_string()
        .contains("CPU per request measured"));
    load.abort();
}
