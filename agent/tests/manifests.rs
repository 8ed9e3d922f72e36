//! Every YAML object in `manifests/` and `istio/` validates against the real
//! schemas in `../shared/schemas/`: Kubernetes 1.33 (strict) and the Istio
//! 1.30.3 CRDs. The schemas are read from there, never copied. The filter
//! configuration inside each `WasmPlugin` and the agent configuration inside
//! the ConfigMap are also parsed by the code that will read them.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    meshtune_agent::forecast::gru::repo_dir()
}

fn schemas() -> PathBuf {
    repo().join("../shared/schemas")
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The Kubernetes strict schema of a kind, e.g. `daemonset-apps-v1.json`.
fn k8s_schema(kind: &str, api_version: &str) -> Option<Value> {
    let file = schemas()
        .join("k8s/v1.33.0-standalone-strict")
        .join(schema_file_name(kind, api_version));
    file.is_file().then(|| read_json(&file))
}

/// `daemonset-apps-v1.json`, `role-rbac-v1.json`, `namespace-v1.json`.
fn schema_file_name(kind: &str, api_version: &str) -> String {
    let gv = match api_version.split_once('/') {
        Some((group, v)) => format!("{}-{v}", group.split('.').next().unwrap_or(group)),
        None => api_version.to_string(),
    };
    format!("{}-{gv}.json", kind.to_lowercase())
}

/// ObjectMeta as the Kubernetes schemas define it (taken from ConfigMap's).
fn object_meta() -> Value {
    k8s_schema("ConfigMap", "v1").unwrap()["properties"]["metadata"].clone()
}

/// Where `scripts/setup.sh` puts what it downloads.
fn cache_dir() -> PathBuf {
    std::env::var_os("MESHTUNE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/meshtune"))
}

/// The upstream Kubernetes 1.33 strict schemas with shared definitions
/// (`v1.33.0-local-strict` of the PyPI wheel kubernetes-validate 1.37.0, the
/// source `../shared/schemas` names), for the kinds `../shared/schemas` does
/// not carry: Namespace, Role, RoleBinding, Lease, CustomResourceDefinition.
/// `scripts/setup.sh` downloads them.
fn upstream_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHTUNE_K8S_SCHEMAS") {
        return PathBuf::from(dir);
    }
    cache_dir().join("k8s-schemas/v1.33.0-local-strict")
}

/// The upstream strict schema of a kind, its `$ref`s pointed at the
/// definitions embedded under `$defs` (recursive types such as the CRD's
/// JSONSchemaProps stay references, so nothing is expanded by hand).
fn upstream_schema(kind: &str, api_version: &str) -> Option<Value> {
    let dir = upstream_dir();
    let defs = dir.join("_definitions.json");
    assert!(
        defs.is_file(),
        "{} is missing: run `bash scripts/setup.sh` (downloads the PyPI wheel kubernetes-validate 1.37.0)",
        defs.display()
    );
    let file = dir.join(schema_file_name(kind, api_version));
    if !file.is_file() {
        return None;
    }
    fn local_refs(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get_mut("$ref") {
                    if let Some(rest) = r.strip_prefix("/api/_definitions.json") {
                        *r = rest.to_string();
                    }
                }
                o.values_mut().for_each(local_refs);
            }
            Value::Array(a) => a.iter_mut().for_each(local_refs),
            _ => {}
        }
    }
    let mut schema = read_json(&file);
    let mut all = read_json(&defs);
    local_refs(&mut schema);
    local_refs(&mut all);
    let o = schema.as_object_mut()?;
    o.remove("$id");
    o.insert("$defs".into(), all["$defs"].take());
    Some(schema)
}

/// Makes a CRD's OpenAPI schema strict the way `kubectl --validate=strict`
/// treats it: unknown fields are errors unless the schema preserves them.
fn strict(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        let preserve = o.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if o.contains_key("properties") && !o.contains_key("additionalProperties") && !preserve {
            o.insert("additionalProperties".into(), json!(false));
        }
        for (_, child) in o.iter_mut() {
            *child = strict(std::mem::take(child));
        }
    } else if let Some(a) = v.as_array_mut() {
        for child in a.iter_mut() {
            *child = strict(std::mem::take(child));
        }
    }
    v
}

/// The schema of an Istio kind from `crd-all.gen.yaml`, with ObjectMeta.
fn istio_schema(kind: &str, api_version: &str) -> Option<Value> {
    let text = std::fs::read_to_string(schemas().join("istio/crd-all.gen.yaml")).ok()?;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd: Value = <Value as serde::Deserialize>::deserialize(doc).ok()?;
        if let Some(schema) = crd_schema(&crd, kind, api_version) {
            return Some(schema);
        }
    }
    None
}

/// The strict schema of `kind` in `api_version` from a CRD object, with
/// ObjectMeta and the exact apiVersion and kind; `None` when the CRD
/// defines something else.
fn crd_schema(crd: &Value, kind: &str, api_version: &str) -> Option<Value> {
    let (group, version) = api_version.split_once('/')?;
    if crd["spec"]["group"] != group || crd["spec"]["names"]["kind"] != kind {
        return None;
    }
    let v = crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)?;
    let mut schema = strict(v["schema"]["openAPIV3Schema"].clone());
    schema["properties"]["metadata"] = object_meta();
    schema["properties"]["apiVersion"] = json!({"enum": [api_version]});
    schema["properties"]["kind"] = json!({"enum": [kind]});
    Some(schema)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn documents(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn check(schema: &Value, doc: &Value, what: &str) -> Vec<String> {
    let validator =
        jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("{what}: bad schema: {e}"));
    validator
        .iter_errors(doc)
        .map(|e| format!("{what}: {} at {}", e, e.instance_path()))
        .collect()
}

/// The Prometheus Operator's ServiceMonitor (optional) is in no Kubernetes
/// or Istio schema: it is checked by the validator generated from the
/// operator's CRDs (npm `@kubernetes-models/prometheus-operator` 6.0.0,
/// installed by `scripts/setup.sh`), run with Node.js, plus ObjectMeta.
fn servicemonitor_errors(doc: &Value, what: &str) -> Vec<String> {
    let npm = cache_dir().join("npm");
    assert!(
        npm.join("node_modules/@kubernetes-models/prometheus-operator")
            .is_dir(),
        "{} lacks @kubernetes-models/prometheus-operator: run `bash scripts/setup.sh`",
        npm.display()
    );
    // Beside node_modules, so the import resolves there.
    let script = npm.join("validate-servicemonitor.mjs");
    std::fs::write(
        &script,
        "import { ServiceMonitor } from \"@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor\";\n\
         try { new ServiceMonitor(JSON.parse(process.argv[2])).validate(); console.log(\"ok\"); }\n\
         catch (e) { console.log(\"invalid: \" + e.message.replace(/\\n/g, \" \")); }\n",
    )
    .unwrap();
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(doc.to_string())
        .output()
        .unwrap_or_else(|e| panic!("node is needed ({e}): apt-get install nodejs"));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut errors = check(&object_meta(), &doc["metadata"], what);
    if text != "ok" {
        errors.push(format!(
            "{what}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    errors
}

/// meshtune's own kinds take their schema from the committed CRD.
fn own_schema(kind: &str, api_version: &str) -> Option<Value> {
    let crd = documents(&repo().join("manifests/crd-chainslo.yaml")).remove(0);
    crd_schema(&crd, kind, api_version)
}

/// Errors of one object against the schema of its kind.
fn validate(doc: &Value, what: &str) -> Vec<String> {
    let kind = doc["kind"].as_str().unwrap_or("");
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let schema = k8s_schema(kind, api)
        .or_else(|| upstream_schema(kind, api))
        .or_else(|| istio_schema(kind, api))
        .or_else(|| own_schema(kind, api));
    match schema {
        Some(s) => check(&s, doc, what),
        None if kind == "ServiceMonitor" => servicemonitor_errors(doc, what),
        None => vec![format!("{what}: no schema for {api} {kind}")],
    }
}

/// `kubectl kustomize DIR` (kustomize built into kubectl; no cluster needed).
fn kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to build the kustomizations ({e}): install it with `apt-get install kubectl` (Google Cloud's apt repository) or from https://dl.k8s.io")
        });
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The install in README: one token file, `kubectl apply -k manifests` and
/// `kubectl apply -k istio/namespace`. Both builds validate, and the agent's
/// Secret and both WasmPlugins carry the same token.
#[test]
fn the_kustomizations_build_with_one_token_for_agent_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let namespace = dir.path().join("istio/namespace");
    copy_dir(&repo().join("manifests"), &manifests);
    copy_dir(&repo().join("istio/namespace"), &namespace);
    // Opting in another namespace is one edit of the kustomization.
    let k = namespace.join("kustomization.yaml");
    let text = std::fs::read_to_string(&k).unwrap();
    std::fs::write(&k, text.replace("namespace: bookinfo", "namespace: shop")).unwrap();
    for d in [&manifests, &namespace] {
        let _ = std::fs::remove_file(d.join("agent-token.env"));
        let err = kustomize(d).expect_err("no token file, no build");
        assert!(err.contains("agent-token.env"), "{err}");
        std::fs::write(d.join("agent-token.env"), "token=9f2c4e81d0a7b3\n").unwrap();
    }
    // Pointing both images at another registry and tag is one edit of one file.
    let images = manifests.join("images/kustomization.yaml");
    let text = std::fs::read_to_string(&images).unwrap();
    assert_eq!(text.matches("ghcr.io/meshtune/").count(), 2, "{text}");
    std::fs::write(
        &images,
        text.replace("ghcr.io/meshtune/", "registry.example.com:5000/team/")
            .replace("newTag: \"0.1.0\"", "newTag: \"1.2.3\""),
    )
    .unwrap();
    let mut errors = Vec::new();
    let agent = kustomize(&manifests).unwrap();
    let plugins = kustomize(&namespace).unwrap();
    for doc in agent.iter().chain(&plugins) {
        let what = format!("kustomize {} {}", doc["kind"], doc["metadata"]["name"]);
        errors.extend(validate(doc, &what));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let secret = agent.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(secret["metadata"]["namespace"], "meshtune-system");
    assert_eq!(secret["data"]["token"], "OWYyYzRlODFkMGE3YjM="); // base64
    let ds = agent.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == secret["metadata"]["name"]),
        "the DaemonSet mounts the generated Secret"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com:5000/team/meshtune-agent:1.2.3"
    );
    let wasm: Vec<_> = plugins
        .iter()
        .filter(|d| d["kind"] == "WasmPlugin")
        .collect();
    assert_eq!(wasm.len(), 2);
    for w in wasm {
        // No scheme: Istio reads it as oci://.
        assert_eq!(
            w["spec"]["url"],
            "registry.example.com:5000/team/meshtune-filter:1.2.3"
        );
        assert_eq!(
            w["spec"]["pluginConfig"]["agent"]["token"],
            "9f2c4e81d0a7b3"
        );
    }
    assert!(
        plugins.iter().all(|d| d["kind"] != "ConfigMap"),
        "the token's ConfigMap stays local to kustomize"
    );
    for d in plugins.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(d["metadata"]["namespace"], "shop", "{}", d["kind"]);
    }
    let binding = plugins.iter().find(|d| d["kind"] == "RoleBinding").unwrap();
    assert_eq!(
        binding["subjects"][0]["namespace"], "meshtune-system",
        "the agent's ServiceAccount stays where the agent runs"
    );
}

#[test]
fn every_manifest_validates_against_the_shipped_schemas() {
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    yaml_files(&repo().join("istio"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "found {files:?}");
    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    for f in &files {
        for doc in documents(f) {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            let what = format!(
                "{} {kind} {}",
                f.strip_prefix(repo()).unwrap_or(f).display(),
                doc["metadata"]["name"]
            );
            // Read by kustomize, never sent to the API server.
            if kind == "Kustomization"
                || kind == "Component"
                || f.file_name() == Some("kustomizeconfig.yaml".as_ref())
            {
                continue;
            }
            kinds.insert(kind.clone());
            errors.extend(validate(&doc, &what));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for k in [
        "DaemonSet",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "WasmPlugin",
        "Namespace",
        "Role",
        "RoleBinding",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ChainSLO",
    ] {
        assert!(kinds.contains(k), "no {k} among {kinds:?}");
    }
}

#[test]
fn the_validation_catches_mistakes() {
    let ds = documents(&repo().join("manifests/daemonset.yaml")).remove(0);
    let schema = k8s_schema("DaemonSet", "apps/v1").unwrap();
    assert!(check(&schema, &ds, "ok").is_empty());
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    assert!(
        !check(&schema, &bad, "typo").is_empty(),
        "strict schemas reject unknown fields"
    );
    let wp = documents(&repo().join("istio/namespace/wasmplugin-inbound.yaml")).remove(0);
    let schema = istio_schema("WasmPlugin", "extensions.istio.io/v1alpha1").unwrap();
    assert!(check(&schema, &wp, "ok").is_empty());
    let mut bad = wp.clone();
    bad["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
    assert!(!check(&schema, &bad, "enum").is_empty());
    let mut bad = wp;
    bad["spec"]["phaze"] = json!("STATS");
    assert!(!check(&schema, &bad, "unknown").is_empty());
    // The upstream schemas (shared definitions) are strict too, also inside
    // referenced definitions.
    let role = documents(&repo().join("istio/namespace/rbac.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Role")
        .unwrap();
    let schema = upstream_schema("Role", "rbac.authorization.k8s.io/v1").unwrap();
    assert!(check(&schema, &role, "ok").is_empty());
    let mut bad = role;
    bad["rules"][0]["verbz"] = json!(["get"]);
    assert!(!check(&schema, &bad, "typo in a rule").is_empty());
    let crd = documents(&repo().join("manifests/crd-chainslo.yaml")).remove(0);
    let schema = upstream_schema("CustomResourceDefinition", "apiextensions.k8s.io/v1").unwrap();
    assert!(check(&schema, &crd, "ok").is_empty());
    let mut bad = crd;
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["typ"] = json!("object");
    assert!(!check(&schema, &bad, "typo in the embedded schema").is_empty());
    // The ServiceMonitor's validator checks types and formats.
    let sm = documents(&repo().join("manifests/optional/servicemonitor.yaml")).remove(0);
    assert!(servicemonitor_errors(&sm, "ok").is_empty());
    let mut bad = sm;
    bad["spec"]["endpoints"][0]["interval"] = json!("15 seconds");
    let errors = servicemonitor_errors(&bad, "bad interval");
    assert!(errors.iter().any(|e| e.contains("interval")), "{errors:?}");
}

#[test]
fn plugin_configs_are_valid_filter_configurations() {
    let mut files = Vec::new();
    yaml_files(&repo().join("istio"), &mut files);
    let mut seen = 0;
    for f in files {
        for doc in documents(&f) {
            if doc["kind"] != "WasmPlugin" {
                continue;
            }
            let spec = &doc["spec"];
            assert_eq!(spec["failStrategy"], "FAIL_OPEN", "{}", f.display());
            assert_eq!(spec["phase"], "STATS");
            let cfg = serde_json::to_vec(&spec["pluginConfig"]).unwrap();
            let parsed = meshtune_filter_core::FilterConfig::parse(&cfg)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let agent = parsed.agent.expect("the plugin reports to the agent");
            assert_eq!(
                agent.cluster,
                "outbound|9090||meshtune-agent.meshtune-system.svc.cluster.local"
            );
            let side = parsed.direction.map(|d| d.as_str());
            let mode = spec["match"][0]["mode"].as_str();
            assert!(
                matches!(
                    (side, mode),
                    (Some("inbound"), Some("SERVER")) | (Some("outbound"), Some("CLIENT"))
                ),
                "{}: direction {side:?} with match mode {mode:?}",
                f.display()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "one plugin per side");
}

#[test]
fn the_configmap_holds_a_valid_agent_configuration() {
    let cm = documents(&repo().join("manifests/configmap.yaml")).remove(0);
    let text = cm["data"]["agent.yaml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let text = text.replace(
        "/var/run/secrets/meshtune/token",
        &token.display().to_string(),
    );
    let cfg = meshtune_agent::AgentConfig::parse(&text, "configmap agent.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.listen.port(), 9090);
    assert!(cfg.chains.contains_key("product-page"));
}

#[test]
fn the_committed_crd_is_what_the_code_generates() {
    let committed = std::fs::read_to_string(repo().join("manifests/crd-chainslo.yaml")).unwrap();
    assert_eq!(
        committed,
        meshtune_agent::k8s::chainslo::crd_yaml().unwrap(),
        "manifests/crd-chainslo.yaml drifted: run `cargo run -p meshtune-agent -- crd > manifests/crd-chainslo.yaml`"
    );
    let crd = documents(&repo().join("manifests/crd-chainslo.yaml")).remove(0);
    for v in crd["spec"]["versions"].as_array().unwrap() {
        assert!(jsonschema::validator_for(&v["schema"]["openAPIV3Schema"]).is_ok());
    }
    // An invalid ChainSLO is refused by the schema.
    let mut bad = documents(&repo().join("istio/bookinfo/chainslos.yaml")).remove(0);
    bad["spec"]["priority"] = json!("urgent");
    let schema = own_schema("ChainSLO", "meshtune.io/v1alpha1").unwrap();
    assert!(!check(&schema, &bad, "bad priority").is_empty());
}

#[test]
fn every_destination_rule_and_virtual_service_the_agent_generates_validates_against_istio() {
    use meshtune_agent::config::{Locality, TrafficSpec};
    use meshtune_agent::plan::observe::ServiceObservation;
    use meshtune_agent::plan::traffic::desired;
    let schema = istio_schema("DestinationRule", "networking.istio.io/v1").unwrap();
    let obs: Vec<ServiceObservation> = [(0.0, 1.0, 0.0), (5000.0, 900.0, 0.3), (12.5, 3.3, 0.001)]
        .iter()
        .enumerate()
        .map(|(i, (rps, p99, err))| ServiceObservation {
            namespace: "bookinfo".into(),
            service: format!("svc-{i}"),
            rps: *rps,
            percentile: 99.0,
            latency_ms: *p99,
            error_rate: *err,
            attainment: None,
            replica_latency_ms: Vec::new(),
            replicas_known: 0,
            chain_objectives: Vec::new(),
        })
        .collect();
    let loc = vec![
        (
            "svc-1".to_string(),
            Locality::Failover {
                from: "edge".into(),
                to: "cloud".into(),
            },
        ),
        (
            "svc-2".to_string(),
            Locality::Distribute {
                from: "edge/*".into(),
                to: vec![("edge/*".into(), 70), ("cloud/*".into(), 30)],
            },
        ),
    ];
    let rules = desired(&obs, &loc, &TrafficSpec::default());
    assert_eq!(rules.len(), 3);
    for r in rules {
        let errors = check(&schema, &r.object, &r.name);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    // And every VirtualService: with retries, and with none that fit.
    let vs_schema = istio_schema("VirtualService", "networking.istio.io/v1").unwrap();
    let budgets = [("svc-1".to_string(), 5000), ("svc-2".to_string(), 40)].into();
    let routes = meshtune_agent::plan::traffic::desired_routes(&obs, &budgets);
    assert_eq!(routes.len(), 2);
    for r in routes {
        let errors = check(&vs_schema, &r.object, &r.name);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
}

/// An agent that measured `product` through productpage → reviews → ratings,
/// writing into `dir` in `mode`.
fn tuned_agent(data: &Path, mode: &str) -> std::sync::Arc<meshtune_agent::Agent> {
    use meshtune_filter_core::builders::{record, report};
    let yaml = format!(
        "data_dir: {}\nchains:\n  product:\n    slo_ms: 50\nservices:\n  productpage: {{namespace: bookinfo}}\n  reviews: {{namespace: bookinfo}}\n  ratings: {{namespace: bookinfo}}\nkubernetes:\n  mode: {mode}\n",
        data.display()
    );
    let cfg = meshtune_agent::AgentConfig::parse(&yaml, "agent.yaml").unwrap();
    let agent = meshtune_agent::Agent::open(cfg, meshtune_agent::now_secs()).unwrap();
    let records = vec![
        record("product", "productpage", &[20; 100]).at_entry(),
        record("product", "reviews", &[10; 100]),
        record("product", "ratings", &[3; 100]),
    ];
    agent
        .lock()
        .ingest(&report("vm", 1, records), meshtune_agent::now_secs());
    agent
}

#[tokio::test]
async fn the_directory_sink_round_trips_valid_objects_and_touches_only_its_own_files() {
    use meshtune_agent::app::tuner::{guard_config, Tuner};
    use meshtune_agent::write::dir::DirSink;
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The user's files: a rule for ratings (a host meshtune would configure),
    // and a file where meshtune would write reviews' rule, without its label.
    let users_ratings = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings-by-team\n  namespace: bookinfo\nspec:\n  host: ratings\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n";
    let users_reviews = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: bookinfo\nspec:\n  host: reviews.other.svc.cluster.local\n";
    std::fs::write(out.path().join("team.yaml"), users_ratings).unwrap();
    let reviews_file = DirSink::file_name(
        meshtune_agent::plan::Kind::DestinationRule,
        "bookinfo",
        "reviews",
    );
    std::fs::write(out.path().join(&reviews_file), users_reviews).unwrap();
    let listing = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // Recommend mode writes nothing, and says what it would write.
    let agent = tuned_agent(data.path(), "recommend");
    let before = listing(out.path());
    let mut tuner = Tuner::new(DirSink::new(out.path()).unwrap(), guard_config(&agent));
    let now = meshtune_agent::now_secs();
    let (window, secs) = agent.window(now);
    tuner
        .round(&agent, &window, secs, &BTreeSet::new(), true, now)
        .await;
    assert_eq!(listing(out.path()), before, "recommend mode writes nothing");
    let report = agent.tuning_report();
    assert!(
        report["objects"]["DestinationRule bookinfo/productpage"]["desired"].is_object(),
        "{report}"
    );

    // Apply mode: one file per object, valid Istio, only meshtune's files.
    let data2 = tempfile::tempdir().unwrap();
    let agent = tuned_agent(data2.path(), "apply");
    let mut tuner = Tuner::new(DirSink::new(out.path()).unwrap(), guard_config(&agent));
    let (window, secs) = agent.window(now);
    let outcomes = tuner
        .round(&agent, &window, secs, &BTreeSet::new(), true, now)
        .await;
    // The DestinationRules; the user's rules leave the routes to meshtune.
    let of_kind = |kind: meshtune_agent::plan::Kind| -> std::collections::BTreeMap<String, String> {
        outcomes
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(k, o)| (k.2.clone(), format!("{o:?}")))
            .collect()
    };
    let by_name = of_kind(meshtune_agent::plan::Kind::DestinationRule);
    let routes = of_kind(meshtune_agent::plan::Kind::VirtualService);
    assert!(
        routes.values().all(|o| o == "Applied") && routes.contains_key("reviews"),
        "a route for each service the chain gives a hop budget: {routes:?}"
    );
    assert_eq!(by_name["productpage"], "Applied", "{by_name:?}");
    assert!(
        by_name["ratings"].starts_with("UserOwned(\"ratings-by-team\")"),
        "{by_name:?}"
    );
    assert!(by_name["reviews"].starts_with("UserOwned"), "{by_name:?}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("team.yaml")).unwrap(),
        users_ratings,
        "the user's file is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join(&reviews_file)).unwrap(),
        users_reviews,
        "a file without meshtune's label is never replaced"
    );
    let written = out.path().join(DirSink::file_name(
        meshtune_agent::plan::Kind::DestinationRule,
        "bookinfo",
        "productpage",
    ));
    let docs = documents(&written);
    assert_eq!(docs.len(), 1);
    let errors = validate(&docs[0], &written.display().to_string());
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(
        docs[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshtune"
    );
    assert_eq!(
        docs[0]["spec"]["host"],
        "productpage.bookinfo.svc.cluster.local"
    );
    assert!(
        !listing(out.path()).iter().any(|f| f.starts_with('.')),
        "no temporary file left"
    );
    // Re-read through the sink: the same object, and a second round changes nothing.
    let reread = DirSink::new(out.path()).unwrap().read_all().unwrap();
    assert!(reread.iter().any(|(p, v)| p == &written && v == &docs[0]));
    let outcomes = tuner
        .round(&agent, &window, secs, &BTreeSet::new(), true, now + 30)
        .await;
    assert!(outcomes
        .iter()
        .any(|(k, o)| k.2 == "productpage" && format!("{o:?}") == "Unchanged"));
    // The user's rule for ratings is reported as a conflict, with the recommendation.
    let report = agent.tuning_report();
    let conflict = &report["conflicts"]["ratings.bookinfo.svc.cluster.local"];
    assert_eq!(conflict["user_object"], "bookinfo/ratings-by-team");
    assert_eq!(report["sink"], format!("dir:{}", out.path().display()));
}

#[test]
fn a_service_missing_from_the_configuration_is_an_error_not_namespace_default() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use meshtune_agent::app::tuner::{guard_config, Tuner};
        use meshtune_agent::write::dir::DirSink;
        use meshtune_filter_core::builders::{record, report};
        let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let yaml = format!(
            "data_dir: {}\nchains:\n  product:\n    slo_ms: 50\nservices:\n  productpage: {{namespace: bookinfo}}\nkubernetes:\n  mode: apply\n",
            data.path().display()
        );
        let cfg = meshtune_agent::AgentConfig::parse(&yaml, "agent.yaml").unwrap();
        let agent = meshtune_agent::Agent::open(cfg, meshtune_agent::now_secs()).unwrap();
        let now = meshtune_agent::now_secs();
        let records = vec![
            record("product", "productpage", &[20; 50]).at_entry(),
            record("product", "details", &[5; 50]),
        ];
        agent.lock().ingest(&report("vm", 1, records), now);
        let mut tuner = Tuner::new(DirSink::new(out.path()).unwrap(), guard_config(&agent));
        let (window, secs) = agent.window(now);
        tuner.round(&agent, &window, secs, &BTreeSet::new(), true, now).await;
        let files: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec!["bookinfo.destinationrule.productpage.yaml".to_string()]);
        assert!(!files.iter().any(|f| f.starts_with("default.")), "nothing in namespace default");
        let errors = agent.tuning_report()["errors"].clone();
        assert!(errors[0].as_str().unwrap().contains("service `details`"), "{errors}");
        assert_eq!(agent.metrics.unknown_services.get(), 1);
    });
}

/// What meshtune would apply to a Deployment's resources, merged into the
/// live object as server-side apply merges it (containers by name), is a
/// valid Deployment; so is the `pods/resize` body merged into a Pod, and
/// the autoscalers the guard reads are valid HorizontalPodAutoscalers.
#[test]
fn deployment_resources_bodies_are_valid_once_merged() {
    use meshtune_agent::plan::deployment::{
        autoscaler_conflict, resize_patch, resources_apply, ContainerAllocation,
    };
    let live = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ratings-v1", "namespace": "bookinfo"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "ratings"}},
            "template": {
                "metadata": {"labels": {"app": "ratings"}},
                "spec": {"containers": [
                    {"name": "ratings", "image": "docker.io/istio/examples-bookinfo-ratings-v1:1.20.2",
                     "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}}}
                ]}
            }
        }
    });
    let body = resources_apply(
        &live,
        "ratings",
        ContainerAllocation {
            cpu: Some(0.35),
            memory_mib: Some(96.0),
        },
    )
    .unwrap();
    let mut merged = live.clone();
    let c = &mut merged["spec"]["template"]["spec"]["containers"][0];
    c["resources"] = body["spec"]["template"]["spec"]["containers"][0]["resources"].clone();
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"cpu": "70m", "memory": "96Mi"}, "limits": {"cpu": "350m", "memory": "96Mi"}})
    );
    let errors = validate(&merged, "Deployment with meshtune's resources");
    assert!(errors.is_empty(), "{errors:#?}");

    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ratings-v1-abc", "namespace": "bookinfo"},
        "spec": {"containers": [
            {"name": "ratings", "image": "ratings:1",
             "resources": resize_patch(&body)["spec"]["containers"][0]["resources"].clone()}
        ]}
    });
    let errors = validate(&pod, "Pod resized in place");
    assert!(errors.is_empty(), "{errors:#?}");

    let hpa = serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ratings", "namespace": "bookinfo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratings-v1"},
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    });
    let errors = validate(&hpa, "HorizontalPodAutoscaler");
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(autoscaler_conflict("ratings-v1", &[hpa], &[]).is_some());
}
