//! `bench filter --instructions` on real Envoy under valgrind: the counts
//! come out, and they order the variants as their work does. Needs valgrind
//! (`bash scripts/setup.sh` installs it) and the built filters.

use meshtune_lab::bench::{filter, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instruction_counts_order_the_variants_by_their_work() {
    assert!(
        std::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok(),
        "valgrind is missing: run `bash scripts/setup.sh` (or `sudo apt-get install -y valgrind`)"
    );
    let results = filter(BenchOptions {
        rounds: 1,
        requests: 400,
        concurrency: 2,
        variants: ["none", "noop", "meshtune"].map(String::from).to_vec(),
        instructions: true,
    })
    .await
    .expect("the benchmark runs");
    let count = |name: &str| {
        let r = results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} measured: {results:?}"));
        assert_eq!((r.requests, r.failed), (400, 0), "{r:?}");
        r.instructions_per_request
            .unwrap_or_else(|| panic!("{name} has an instruction count"))
    };
    let (none, noop, meshtune) = (count("none"), count("noop"), count("meshtune"));
    // Envoy alone proxies a request in well over 50,000 instructions; each
    // wasm layer adds to it, meshtune (headers, clock, stats) more than a no-op.
    assert!(none > 50_000.0, "none: {none}");
    assert!(
        noop > none && meshtune > noop,
        "{none} < {noop} < {meshtune}"
    );
    assert!(meshtune < 2.0 * noop, "meshtune {meshtune} vs noop {noop}");
}
