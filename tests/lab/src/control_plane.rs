//! The lab's control plane: what istiod does in a cluster for the fields
//! meshtune writes. It reads DestinationRule and VirtualService objects from
//! directories (the user's, and the agent's directory sink), turns them into
//! each sidecar's outbound clusters and routes ([`crate::istio`]) and writes
//! them as the sidecar's CDS and RDS files, replaced by atomic rename so
//! Envoy picks the change up without restarting. A file that does not parse
//! and a field it cannot translate are reported with the file and the
//! field path, and change nothing.

use crate::istio::{
    apply_destination_rule, apply_http_route, default_cluster, default_route_action,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One upstream service a sidecar calls.
#[derive(Debug, Clone)]
pub struct UpstreamService {
    pub service: String,
    pub namespace: String,
    pub port: u16,
    /// The replicas' addresses (`127.0.0.1`, port).
    pub endpoints: Vec<(String, u16)>,
}

impl UpstreamService {
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.service, self.namespace)
    }

    /// Istio's outbound cluster name for the service's port.
    pub fn cluster_name(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host())
    }
}

/// A sidecar's outbound side: where its xDS files go and what it calls.
#[derive(Debug, Clone)]
pub struct SidecarXds {
    pub name: String,
    pub xds_dir: PathBuf,
    pub upstreams: Vec<UpstreamService>,
}

/// The name of the outbound route configuration (Istio names it by port).
pub const ROUTE_CONFIG: &str = "9080";

/// An object read from a directory, with the file it came from and when
/// that file was last written (the oldest object for a host wins, as the
/// oldest by creation time does in istiod).
#[derive(Debug, Clone)]
pub struct Sourced {
    pub file: PathBuf,
    pub written: std::time::SystemTime,
    pub object: Value,
}

/// Reads every YAML document of every `.yaml`/`.yml` file in `dirs`;
/// files that do not parse are returned as problems.
pub fn read_objects(dirs: &[PathBuf]) -> (Vec<Sourced>, Vec<String>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        for file in files {
            let (Ok(text), Ok(meta)) = (std::fs::read_to_string(&file), std::fs::metadata(&file))
            else {
                continue;
            };
            let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                match <Value as serde::Deserialize>::deserialize(doc) {
                    Ok(Value::Null) => {}
                    Ok(object) => objects.push(Sourced {
                        file: file.clone(),
                        written,
                        object,
                    }),
                    Err(e) => {
                        problems.push(format!("{}: not applied: {e}", file.display()));
                        break;
                    }
                }
            }
        }
    }
    (objects, problems)
}

/// The hosts an object names, fully qualified in its namespace.
fn hosts(kind: &str, o: &Value) -> Vec<String> {
    let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
    let raw: Vec<&str> = match kind {
        "DestinationRule" => o["spec"]["host"].as_str().into_iter().collect(),
        _ => o["spec"]["hosts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default(),
    };
    raw.into_iter()
        .map(|h| meshtune_agent::plan::qualify_host(h, ns))
        .collect()
}

/// What one pass computed for one sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarConfig {
    pub clusters: Vec<Value>,
    pub routes: Value,
}

/// Which object configures each host, per kind: the oldest, the others
/// reported as conflicts.
fn pick<'a>(
    objects: &'a [Sourced],
    kind: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, &'a Sourced> {
    let mut by_host: BTreeMap<String, &Sourced> = BTreeMap::new();
    let mut of_kind: Vec<&Sourced> = objects
        .iter()
        .filter(|o| o.object["kind"] == kind)
        .collect();
    of_kind.sort_by_key(|o| (o.written, o.file.clone()));
    for o in of_kind {
        for h in hosts(kind, &o.object) {
            match by_host.get(&h) {
                Some(first) => problems.push(format!(
                    "{kind} {} ({}) and {} ({}) both configure {h}: the older, {}, is applied",
                    first.object["metadata"]["name"],
                    first.file.display(),
                    o.object["metadata"]["name"],
                    o.file.display(),
                    first.object["metadata"]["name"]
                )),
                None => {
                    by_host.insert(h, o);
                }
            }
        }
    }
    by_host
}

/// The clusters and routes of every sidecar for `objects` (pure).
pub fn compute(
    sidecars: &[SidecarXds],
    objects: &[Sourced],
) -> (BTreeMap<String, SidecarConfig>, Vec<String>) {
    let mut problems = Vec::new();
    let rules = pick(objects, "DestinationRule", &mut problems);
    let services = pick(objects, "VirtualService", &mut problems);
    let mut out = BTreeMap::new();
    for s in sidecars {
        let mut clusters = Vec::new();
        let mut vhosts = Vec::new();
        for u in &s.upstreams {
            let host = u.host();
            let mut cluster = default_cluster(&u.cluster_name(), &u.endpoints);
            if let Some(dr) = rules.get(&host) {
                let mut candidate = cluster.clone();
                match apply_destination_rule(&mut candidate, &dr.object["spec"]) {
                    Ok(()) => cluster = candidate,
                    Err(e) => problems.push(format!("{}: {e}", dr.file.display())),
                }
            }
            let mut action = default_route_action(&u.cluster_name());
            if let Some(vs) = services.get(&host) {
                let http = &vs.object["spec"]["http"];
                let mut candidate = action.clone();
                let applied = match http.as_array().map(Vec::as_slice) {
                    Some([one]) => apply_http_route(&mut candidate, one, "spec.http[0]"),
                    _ => Err(crate::istio::Untranslated {
                        path: "spec.http".into(),
                        message: "exactly one http route (matches are not translated yet)".into(),
                    }),
                };
                match applied {
                    Ok(()) => action = candidate,
                    Err(e) => problems.push(format!("{}: {e}", vs.file.display())),
                }
            }
            clusters.push(cluster);
            vhosts.push(json!({
                "name": format!("{host}:{}", u.port),
                "domains": [u.service.clone(), format!("{}:{}", u.service, u.port), host.clone(), format!("{host}:{}", u.port)],
                "routes": [{"match": {"prefix": "/"}, "route": action}]
            }));
        }
        let routes = json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": ROUTE_CONFIG,
            "virtual_hosts": vhosts
        });
        out.insert(s.name.clone(), SidecarConfig { clusters, routes });
    }
    problems.sort();
    problems.dedup();
    (out, problems)
}

/// Writes `resources` as an xDS file by atomic rename; unchanged files are
/// left alone (Envoy would reload them for nothing).
pub fn write_xds(dir: &Path, file: &str, resources: Vec<Value>) -> std::io::Result<bool> {
    let text = json!({"resources": resources}).to_string();
    let path = dir.join(file);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// One pass: read, compute, write what changed. Returns the problems.
pub fn pass(sidecars: &[SidecarXds], dirs: &[PathBuf]) -> Vec<String> {
    let (objects, mut problems) = read_objects(dirs);
    let (configs, more) = compute(sidecars, &objects);
    problems.extend(more);
    for s in sidecars {
        let Some(c) = configs.get(&s.name) else {
            continue;
        };
        let wrote = write_xds(&s.xds_dir, "cds.json", c.clusters.clone())
            .and_then(|_| write_xds(&s.xds_dir, "rds.json", vec![c.routes.clone()]));
        if let Err(e) = wrote {
            problems.push(format!("{}: writing its configuration: {e}", s.name));
        }
    }
    problems
}

/// The CDS and RDS sources of a sidecar whose files are in `xds_dir`.
pub fn config_source(xds_dir: &Path, file: &str) -> Value {
    json!({"path_config_source": {"path": xds_dir.join(file).display().to_string(),
        "watched_directory": {"path": xds_dir.display().to_string()}}, "resource_api_version": "V3"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(dir: &Path) -> SidecarXds {
        SidecarXds {
            name: "productpage".into(),
            xds_dir: dir.to_path_buf(),
            upstreams: vec![UpstreamService {
                service: "reviews".into(),
                namespace: "bookinfo".into(),
                port: 9080,
                endpoints: vec![("127.0.0.1".into(), 9)],
            }],
        }
    }

    #[test]
    fn a_pass_writes_defaults_then_the_rule_and_reports_what_it_cannot_apply() {
        let (xds, user) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = vec![sidecar(xds.path())];
        let dirs = vec![user.path().to_path_buf()];
        assert!(pass(&s, &dirs).is_empty());
        let cds: Value =
            serde_json::from_str(&std::fs::read_to_string(xds.path().join("cds.json")).unwrap())
                .unwrap();
        assert_eq!(cds["resources"][0]["lb_policy"], "LEAST_REQUEST");
        std::fs::write(
            user.path().join("reviews.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n    timeout: 2s\n",
        )
        .unwrap();
        assert!(pass(&s, &dirs).is_empty());
        let cds: Value =
            serde_json::from_str(&std::fs::read_to_string(xds.path().join("cds.json")).unwrap())
                .unwrap();
        assert_eq!(cds["resources"][0]["lb_policy"], "ROUND_ROBIN");
        let rds: Value =
            serde_json::from_str(&std::fs::read_to_string(xds.path().join("rds.json")).unwrap())
                .unwrap();
        assert_eq!(
            rds["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
            "2s"
        );
        // An untranslatable field: reported by file and path, the rest stays.
        std::fs::write(
            user.path().join("reviews.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n",
        )
        .unwrap();
        let problems = pass(&s, &dirs);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("reviews.yaml") && p.contains("spec.trafficPolicy.tls")),
            "{problems:?}"
        );
        // A file that does not parse is reported.
        std::fs::write(user.path().join("broken.yaml"), "kind: [unclosed").unwrap();
        let problems = pass(&s, &dirs);
        assert!(
            problems.iter().any(|p| p.contains("broken.yaml")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_oldest_object_for_a_host_wins_and_the_conflict_is_reported() {
        let dr = |name: &str, lb: &str| {
            json!({"kind": "DestinationRule", "metadata": {"name": name, "namespace": "bookinfo"},
                   "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": lb}}}})
        };
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let objects = vec![
            Sourced {
                file: "b.yaml".into(),
                written: t0 + std::time::Duration::from_secs(5),
                object: dr("newer", "RANDOM"),
            },
            Sourced {
                file: "a.yaml".into(),
                written: t0,
                object: dr("older", "ROUND_ROBIN"),
            },
        ];
        let (configs, problems) = compute(&[sidecar(Path::new("/nonexistent"))], &objects);
        assert_eq!(
            configs["productpage"].clusters[0]["lb_policy"],
            "ROUND_ROBIN"
        );
        assert!(
            problems[0].contains("both configure reviews.bookinfo.svc.cluster.local"),
            "{problems:?}"
        );
    }
}
