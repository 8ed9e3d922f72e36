//! A decision recorded on a cluster: one `events.k8s.io/v1` Event regarding
//! the changed object, so `kubectl describe` shows what changed and why —
//! the exact request against the HTTP-level fake API server.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshtune_agent::plan::Kind;
use meshtune_agent::write::kube::KubeSink;
use meshtune_agent::write::{ObjectEvent, Sink};
use serde_json::json;

mod common;
use common::{fake, Expect};

#[tokio::test]
async fn a_decision_becomes_an_event_regarding_the_object() {
    let (client, seen, task) = fake(vec![Expect {
        method: "POST",
        path: "/apis/events.k8s.io/v1/namespaces/bookinfo/events",
        status: 201,
        answer: json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "reviews.abc", "namespace": "bookinfo"},
            "eventTime": "2026-12-03T15:00:00.000000Z"}),
    }]);
    let sink = KubeSink::new(client);
    let long = "x".repeat(2000);
    sink.record_event(&ObjectEvent {
        kind: Kind::DestinationRule,
        namespace: "bookinfo".into(),
        name: "reviews".into(),
        reason: "Applied",
        note: format!(
            ".spec.trafficPolicy.connectionPool.http.http2MaxRequests: null → 16 ({long})"
        ),
        at_s: 1_796_310_000,
    })
    .await
    .unwrap();
    task.await.unwrap();
    let (_, _, _, _, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        body["regarding"],
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "namespace": "bookinfo", "name": "reviews"})
    );
    assert_eq!(body["reason"], "Applied");
    assert_eq!(body["type"], "Normal");
    assert_eq!(body["reportingController"], "meshtune.io/agent");
    assert_eq!(body["metadata"]["generateName"], "reviews.");
    assert_eq!(body["eventTime"], "2026-12-03T15:00:00.000000Z");
    let note = body["note"].as_str().unwrap();
    assert!(
        note.len() <= 1024 && note.starts_with(".spec.trafficPolicy") && note.ends_with("..."),
        "{note}"
    );
}

#[tokio::test]
async fn a_sink_without_events_records_nothing_and_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let sink = meshtune_agent::write::dir::DirSink::new(dir.path()).unwrap();
    let e = ObjectEvent {
        kind: Kind::VirtualService,
        namespace: "bookinfo".into(),
        name: "reviews".into(),
        reason: "Recommended",
        note: "n".into(),
        at_s: 0,
    };
    sink.record_event(&e).await.unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
