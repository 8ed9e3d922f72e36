//! On a cluster the resources planner's CPU source is the metrics API
//! (metrics-server's PodMetrics through the sink): each Deployment's pods
//! found by its selector, their container's cores integrated between rounds
//! into CPU-seconds, divided by the requests the service served. And the
//! Kubernetes sink's read of it — the exact request against the fake API
//! server, and a cluster without metrics-server named as such.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::app::tuner::{guard_config, Tuner};
use meshtune_agent::plan::Kind;
use meshtune_agent::write::dir::DirSink;
use meshtune_agent::write::kube::KubeSink;
use meshtune_agent::write::{Autoscalers, Outcome, Sink, SinkError};
use meshtune_agent::{Agent, AgentConfig};
use meshtune_filter_core::builders::{record, report};
use serde_json::{json, Value};
use std::collections::BTreeSet;

mod common;
use common::{fake, Expect};

/// A reviews pod as metrics-server reports it: its labels, and its
/// containers' usage (the sidecar's too, which is not the service's).
fn pod_metrics(pod: &str, cores: f64) -> Value {
    json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
        "metadata": {"name": pod, "namespace": "bookinfo",
                     "labels": {"app": "reviews", "pod-template-hash": "7d9f"}},
        "timestamp": "2026-12-03T18:00:00Z", "window": "15.02s",
        "containers": [
            {"name": "reviews", "usage": {"cpu": format!("{:.0}n", cores * 1e9), "memory": "102400Ki"}},
            {"name": "istio-proxy", "usage": {"cpu": "9000000n", "memory": "40Mi"}}]})
}

/// The directory sink (the user's Deployment is a file in it) with a
/// metrics API serving `cores` per reviews pod, two pods.
struct WithMetrics {
    dir: DirSink,
    cores: f64,
}

impl Sink for WithMetrics {
    fn describe(&self) -> String {
        self.dir.describe()
    }
    fn can_take_over(&self) -> bool {
        false
    }
    async fn list(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, SinkError> {
        self.dir.list(kind, namespace).await
    }
    async fn autoscalers(&self, namespace: &str) -> Result<Autoscalers, SinkError> {
        self.dir.autoscalers(namespace).await
    }
    async fn apply(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        object: &Value,
        force: bool,
    ) -> Outcome {
        self.dir.apply(kind, ns, name, object, force).await
    }
    async fn remove(&self, kind: Kind, ns: &str, name: &str) -> Outcome {
        self.dir.remove(kind, ns, name).await
    }
    async fn pod_metrics(&self, namespace: &str) -> Result<Vec<Value>, SinkError> {
        assert_eq!(namespace, "bookinfo");
        // Another app's pod is not reviews' however its containers are named.
        let mut other = pod_metrics("ratings-1", 3.0);
        other["metadata"]["labels"]["app"] = json!("ratings");
        Ok(vec![
            pod_metrics("reviews-7d9f-a", self.cores),
            pod_metrics("reviews-7d9f-b", self.cores),
            other,
        ])
    }
}

#[tokio::test]
async fn cpu_per_request_comes_from_the_metrics_api_on_a_cluster() {
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(
        out.path().join("reviews-deployment.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  template:\n    metadata: {labels: {app: reviews}}\n    spec: {containers: [{name: reviews, image: reviews:1}]}\n",
    )
    .unwrap();
    let yaml = format!(
        "data_dir: {}\nwindow_seconds: 60\nchains:\n  product: {{slo_ms: 200}}\nservices:\n  productpage: {{namespace: bookinfo}}\n  reviews: {{namespace: bookinfo, min_cpu: 0.1, max_cpu: 4}}\nkubernetes: {{mode: recommend}}\n",
        data.path().display()
    );
    let a = Agent::open(AgentConfig::parse(&yaml, "agent.yaml").unwrap(), 0).unwrap();
    let sink = WithMetrics {
        dir: DirSink::new(out.path()).unwrap(),
        cores: 0.25,
    };
    let mut tuner = Tuner::new(sink, guard_config(&a));
    let now = meshtune_agent::now_secs();
    let traffic = |seq: u64, at: u64, n: usize| {
        let records = vec![
            record("product", "productpage", &vec![20; n]).at_entry(),
            record("product", "reviews", &vec![10; n]),
        ];
        a.lock().ingest(&report("vm", seq, records), at);
    };
    traffic(1, now, 600);
    let (w, secs) = a.window(now);
    tuner.round(&a, &w, secs, &BTreeSet::new(), true, now).await;
    // A minute later: 3,000 more requests on two pods at 0.25 cores each,
    // 0.5 cores × 60 s = 30 CPU-s: 10 ms of CPU per request.
    traffic(2, now + 60, 3000);
    let (w, secs) = a.window(now + 60);
    tuner
        .round(&a, &w, secs, &BTreeSet::new(), true, now + 60)
        .await;
    let report = a.tuning_report();
    let reviews = &report["resources"]["services"]["reviews"];
    let demand_ms = reviews["demand_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!((demand_ms - 10.0).abs() < 1e-6, "{demand_ms} ms: {reviews}");
    assert!(reviews["cores"].as_f64().unwrap() > 0.0, "{reviews}");
}

#[tokio::test]
async fn the_kubernetes_sink_reads_pod_metrics_and_names_a_missing_metrics_server() {
    let path = "/apis/metrics.k8s.io/v1beta1/namespaces/bookinfo/pods";
    let (client, _seen, task) = fake(vec![
        Expect {
            method: "GET",
            path,
            status: 200,
            answer: json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList",
                "metadata": {}, "items": [pod_metrics("reviews-7d9f-a", 0.2)]}),
        },
        Expect {
            method: "GET",
            path,
            status: 404,
            answer: json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
        },
    ]);
    let sink = KubeSink::new(client);
    let pods = sink.pod_metrics("bookinfo").await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["containers"][0]["usage"]["cpu"], "200000000n");
    let e = sink.pod_metrics("bookinfo").await.unwrap_err().to_string();
    assert!(e.contains("install metrics-server"), "{e}");
    task.await.unwrap();
}
