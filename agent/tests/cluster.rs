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

use kube::api::{Api, DynamicObject};
use meshtune_agent::k8s::destinationrule::{desired, ServiceObservation, Tuning};
use meshtune_agent::k8s::writer::{destination_rule_resource, Mode, Outcome, Writer, WriterConfig};

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
        p99_ms: 80.0,
        error_rate: 0.0,
    };
    let rules = desired(&[obs], &[], &Tuning::default());
    let mut w = Writer::new(
        client.clone(),
        WriterConfig {
            mode: Mode::Apply,
            ..WriterConfig::default()
        },
    );
    let out = w.reconcile(&rules, true, 0, &|_, _| None).await;
    assert_eq!(out[0].1, Outcome::Applied, "{out:?}");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, "bookinfo", &destination_rule_resource());
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
