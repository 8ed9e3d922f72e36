//! `scripts/release.sh` builds both images and pushes them to a real
//! registry (Debian's `docker-registry` on loopback); pulled back, each is
//! what its user needs:
//! - the filter's is what Istio's WasmPlugin fetcher accepts (one layer,
//!   `application/vnd.oci.image.layer.v1.tar+gzip`, holding `plugin.wasm`,
//!   the Wasm image spec's `compat` variant), and its `plugin.wasm` is the
//!   built filter byte for byte;
//! - the agent's holds one static binary (no program interpreter, so no
//!   base image is needed) as its entrypoint, run as a non-root user, and
//!   the binary runs from the image's files with an empty environment.
//!
//! Needs umoci, skopeo and docker-registry (`apt-get install -y umoci skopeo
//! docker-registry`, or `bash scripts/setup.sh`), the filter built
//! (`cargo build --release --target wasm32-wasip1 -p meshtune-filter`) and
//! the static agent binary `scripts/test.sh` builds for this test (the
//! command is in the failure message).

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_lab::envoy::{find_wasm, repo_root};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y umoci skopeo docker-registry (or bash scripts/setup.sh)";

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
}

/// The static agent binary `scripts/test.sh` builds before the tests.
fn static_agent() -> PathBuf {
    let p = target_dir().join("images/meshtune-agent-static");
    assert!(
        p.is_file(),
        "{} not found; build it with `cargo rustc --locked -p meshtune-agent --bin meshtune-agent -- -C target-feature=+crt-static -C strip=debuginfo && mkdir -p {dir} && cp {target}/debug/meshtune-agent {dir}/meshtune-agent-static`",
        p.display(),
        dir = target_dir().join("images").display(),
        target = target_dir().display(),
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}; {INSTALL}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry on loopback, storing into a temporary directory.
struct Registry {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("docker-registry: {e}; {INSTALL}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while meshtune_lab::http::get_blocking(port, "/v2/").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image as pulled into an OCI layout: its manifest and config, and its
/// layers' files (path → (mode, bytes)).
struct Pulled {
    manifest: Value,
    config: Value,
    layers: Vec<std::collections::BTreeMap<String, (u32, Vec<u8>)>>,
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

fn pull(registry: u16, name: &str, tag: &str, into: &Path) -> Pulled {
    let layout = into.join(name);
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://127.0.0.1:{registry}/{name}:{tag}"),
        &format!("oci:{}:{tag}", layout.display()),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let manifest: Value =
        serde_json::from_slice(&blob(&layout, m["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let bytes = blob(&layout, l["digest"].as_str().unwrap());
            let mut files = std::collections::BTreeMap::new();
            // umoci writes the layer as several gzip members (as Go's reader, used by Istio, takes them).
            let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&bytes[..]));
            for entry in archive.entries().unwrap() {
                let mut e = entry.unwrap();
                if e.header().entry_type().is_file() {
                    let path = e.path().unwrap().to_string_lossy().into_owned();
                    let mode = e.header().mode().unwrap();
                    let mut content = Vec::new();
                    e.read_to_end(&mut content).unwrap();
                    files.insert(path.trim_start_matches("./").to_owned(), (mode, content));
                }
            }
            files
        })
        .collect();
    Pulled {
        manifest,
        config,
        layers,
    }
}

/// Whether an ELF file names a program interpreter (a `PT_INTERP` header):
/// a dynamically linked binary does, a static one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    let u = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&elf[at..at + n]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    (0..phnum).any(|i| u(phoff + i * phentsize, 4) == 3)
}

#[test]
fn release_builds_both_images_pushes_them_and_they_pull_back_as_istio_and_kubernetes_need() {
    let agent_bin = static_agent();
    let wasm = find_wasm("meshtune_filter.wasm").unwrap_or_else(|e| panic!("{e:#}"));
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let tag = "0.0.0-test";
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .args(["--out"])
        .arg(work.path().join("layouts"))
        .arg("--agent-bin")
        .arg(&agent_bin)
        .arg("--filter-wasm")
        .arg(&wasm)
        .args(["--tls-verify", "false"])
        .arg(format!("127.0.0.1:{}", registry.port))
        .arg(tag));
    assert!(out.contains("pushed."), "{out}");

    // The filter, as Istio's fetcher reads it.
    let filter = pull(registry.port, "meshtune-filter", tag, work.path());
    assert_eq!(
        filter.manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    assert_eq!(filter.layers.len(), 1, "Istio takes exactly one layer");
    let plugin: Vec<_> = filter.layers[0]
        .iter()
        .filter(|(p, _)| Path::new(p).file_name() == Some("plugin.wasm".as_ref()))
        .collect();
    assert_eq!(plugin.len(), 1, "{:?}", filter.layers[0].keys());
    assert!(
        plugin[0].1 .1 == std::fs::read(&wasm).unwrap(),
        "plugin.wasm is the built filter"
    );

    // The agent: one static binary as the entrypoint, not root.
    let agent = pull(registry.port, "meshtune-agent", tag, work.path());
    assert_eq!(agent.layers.len(), 1);
    assert_eq!(
        agent.layers[0].keys().collect::<Vec<_>>(),
        vec!["usr/local/bin/meshtune-agent"],
        "nothing but the binary"
    );
    let (mode, binary) = &agent.layers[0]["usr/local/bin/meshtune-agent"];
    assert_eq!(mode & 0o111, 0o111, "executable: {mode:o}");
    assert!(
        !has_interpreter(binary),
        "a static binary needs no base image"
    );
    assert!(binary == &std::fs::read(&agent_bin).unwrap());
    let c = &agent.config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/meshtune-agent"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["run"]));
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(agent.config["os"], "linux");
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], tag);
    // It runs from the image's own files, with nothing from the host's environment.
    let extracted = work.path().join("agent-from-image");
    std::fs::write(&extracted, binary).unwrap();
    std::fs::set_permissions(
        &extracted,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let help = run(Command::new(&extracted).arg("--help").env_clear());
    assert!(help.contains("meshtune node agent"), "{help}");
}
