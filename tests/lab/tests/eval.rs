//! The eval's mechanics on a short run (two arms): each arm ran under its
//! own configuration (read back from Envoy's `/config_dump`), the verdict
//! covers every trace minute of both chains, and the CSV and the SVG are
//! written. The verdict's counting is checked on a hand-computed case in
//! `src/eval/verdict.rs`; the outcome ratios are a benchmark, not asserted.
//!
//! Needs Envoy and the built filter, like the end-to-end tests.

use meshtune_lab::eval::{eval, outcome_line, Arm, EvalOptions};
use meshtune_lab::faults::{scenarios_dir, Schedule};

/// Three trace minutes of WorldCup98 at up to 40 req/s, no faults.
fn short_eval(arms: Vec<Arm>, out: &std::path::Path) -> EvalOptions {
    EvalOptions {
        trace: meshtune_lab::trace::traces_dir().join("worldcup98_1min.csv"),
        offset: 80_000,
        minutes: 3,
        peak_rps: 40.0,
        seconds_per_minute: 6.0,
        faults: None,
        arms,
        repeat: 1,
        out: out.to_path_buf(),
        capacity: Default::default(),
        chains: Default::default(),
        cpu_bound: false,
        record_limits: false,
        static_headroom: meshtune_lab::eval::resources::STATIC_HEADROOM,
        poisson_arrivals: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_eval_runs_each_arm_under_its_own_configuration_and_writes_its_files() {
    let out = tempfile::tempdir().unwrap();
    let names =
        meshtune_lab::replicas::replica_names(&meshtune_lab::services::bookinfo_with_versions());
    let faults = Schedule::load(&scenarios_dir().join("reviews-v2-errors.yaml"), &names).unwrap();
    let o = EvalOptions {
        minutes: 4,
        faults: Some(("reviews-v2-errors".into(), faults)),
        ..short_eval(vec![Arm::Static, Arm::Meshtune], out.path())
    };
    let runs = eval(&o)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (needs Envoy and the filter: bash scripts/setup.sh)"));
    assert_eq!(runs.len(), 2);
    let (st, mt) = (&runs[0], &runs[1]);
    assert_eq!((st.arm, mt.arm), (Arm::Static, Arm::Meshtune));
    // Each arm's configuration, as Envoy ran it.
    assert!(st.reviews_cluster.is_object(), "{}", st.reviews_cluster);
    assert!(
        st.reviews_cluster.get("outlier_detection").is_none(),
        "static runs Istio's defaults: {}",
        st.reviews_cluster
    );
    assert!(
        mt.reviews_cluster["outlier_detection"].is_object(),
        "meshtune's DestinationRule is in force: {}",
        mt.reviews_cluster
    );
    assert_eq!(st.changes, 0, "nothing writes configuration under static");
    assert!(mt.changes > 0, "the agent wrote its objects under meshtune");
    // Every chain has verdicts covering the run, from the client's records.
    for r in &runs {
        for chain in ["product-page", "ratings-api"] {
            let w: Vec<_> = r.windows.iter().filter(|w| w.chain == chain).collect();
            assert!(!w.is_empty(), "{} {chain}: no window", r.arm.name());
            assert_eq!(w[0].first, 0);
            assert_eq!(
                w.last().unwrap().last,
                o.minutes - 1,
                "{} {chain}",
                r.arm.name()
            );
        }
        assert!(r.offered > 0 && r.good <= r.offered);
        assert!(r.cpu_total() > 0.0, "CPU read from /proc");
    }
    // The fault bit under static (reviews-2 erring from 20 s: minutes 3 and 4).
    assert!(st.violating() > 0, "static: {:?}", st.windows);
    let line = outcome_line(&runs, &o.arms);
    assert!(
        line.starts_with("outcome violating_windows static="),
        "{line}"
    );
    assert!(
        line.contains(" meshtune=") && line.contains("cpu_ratio_meshtune_vs_static="),
        "{line}"
    );
    let csv = std::fs::read_to_string(out.path().join("windows.csv")).unwrap();
    assert!(
        csv.lines().any(|l| l.starts_with("static,1,product-page,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("meshtune,1,ratings-api,")),
        "{csv}"
    );
    // Each arm's decision log beside the verdict: meshtune's agent applied
    // DestinationRules, static's none.
    let written = |arm: &str| -> usize {
        let path = out.path().join(format!("decisions-{arm}-1.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["mode"] == "applied")
            .filter(|d| {
                d["object"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("DestinationRule ")
            })
            .count()
    };
    assert!(
        written("meshtune") > 0,
        "meshtune's decision log holds its DestinationRules"
    );
    assert_eq!(written("static"), 0);
    // Every sidecar's statistics beside them: the erring replica's 500s
    // reached the callers under static; meshtune's filter counted requests.
    let stats =
        |arm: &str| std::fs::read_to_string(out.path().join(format!("stats-{arm}-1.txt"))).unwrap();
    let (st_stats, mt_stats) = (stats("static"), stats("meshtune"));
    for svc in ["productpage", "reviews-2", "ratings"] {
        assert!(st_stats.contains(&format!("== {svc}\n")), "{st_stats}");
    }
    assert!(st_stats.contains("upstream_rq_500"), "{st_stats}");
    assert!(!st_stats.contains("meshtune_requests_total"));
    assert!(mt_stats.contains("meshtune_requests_total"), "{mt_stats}");
    assert!(
        !st_stats.lines().any(|l| l.ends_with(": 0")),
        "only non-zero statistics"
    );
    let svg = std::fs::read_to_string(out.path().join("eval.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("product-page"),
        "an SVG plot of both chains"
    );
}

/// The resource arms' mechanics: an unlimited calibration run, then each
/// arm under its own quotas (what they used stayed within what they were
/// allocated), VPA-like below the generous static sizing, and the
/// `resources` line naming every resource arm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_arms_run_under_their_own_quotas() {
    use meshtune_lab::eval::resources_line;
    let out = tempfile::tempdir().unwrap();
    let arms = vec![Arm::StaticResources, Arm::VpaLike, Arm::MeshtuneResources];
    let o = short_eval(arms.clone(), out.path());
    let runs = eval(&o)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (needs Envoy, the filter and root for cgroups)"));
    assert_eq!(runs.iter().map(|r| r.arm).collect::<Vec<_>>(), arms);
    for r in &runs {
        assert!(r.allocated_cpu_s > 0.0, "{}", r.arm.name());
        assert!(
            r.cpu_s.0 <= r.allocated_cpu_s * 1.1,
            "{}: used {:.2} CPU-s of {:.2} allocated",
            r.arm.name(),
            r.cpu_s.0,
            r.allocated_cpu_s
        );
        assert!((0.0..=1.0).contains(&r.fairness));
    }
    assert!(
        runs[1].allocated_cpu_s < runs[0].allocated_cpu_s,
        "vpa-like {:.1} vs static {:.1}",
        runs[1].allocated_cpu_s,
        runs[0].allocated_cpu_s
    );
    let line = resources_line(&runs, &o.arms).expect("a resources line");
    for a in &arms {
        assert!(line.contains(&format!("{}=", a.name())), "{line}");
    }
    assert!(line.starts_with("resources windows="), "{line}");
    let ratio = format!(
        "cpu_allocated_vs_static vpa-like={:.2}",
        runs[1].allocated_cpu_s / runs[0].allocated_cpu_s
    );
    assert!(line.contains(&ratio), "{line}");
}
