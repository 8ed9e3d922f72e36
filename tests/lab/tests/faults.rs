//! A shipped fault scenario through the whole loop: reviews as Bookinfo
//! ships it (v1, v2, v3, each replica its own process and sidecar), and
//! `reviews-v2-errors` making reviews-2 answer 500 to 90 % of its requests
//! from 20 s on. Under Istio's defaults nothing ejects it (no outlier
//! detection; the default retries skip 500s) and the product page fails
//! for a share of users; with meshtune the agent's DestinationRule turns
//! outlier detection on, Envoy ejects reviews-2, and the chain's error
//! share falls.
//!
//! Needs Envoy and the built filter, like the end-to-end tests.

use meshtune_lab::faults::{self, Runner, Schedule};
use meshtune_lab::load::{open_loop, OpenLoopOutcome};
use meshtune_lab::mesh::{Mesh, MeshOptions};
use meshtune_lab::replicas::replica_names;
use meshtune_lab::services::bookinfo_with_versions;
use std::time::{Duration, Instant};

/// Offered load on the product page (requests per second).
const RPS: f64 = 30.0;
/// Seconds run before the measured part (the fault starts at 20 s).
const SETTLE_S: usize = 28;
/// Seconds measured.
const MEASURED_S: usize = 17;

struct Run {
    /// Ejections of reviews endpoints by productpage's sidecar.
    ejections: u64,
    /// Product-page requests not answered 200 in the measured part.
    error_share: f64,
    /// Requests reviews-2 answered with the injected 500.
    faulted: u64,
}

async fn run(meshtune: bool) -> Run {
    let services = bookinfo_with_versions();
    let names = replica_names(&services);
    let schedule = Schedule::load(
        &faults::scenarios_dir().join("reviews-v2-errors.yaml"),
        &names,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut mesh = Mesh::start(MeshOptions {
        agent_window_secs: 30,
        control: meshtune,
        tune: meshtune,
        services,
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} (needs Envoy and the filter: bash scripts/setup.sh)"));
    let entry = mesh.entry_port;
    let start = Instant::now();
    let settle = tokio::spawn(async move {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        open_loop(
            entry,
            &[RPS; SETTLE_S],
            Duration::from_secs(1),
            &[("/productpage", 1)],
            &rx,
        )
        .await
    });
    let mut runner = Runner::new(&schedule);
    let mut applied = 0;
    while !settle.is_finished() {
        for (_, a) in runner.due(start.elapsed().as_secs_f64()) {
            tokio::task::block_in_place(|| faults::apply(&mut mesh, &a)).unwrap();
            applied += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        applied, 1,
        "the scenario's fault started during the settling part"
    );
    settle.await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let measured: OpenLoopOutcome = open_loop(
        entry,
        &[RPS; MEASURED_S],
        Duration::from_secs(1),
        &[("/productpage", 1)],
        &rx,
    )
    .await;
    let admin = mesh.envoys["productpage"].admin_port;
    let ejections = meshtune_lab::envoy::ejections(admin)
        .into_iter()
        .filter(|(c, _)| c.contains("reviews"))
        .map(|(_, n)| n)
        .sum();
    let faulted = mesh.replicas["reviews-2"].stats().map_or(0, |s| s.faulted);
    assert!(measured.sent > 0, "the measured part sent requests");
    Run {
        ejections,
        error_share: (measured.sent - measured.ok) as f64 / measured.sent as f64,
        faulted,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshtunes_outlier_detection_ejects_the_erring_replica_and_istios_defaults_do_not() {
    let defaults = run(false).await;
    let tuned = run(true).await;
    eprintln!(
        "Istio defaults: {} ejections, error share {:.3}, reviews-2 erred {} times; meshtune: {} ejections, error share {:.3}, reviews-2 erred {} times",
        defaults.ejections,
        defaults.error_share,
        defaults.faulted,
        tuned.ejections,
        tuned.error_share,
        tuned.faulted
    );
    assert!(
        defaults.faulted > 0 && tuned.faulted > 0,
        "the fault was in force in both runs"
    );
    assert_eq!(
        defaults.ejections, 0,
        "Istio's defaults have no outlier detection"
    );
    assert!(
        defaults.error_share > 0.05,
        "under Istio's defaults the erring replica fails users' requests: {:.3}",
        defaults.error_share
    );
    assert!(
        tuned.ejections > 0,
        "meshtune's outlier detection ejected reviews-2"
    );
    assert!(
        tuned.error_share < defaults.error_share / 2.0,
        "the chain's error share fell: {:.3} with meshtune vs {:.3}",
        tuned.error_share,
        defaults.error_share
    );
}
