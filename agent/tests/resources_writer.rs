//! Container resources as meshtune writes them on a cluster, against the
//! HTTP-level fake API server: server-side apply of only the resources into
//! the user's Deployment (field manager `meshtune`, forced: opting the
//! service in is the consent), the same values left alone, rollback to the
//! live values of the same fields, in-place `pods/resize` of the running
//! pods when opted in, and the autoscalers read before anything is written.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::plan::sizing::{desired_resources, ChainLoad, ServiceUsage};
use meshtune_agent::plan::{DesiredObject, Kind};
use meshtune_agent::write::guard::{Guard, GuardConfig, Mode};
use meshtune_agent::write::kube::KubeSink;
use meshtune_agent::write::{Outcome, Sink};
use meshtune_filter_core::control::Priority;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

mod common;
use common::{fake, status, Expect};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/bookinfo/deployments";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/bookinfo/deployments/ratings-v1";
const PODS: &str = "/api/v1/namespaces/bookinfo/pods";
const HOST: &str = "ratings.bookinfo.svc.cluster.local";

/// The user's Deployment: a limit and a request at a quarter of it.
fn users_deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ratings-v1", "namespace": "bookinfo", "resourceVersion": "7"},
        "spec": {"selector": {"matchLabels": {"app": "ratings"}},
            "template": {"metadata": {"labels": {"app": "ratings"}}, "spec": {"containers": [
                {"name": "ratings", "image": "docker.io/istio/examples-bookinfo-ratings-v1:1.20",
                 "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}},
                {"name": "istio-proxy", "image": "auto"}]}}}})
}

fn list(path: &'static str, items: Vec<Value>) -> Expect {
    Expect {
        method: "GET",
        path,
        status: 200,
        answer: json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
    }
}

/// meshtune's resources for ratings at `rps` (4 ms of CPU per request).
fn sized(rps: f64) -> DesiredObject {
    let usage = ServiceUsage {
        service: "ratings".into(),
        namespace: "bookinfo".into(),
        deployment: "ratings-v1".into(),
        container: "ratings".into(),
        demand_s: Some(0.004),
        rps,
        memory_mib: vec![80.0, 90.0, 100.0],
        replicas: 1,
        min_cpu: 0.05,
        max_cpu: 4.0,
        min_memory: 32.0,
        max_memory: 512.0,
        throttling: Vec::new(),
        limit_cores: None,
        demand_estimates: 3,
    };
    let chain = ChainLoad {
        name: "ratings-api".into(),
        slo_ms: 50.0,
        percentile: 99.0,
        priority: Priority::Normal,
        services: vec!["productpage".into(), "ratings".into()],
        median_ms: Some(8.0),
    };
    let live = BTreeMap::from([(
        ("bookinfo".to_string(), "ratings-v1".to_string()),
        users_deployment(),
    )]);
    let mut s = desired_resources(&[usage], &[chain], 0.4, &live, &BTreeMap::new());
    assert_eq!(s.objects.len(), 1, "{:#}", s.report);
    s.objects.remove(0)
}

fn apply_config() -> GuardConfig {
    GuardConfig {
        mode: Mode::Apply,
        evaluation_s: 60,
        ..GuardConfig::default()
    }
}

fn attained(a: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([(HOST.to_string(), a)])
}

#[tokio::test]
async fn resources_are_applied_server_side_into_the_users_deployment_and_rolled_back() {
    let want = sized(200.0);
    let first = want.object.clone();
    let container = &first["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "ratings");
    let cpu_limit = container["resources"]["limits"]["cpu"].as_str().unwrap();
    let cores = meshtune_agent::plan::deployment::parse_cpu(cpu_limit).unwrap();
    // 200 req/s × 4 ms = 0.8 cores of work, kept under 90 % utilisation.
    assert!(cores >= 0.8 / 0.9, "{container}");
    let mut answered = users_deployment();
    answered["spec"]["template"]["spec"]["containers"][0]["resources"] =
        container["resources"].clone();
    let rollback_to = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ratings-v1", "namespace": "bookinfo"},
        "spec": {"template": {"spec": {"containers": [{"name": "ratings",
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}}]}}}});
    let (client, seen, task) = fake(vec![
        list(DEPLOYMENTS, vec![users_deployment()]),
        Expect {
            method: "PATCH",
            path: DEPLOYMENT,
            status: 200,
            answer: answered.clone(),
        },
        list(DEPLOYMENTS, vec![answered.clone()]),
        // After the evaluation period, attainment fell: the user's values back.
        Expect {
            method: "PATCH",
            path: DEPLOYMENT,
            status: 200,
            answer: users_deployment(),
        },
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let none = BTreeSet::new();
    let out = g
        .reconcile(
            &sink,
            std::slice::from_ref(&want),
            &none,
            true,
            0,
            &attained(0.99),
        )
        .await;
    assert_eq!(out[0].1, Outcome::Applied);
    // The same allocation again: nothing written.
    let out = g
        .reconcile(&sink, &[want], &none, true, 30, &attained(0.99))
        .await;
    assert_eq!(out[0].1, Outcome::Unchanged);
    let rolled = g.evaluate(&sink, true, 61, &attained(0.80)).await;
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, content_type, body) = &seen[1];
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert!(query.contains("fieldManager=meshtune"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(body, &first, "only the container's name and resources");
    assert!(body.to_string().find("image").is_none());
    let (_, _, _, _, back) = &seen[3];
    assert_eq!(
        back, &rollback_to,
        "the live values of the same fields, nothing else"
    );
}

#[tokio::test]
async fn pods_are_resized_in_place_when_opted_in() {
    let want = sized(200.0);
    let resources = want.object["spec"]["template"]["spec"]["containers"][0]["resources"].clone();
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "bookinfo", "labels": {"app": "ratings"}}})
    };
    let (client, seen, task) = fake(vec![
        Expect {
            method: "GET",
            path: DEPLOYMENT,
            status: 200,
            answer: users_deployment(),
        },
        list(PODS, vec![pod("ratings-v1-a"), pod("ratings-v1-b")]),
        Expect {
            method: "PATCH",
            path: "/api/v1/namespaces/bookinfo/pods/ratings-v1-a/resize",
            status: 200,
            answer: pod("ratings-v1-a"),
        },
        Expect {
            method: "PATCH",
            path: "/api/v1/namespaces/bookinfo/pods/ratings-v1-b/resize",
            status: 200,
            answer: pod("ratings-v1-b"),
        },
        // A server without the subresource: the error says what to change.
        Expect {
            method: "GET",
            path: DEPLOYMENT,
            status: 200,
            answer: users_deployment(),
        },
        list(PODS, vec![pod("ratings-v1-a")]),
        Expect {
            method: "PATCH",
            path: "/api/v1/namespaces/bookinfo/pods/ratings-v1-a/resize",
            status: 404,
            answer: status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        },
    ]);
    let sink = KubeSink::new(client).resizing_in_place(true);
    let out = sink
        .apply(
            Kind::Deployment,
            "bookinfo",
            "ratings-v1",
            &want.object,
            true,
        )
        .await;
    assert_eq!(out, Outcome::Applied);
    let out = sink
        .apply(
            Kind::Deployment,
            "bookinfo",
            "ratings-v1",
            &want.object,
            true,
        )
        .await;
    match out {
        Outcome::Failed(m) => assert!(
            m.contains("pods/resize") && m.contains("in_place_resize"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, _, _) = &seen[1];
    assert!(query.contains("labelSelector=app%3Dratings"), "{query}");
    let (_, _, _, content_type, body) = &seen[2];
    assert_eq!(content_type, "application/strategic-merge-patch+json");
    assert_eq!(
        body,
        &json!({"spec": {"containers": [{"name": "ratings", "resources": resources}]}})
    );
}

#[tokio::test]
async fn autoscalers_are_read_and_a_missing_vpa_api_holds_none_and_deployments_are_never_deleted() {
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ratings", "namespace": "bookinfo"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratings-v1"}, "minReplicas": 1, "maxReplicas": 4}});
    let (client, _seen, task) = fake(vec![
        list(
            "/apis/autoscaling/v2/namespaces/bookinfo/horizontalpodautoscalers",
            vec![hpa.clone()],
        ),
        Expect {
            method: "GET",
            path: "/apis/autoscaling.k8s.io/v1/namespaces/bookinfo/verticalpodautoscalers",
            status: 404,
            answer: status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        },
    ]);
    let sink = KubeSink::new(client);
    let a = sink.autoscalers("bookinfo").await.unwrap();
    assert_eq!(a.hpas.len(), 1);
    assert!(a.vpas.is_empty());
    // The HPA scales on CPU by default: nothing is planned for writing.
    let why = meshtune_agent::plan::deployment::autoscaler_conflict("ratings-v1", &a.hpas, &a.vpas);
    assert!(why.is_some());
    // No request is made to delete a Deployment.
    let out = sink
        .remove(Kind::Deployment, "bookinfo", "ratings-v1")
        .await;
    assert!(
        matches!(out, Outcome::Failed(ref m) if m.contains("never deletes")),
        "{out:?}"
    );
    task.await.unwrap();
}
