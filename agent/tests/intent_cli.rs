//! `meshtune-agent intent`: the reading and the change are printed, the
//! file changes only with `--yes` (the previous one kept), and an unknown
//! name is refused with the nearest known one, the file untouched.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const CONFIG: &str = "# the lab's chains\nchains:\n  checkout: {slo_ms: 250}\nslos:\n  ratings-api: 0.05\nservices:\n  reviews: {namespace: bookinfo, chains: [checkout]}\n";

fn intent(file: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtune-agent"))
        .arg("intent")
        .arg("--config")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_sentence_is_read_shown_and_written_only_on_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, CONFIG).unwrap();

    let (ok, out, err) = intent(&file, &["keep checkout p99 under 300 ms"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            r#"reading: {"intent":"objective","chain":"checkout","percentile":99.0,"slo_ms":300.0}"#
        ),
        "{out}"
    );
    assert!(
        out.contains("change: chains.checkout.slo_ms: 250 → 300"),
        "{out}"
    );
    assert!(out.contains("not applied"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        CONFIG,
        "nothing written without --yes"
    );

    let (ok, out, err) = intent(&file, &["--yes", "ratings-api", "is", "low", "priority"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("slos.ratings-api: moved to chains.ratings-api"),
        "{out}"
    );
    let cfg = meshtune_agent::AgentConfig::load(&file).unwrap();
    assert_eq!(cfg.chains["ratings-api"].slo_ms, 50.0);
    assert_eq!(cfg.chains["ratings-api"].priority.as_str(), "low");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent.yaml.bak")).unwrap(),
        CONFIG
    );

    let (ok, _, err) = intent(&file, &["--yes", "give reviews at most 2 CPUs"]);
    assert!(ok, "{err}");
    assert_eq!(
        meshtune_agent::AgentConfig::load(&file).unwrap().services["reviews"].max_cpu,
        Some(2.0)
    );

    let before = std::fs::read_to_string(&file).unwrap();
    let (ok, _, err) = intent(&file, &["--yes", "keep chekout p99 under 300 ms"]);
    assert!(!ok);
    assert!(
        err.contains("no chain 'chekout'; did you mean 'checkout'?"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "a refused sentence writes nothing"
    );
}
