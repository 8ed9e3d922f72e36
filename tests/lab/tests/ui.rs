//! The agent's page (`/ui`) in a real headless Chromium, on a lab under
//! load with the agent tuning in `apply` mode: it loads without a console
//! message, shows both lab chains with the rps `/v1/chains` reports, the
//! mode, and the objects meshtune holds; and a screenshot is written.
//!
//! Needs Envoy (`bash scripts/setup.sh`), the built filter
//! (`cargo build --release --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter`)
//! and Chromium (`apt-get install -y chromium`). A missing part fails the
//! test with the command that installs it.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_lab::chromium;
use meshtune_lab::http::get_blocking;
use meshtune_lab::load::open_loop;
use meshtune_lab::mesh::{Mesh, MeshOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn chains(agent_port: u16) -> BTreeMap<String, f64> {
    let (_, body) = get_blocking(agent_port, "/v1/chains").unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["chains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["chain"].as_str().unwrap().to_owned(),
                c["rps"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn recommendations(agent_port: u16) -> Value {
    let (_, body) = get_blocking(agent_port, "/v1/recommendations").unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_default()
}

/// `(chain, rps)` of every chain section in the page's DOM, in order.
fn chains_on_page(dom: &str) -> Vec<(String, f64)> {
    dom.split("<section class=\"chain")
        .skip(1)
        .map(|s| {
            let attr = |name: &str| {
                let start = s
                    .find(&format!("{name}=\""))
                    .unwrap_or_else(|| panic!("no {name} in {s}"))
                    + name.len()
                    + 2;
                s[start..].split('"').next().unwrap().to_owned()
            };
            (attr("data-chain"), attr("data-rps").parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_both_chains_live_rps_and_what_meshtune_holds_without_console_errors() {
    chromium::find_chromium().unwrap_or_else(|e| panic!("{e:#}"));
    // The agent on trace time (a trace minute every 2 s); windows of five
    // trace minutes (10 s) keep each chain's rps steady under steady load.
    let mesh = Mesh::start(MeshOptions {
        tune: true,
        agent_seconds_per_minute: Some(2.0),
        agent_window_secs: 300,
        ..MeshOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let port = mesh.entry_port;
    let load = tokio::spawn(async move {
        open_loop(
            port,
            &[20.0; 120],
            Duration::from_secs(1),
            &[("/productpage", 2), ("/api/v1/ratings/1", 1)],
            &stop,
        )
        .await
    });

    // Wait for both chains with a full window of load, and the first objects.
    let agent = mesh.agent_port;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = chains(agent);
        let objects = recommendations(agent)["objects"]
            .as_object()
            .map_or(0, |o| o.len());
        if seen.len() == 2 && seen.values().all(|r| *r > 1.0) && objects > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no steady chains and objects after 90 s: {seen:?}, {objects} objects"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;

    let url = format!("http://127.0.0.1:{agent}/ui/");
    let before = chains(agent);
    let loaded = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium::load(&url, Duration::from_secs(4))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"));
    let after = chains(agent);
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("meshtune-ui.png");
    let _ = std::fs::remove_file(&png);
    tokio::task::spawn_blocking({
        let png = png.clone();
        move || chromium::screenshot(&url, &png, 1280, 1800, Duration::from_secs(4))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"));
    let _ = stop_tx.send(true);
    load.await.unwrap();

    assert!(
        loaded.console.is_empty(),
        "the page printed to the console: {:#?}",
        loaded.console
    );
    let dom = &loaded.dom;
    assert!(
        dom.contains("id=\"problem\" class=\"problem\" hidden"),
        "the page reports a problem reading the agent: {dom}"
    );
    let shown = chains_on_page(dom);
    assert_eq!(
        shown.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
        before.keys().cloned().collect::<Vec<_>>(),
        "every chain /v1/chains reports, in its order"
    );
    for (chain, rps) in &shown {
        // The page read /v1/chains between the two readings here.
        let lo = before[chain].min(after[chain]) * 0.8;
        let hi = before[chain].max(after[chain]) * 1.2;
        assert!(
            (lo..=hi).contains(rps),
            "{chain}: the page shows {rps} rps, /v1/chains {} before and {} after",
            before[chain],
            after[chain]
        );
    }
    assert!(dom.contains("mode: apply"), "the mode is shown");
    // Each object meshtune holds appears in the configuration of a chain.
    let report = recommendations(agent);
    for name in report["objects"].as_object().unwrap().keys() {
        assert!(dom.contains(name.as_str()), "{name} is not on the page");
    }
    // The three charts per chain were drawn (uPlot draws into a canvas).
    assert_eq!(dom.matches("<canvas").count(), 3 * shown.len(), "charts");
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 20_000, "{} is {size} bytes", png.display());
    println!("screenshot: {}", png.display());
}
