//! Against a real cluster with Istio: the writer applies a DestinationRule
//! with server-side apply and owns exactly the fields it sent.
//!
//! No API server can run where CI runs, so this test is ignored there. To
//! run it on a kind cluster:
//!
//! ```sh
//! kind create cluster --name meshtune
//! istioctl install -y --set profile=minimal
//! kubectl create namespace bookinfo
//! kubectl label namespace bookinfo istio-injection=enabled meshtune.io/enabled=true
//! printf 'token=%s\n' "$(openssl rand -hex 16)" | tee manifests/agent-token.env > istio/namespace/agent-token.env
//! kubectl apply -k manifests
//! kubectl apply -k istio/namespace
//! cargo test -p meshtune-agent --test cluster -- --ignored
//! ```

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::{Api, DynamicObject};
use meshtune_agent::config::TrafficSpec;
use meshtune_agent::plan::observe::ServiceObservation;
use meshtune_agent::plan::traffic::desired;
use meshtune_agent::plan::Kind;
use meshtune_agent::write::guard::{Guard, GuardConfig, Mode};
use meshtune_agent::write::kube::{resource, KubeSink};
use meshtune_agent::write::Outcome;
use std::collections::{BTreeMap, BTreeSet};

#[tokio::test]
#[ignore = "needs cluster"]
async fn applies_a_destination_rule_as_field_manager_meshtune() {
    let client = kube::Client::try_default()
        .await
        .expect("a kubeconfig for a cluster with Istio");
    let obs = ServiceObservation {
        namespace: "bookinfo".into(),
        service: "meshtune-cluster-test".into(),
        rps: 50.0,
        percentile: 99.0,
        latency_ms: 80.0,
        error_rate: 0.0,
        attainment: None,
        replica_latency_ms: Vec::new(),
        replicas_known: 0,
        chain_objectives: Vec::new(),
    };
    let rules = desired(&[obs], &[], &TrafficSpec::default());
    let sink = KubeSink::new(client.clone());
    let mut g = Guard::new(GuardConfig {
        mode: Mode::Apply,
        ..GuardConfig::default()
    });
    let out = g
        .reconcile(&sink, &rules, &BTreeSet::new(), true, 0, &BTreeMap::new())
        .await;
    assert_eq!(out[0].1, Outcome::Applied, "{out:?}");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, "bookinfo", &resource(Kind::DestinationRule));
    let dr = api
        .get("meshtune-cluster-test")
        .await
        .expect("the rule exists");
    let managers: Vec<String> = dr
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"meshtune".to_string()), "{managers:?}");
    api.delete("meshtune-cluster-test", &Default::default())
        .await
        .expect("cleanup");
}
