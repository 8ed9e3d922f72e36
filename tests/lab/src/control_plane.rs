//! The lab's control plane: what istiod does in a cluster for the fields
//! meshtune writes. It reads DestinationRule and VirtualService objects from
//! directories (the user's, and the agent's directory sink), turns them into
//! each sidecar's outbound clusters and routes ([`crate::istio`]) and writes
//! them as the sidecar's CDS and RDS files, replaced by atomic rename so
//! Envoy picks the change up without restarting. A file that does not parse
//! and a field it cannot translate are reported with the file and the
//! field path, and change nothing.

pub use crate::istio::Endpoint;
use crate::istio::{
    apply_destination_rule, apply_http_route, default_cluster, default_route_action,
    subset_clusters, subset_names, RouteTarget,
};
use meshtune_agent::plan::Kind;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One upstream service a sidecar calls.
#[derive(Debug, Clone)]
pub struct UpstreamService {
    pub service: String,
    pub namespace: String,
    pub port: u16,
    /// The replicas.
    pub endpoints: Vec<Endpoint>,
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
    /// The sidecar's own locality (`region/zone/subzone`): locality load
    /// balancing ranks endpoints by how near they are to it.
    pub locality: String,
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
        // A directory not there (yet) holds nothing.
        let Ok(files) = meshtune_agent::write::dir::read_yaml_dir(dir) else {
            continue;
        };
        for f in files {
            if let Some(e) = &f.error {
                problems.push(format!("{}: not applied: {e}", f.path.display()));
            }
            objects.extend(f.objects.into_iter().map(|object| Sourced {
                file: f.path.clone(),
                written: f.modified,
                object,
            }));
        }
    }
    (objects, problems)
}

/// The hosts an object names, fully qualified in its namespace.
fn hosts(kind: &str, o: &Value) -> Vec<String> {
    Kind::parse(kind)
        .map(|k| meshtune_agent::write::hosts_of(k, o))
        .unwrap_or_default()
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
            let mut cluster = vec![default_cluster(&u.cluster_name(), &u.endpoints)];
            let mut target = RouteTarget {
                cluster: u.cluster_name(),
                host: host.clone(),
                namespace: u.namespace.clone(),
                subsets: vec![],
            };
            if let Some(dr) = rules.get(&host) {
                // The whole rule applies, or none of it.
                let spec = &dr.object["spec"];
                let mut candidate = cluster[0].clone();
                let applied =
                    apply_destination_rule(&mut candidate, spec, &s.locality).and_then(|()| {
                        subset_clusters(
                            &u.cluster_name(),
                            &u.service,
                            &u.endpoints,
                            spec,
                            &s.locality,
                        )
                    });
                match applied {
                    Ok(subsets) => {
                        cluster = std::iter::once(candidate).chain(subsets).collect();
                        target.subsets = subset_names(spec);
                    }
                    Err(e) => problems.push(format!("{}: {e}", dr.file.display())),
                }
            }
            let mut action = default_route_action(&u.cluster_name());
            if let Some(vs) = services.get(&host) {
                let http = &vs.object["spec"]["http"];
                let mut candidate = action.clone();
                let applied = match http.as_array().map(Vec::as_slice) {
                    Some([one]) => apply_http_route(&mut candidate, one, "spec.http[0]", &target),
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
            clusters.extend(cluster);
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

/// What a Deployment object gives its (first) container: CPU in cores and
/// memory in MiB, the limit where there is one (what the kubelet's quota
/// enforces), else the request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ContainerResources {
    pub cpu: Option<f64>,
    pub memory_mib: Option<f64>,
}

/// Each Deployment's container resources among `objects`, by name.
pub fn deployment_resources(objects: &[Sourced]) -> BTreeMap<String, ContainerResources> {
    use meshtune_agent::plan::deployment::{parse_cpu, parse_memory};
    let mut out = BTreeMap::new();
    for o in objects.iter().filter(|o| o.object["kind"] == "Deployment") {
        let Some(name) = o.object["metadata"]["name"].as_str() else {
            continue;
        };
        let r = &o.object["spec"]["template"]["spec"]["containers"][0]["resources"];
        let pick = |res: &str, parse: fn(&str) -> Option<f64>| {
            r["limits"][res]
                .as_str()
                .or(r["requests"][res].as_str())
                .and_then(parse)
        };
        out.insert(
            name.to_owned(),
            ContainerResources {
                cpu: pick("cpu", parse_cpu),
                memory_mib: pick("memory", parse_memory),
            },
        );
    }
    out
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

/// The fields meshtune tunes, as in force for a host, in a line:
/// pool, retries in flight, ejection, route timeout and retries.
pub fn summary(cluster: &Value, action: &Value) -> String {
    let t = &cluster["circuit_breakers"]["thresholds"][0];
    let n = |v: &Value| match v.as_u64() {
        Some(x) if x == u64::from(u32::MAX) => "∞".to_string(),
        Some(x) => x.to_string(),
        None => "∞".to_string(),
    };
    let od = &cluster["outlier_detection"];
    let eject = if od.is_object() {
        format!(
            "eject after {} 5xx per {}, {} %",
            n(&od["consecutive_5xx"]),
            od["interval"].as_str().unwrap_or("10s"),
            od["max_ejection_percent"].as_u64().unwrap_or(10)
        )
    } else {
        "no ejection".to_string()
    };
    let timeout = match action["timeout"].as_str() {
        Some("0s") | None => "no timeout".to_string(),
        Some(t) => format!("timeout {t}"),
    };
    let retries = match action["retry_policy"]["num_retries"].as_u64() {
        Some(r) => format!("{r} retries"),
        None => "no retries".to_string(),
    };
    format!(
        "pool {} req / {} pending, ≤{} retrying · {eject} · {timeout}, {retries}",
        n(&t["max_requests"]),
        n(&t["max_pending_requests"]),
        n(&t["max_retries"])
    )
}

/// Each host's [`summary`] in `configs` (the same in every sidecar that
/// calls it).
pub fn summaries(
    sidecars: &[SidecarXds],
    configs: &BTreeMap<String, SidecarConfig>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in sidecars {
        let Some(c) = configs.get(&s.name) else {
            continue;
        };
        for (i, u) in s.upstreams.iter().enumerate() {
            let action = &c.routes["virtual_hosts"][i]["routes"][0]["route"];
            if let Some(cluster) = c
                .clusters
                .iter()
                .find(|c| c["name"] == u.cluster_name().as_str())
            {
                out.entry(u.service.clone())
                    .or_insert_with(|| summary(cluster, action));
            }
        }
    }
    out
}

/// One pass: read, compute, write what changed. Returns the problems and
/// each upstream service's [`summary`].
pub fn pass(sidecars: &[SidecarXds], dirs: &[PathBuf]) -> (Vec<String>, BTreeMap<String, String>) {
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
    (problems, summaries(sidecars, &configs))
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
            locality: crate::services::DEFAULT_LOCALITY.into(),
            xds_dir: dir.to_path_buf(),
            upstreams: vec![UpstreamService {
                service: "reviews".into(),
                namespace: "bookinfo".into(),
                port: 9080,
                endpoints: vec![Endpoint::local(9)],
            }],
        }
    }

    #[test]
    fn a_pass_writes_defaults_then_the_rule_and_reports_what_it_cannot_apply() {
        let (xds, user) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = vec![sidecar(xds.path())];
        let dirs = vec![user.path().to_path_buf()];
        let (problems, summaries) = pass(&s, &dirs);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            summaries["reviews"],
            "pool ∞ req / ∞ pending, ≤∞ retrying · no ejection · no timeout, 2 retries"
        );
        let cds: Value =
            serde_json::from_str(&std::fs::read_to_string(xds.path().join("cds.json")).unwrap())
                .unwrap();
        assert_eq!(cds["resources"][0]["lb_policy"], "LEAST_REQUEST");
        std::fs::write(
            user.path().join("reviews.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n    timeout: 2s\n",
        )
        .unwrap();
        let (problems, summaries) = pass(&s, &dirs);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            summaries["reviews"].ends_with("timeout 2s, 2 retries"),
            "{summaries:?}"
        );
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
        let (problems, _) = pass(&s, &dirs);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("reviews.yaml") && p.contains("spec.trafficPolicy.tls")),
            "{problems:?}"
        );
        // A file that does not parse is reported.
        std::fs::write(user.path().join("broken.yaml"), "kind: [unclosed").unwrap();
        let (problems, _) = pass(&s, &dirs);
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
