//! Intents on a cluster: the chains the ChainSLO objects declare are known
//! names, and an objective or a priority goes into the chain's ChainSLO by
//! server-side apply of just its fields — the exact requests against the
//! HTTP-level fake API server. Without `--yes` nothing is written.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::k8s::intent::{chain_names, chainslos, write, FIELD_MANAGER};
use meshtune_agent::plan::intent::parse;
use serde_json::json;

mod common;
use common::{fake, Expect};

const LIST: &str = "/apis/meshtune.io/v1alpha1/namespaces/shop/chainslos";

fn checkout() -> serde_json::Value {
    json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLO",
        "metadata": {"name": "checkout-slo", "namespace": "shop", "resourceVersion": "41"},
        "spec": {"chain": "checkout", "entry": {"pathPrefix": "/checkout"},
                 "objective": {"latencyMs": 250.0, "percentile": 99.0}, "priority": "normal"}})
}

fn list() -> Expect {
    Expect {
        method: "GET",
        path: LIST,
        status: 200,
        answer: json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLOList",
            "metadata": {"resourceVersion": "41"}, "items": [checkout()]}),
    }
}

#[tokio::test]
async fn an_objective_is_applied_to_the_chains_chainslo_with_only_its_fields() {
    let mut applied = checkout();
    applied["spec"]["objective"] = json!({"latencyMs": 300.0, "percentile": 99.0});
    let (client, seen, task) = fake(vec![
        list(),
        Expect {
            method: "PATCH",
            path: "/apis/meshtune.io/v1alpha1/namespaces/shop/chainslos/checkout-slo",
            status: 200,
            answer: applied,
        },
    ]);
    let objects = chainslos(&client, "shop").await.unwrap();
    // `checkout` is known from the cluster alone (not in the configuration).
    let names = chain_names(&objects);
    assert_eq!(names, vec!["checkout"]);
    let intent = parse("keep chekout p99 under 300 ms", &names, &[]).unwrap_err();
    assert!(intent.contains("did you mean 'checkout'"), "{intent}");
    let intent = parse("keep checkout p99 under 300 ms", &names, &[]).unwrap();
    let written = write(&client, "shop", &objects, &intent, true)
        .await
        .unwrap();
    assert!(written.applied);
    assert_eq!(
        written.changes,
        vec![
            "ChainSLO checkout-slo spec.objective.latencyMs: 250.0 → 300.0",
            "ChainSLO checkout-slo spec.objective.percentile: 99.0 → 99.0"
        ]
    );
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, content_type, body) = &seen[1];
    assert!(
        query.contains(&format!("fieldManager={FIELD_MANAGER}")) && !query.contains("force"),
        "{query}"
    );
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(
        *body,
        json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLO",
            "metadata": {"name": "checkout-slo", "namespace": "shop"},
            "spec": {"chain": "checkout", "objective": {"latencyMs": 300.0, "percentile": 99.0}}})
    );
}

#[tokio::test]
async fn without_yes_or_for_an_undeclared_chain_nothing_is_written() {
    // Only the list: a PATCH would find no expectation and fail the fake.
    let (client, seen, task) = fake(vec![list()]);
    let objects = chainslos(&client, "shop").await.unwrap();
    let names = vec!["checkout".to_owned(), "ratings-api".to_owned()];
    let low = parse("checkout is low priority", &names, &[]).unwrap();
    let shown = write(&client, "shop", &objects, &low, false).await.unwrap();
    assert!(!shown.applied);
    assert_eq!(
        shown.changes,
        vec!["ChainSLO checkout-slo spec.priority: \"normal\" → \"low\""]
    );
    let other = parse("ratings-api is low priority", &names, &[]).unwrap();
    let e = write(&client, "shop", &objects, &other, true)
        .await
        .unwrap_err();
    assert!(
        e.contains("no ChainSLO in namespace shop declares chain 'ratings-api'"),
        "{e}"
    );
    let bound = parse("give reviews at most 2 CPUs", &names, &["reviews".into()]).unwrap();
    let e = write(&client, "shop", &objects, &bound, true)
        .await
        .unwrap_err();
    assert!(e.contains("agent's configuration"), "{e}");
    task.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "only the list");
}

#[tokio::test]
async fn a_field_another_applier_owns_is_refused_naming_it() {
    let (client, _seen, task) = fake(vec![
        list(),
        Expect {
            method: "PATCH",
            path: "/apis/meshtune.io/v1alpha1/namespaces/shop/chainslos/checkout-slo",
            status: 409,
            answer: json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
                "message": "Apply failed with 1 conflict: conflict with \"argocd-controller\": .spec.objective.latencyMs"}),
        },
    ]);
    let objects = chainslos(&client, "shop").await.unwrap();
    let intent = parse("keep checkout p99 under 300 ms", &["checkout".into()], &[]).unwrap();
    let e = write(&client, "shop", &objects, &intent, true)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("applying ChainSLO shop/checkout-slo") && e.contains("argocd-controller"),
        "{e}"
    );
    task.await.unwrap();
}
