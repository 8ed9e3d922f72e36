//! The DestinationRule writer and leader election against an HTTP-level
//! fake API server that asserts every request (method, path, query, content
//! type, body), as kube-rs' controller examples do with `tower-test`.

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use meshtune_agent::k8s::destinationrule::{desired, ServiceObservation, Tuning};
use meshtune_agent::k8s::lease::LeaderElector;
use meshtune_agent::k8s::writer::{Mode, Outcome, Writer, WriterConfig};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

mod common;
use common::Handle;

/// One expected request and the answer to give.
struct Expect {
    method: &'static str,
    path: &'static str,
    status: u16,
    answer: Value,
}

/// What the fake server saw: (method, path, query, content type, body).
type Seen = Arc<Mutex<Vec<(String, String, String, String, Value)>>>;

fn fake(expects: Vec<Expect>) -> (Client, Seen, tokio::task::JoinHandle<()>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        for e in expects {
            let Some((req, send)) = common::next_request(&mut handle).await else {
                panic!("expected {} {}", e.method, e.path)
            };
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                (e.method, e.path),
                "unexpected request"
            );
            log.lock()
                .unwrap()
                .push((req.method, req.path, req.query, req.content_type, req.body));
            common::respond(send, e.status, serde_json::to_vec(&e.answer).unwrap());
        }
    });
    (Client::new(service, "default"), seen, task)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases/meshtune-agent-leader";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases";

fn rules(rps: f64) -> Vec<meshtune_agent::k8s::destinationrule::DesiredRule> {
    let o = ServiceObservation {
        namespace: "bookinfo".into(),
        service: "reviews".into(),
        rps,
        p99_ms: 100.0,
        error_rate: 0.0,
    };
    desired(&[o], &[], &Tuning::default())
}

fn apply_config() -> WriterConfig {
    WriterConfig {
        mode: Mode::Apply,
        max_changes: 2,
        window_s: 3600,
        evaluation_s: 60,
        ..WriterConfig::default()
    }
}

fn applied(obj: &Value) -> Value {
    let mut o = obj.clone();
    o["metadata"]["resourceVersion"] = json!("1");
    o
}

#[tokio::test]
async fn server_side_apply_with_field_manager_and_content_type() {
    let want = rules(400.0).remove(0).object;
    let (client, seen, task) = fake(vec![Expect {
        method: "PATCH",
        path: DR_PATH,
        status: 200,
        answer: applied(&want),
    }]);
    let mut w = Writer::new(client, apply_config());
    let out = w
        .reconcile(&rules(400.0), true, 1000, &|_, _| Some(0.99))
        .await;
    assert_eq!(out[0].1, Outcome::Applied);
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, ctype, body) = &seen[0];
    assert!(
        query.split('&').any(|kv| kv == "fieldManager=meshtune"),
        "{query}"
    );
    assert!(
        !query.contains("force=true"),
        "never forces by default: {query}"
    );
    assert_eq!(ctype, "application/apply-patch+yaml");
    assert_eq!(body, &want, "only meshtune's fields are sent");
}

#[tokio::test]
async fn conflicts_are_reported_not_forced_and_missing_istio_is_clear() {
    let (client, _, task) = fake(vec![
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 409,
            answer: status(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.trafficPolicy.outlierDetection"),
        },
        Expect { method: "PATCH", path: DR_PATH, status: 404, answer: status(404, "NotFound", "the server could not find the requested resource") },
    ]);
    let mut w = Writer::new(client, apply_config());
    let out = w.reconcile(&rules(400.0), true, 1000, &|_, _| None).await;
    assert!(
        matches!(&out[0].1, Outcome::Conflict(m) if m.contains("kubectl")),
        "{out:?}"
    );
    let out = w.reconcile(&rules(400.0), true, 1001, &|_, _| None).await;
    assert!(
        matches!(&out[0].1, Outcome::IstioMissing(m) if m.contains("is Istio installed")),
        "{out:?}"
    );
    task.await.unwrap();
}

#[tokio::test]
async fn recommend_mode_and_followers_write_nothing() {
    // The live rule: someone set a different pool size and no outlier detection.
    let live = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "3"},
        "spec": {"host": "reviews.bookinfo.svc.cluster.local",
                 "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 10, "http1MaxPendingRequests": 40, "maxRetries": 3}}}}});
    let (client, seen, task) = fake(vec![Expect {
        method: "GET",
        path: DR_PATH,
        status: 200,
        answer: live,
    }]);
    let mut w = Writer::new(client.clone(), WriterConfig::default());
    let out = w.reconcile(&rules(400.0), true, 1000, &|_, _| None).await;
    assert_eq!(out[0].1, Outcome::Recommended);
    let rec = &w.recommendations[&("bookinfo".to_string(), "reviews".to_string())];
    let changes = rec["changes"].as_array().unwrap();
    let change = |p: &str| changes.iter().find(|c| c["path"] == p).cloned();
    assert_eq!(
        change(".spec.trafficPolicy.connectionPool.http.http2MaxRequests").unwrap()["live"],
        10
    );
    assert_eq!(
        change(".spec.trafficPolicy.connectionPool.http.http2MaxRequests").unwrap()["desired"],
        80
    );
    assert!(
        change(".spec.host").is_none(),
        "unchanged fields are not listed"
    );
    assert!(change(".spec.trafficPolicy.connectionPool.http.maxRetries").is_none());
    assert_eq!(
        change(".spec.trafficPolicy.outlierDetection.consecutive5xxErrors").unwrap()["live"],
        Value::Null
    );
    let mut w = Writer::new(client, apply_config());
    let out = w.reconcile(&rules(400.0), false, 1000, &|_, _| None).await;
    assert_eq!(out[0].1, Outcome::NotLeader);
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one read, no write");
    assert_eq!(seen[0].0, "GET");
}

#[tokio::test]
async fn the_change_budget_and_hysteresis_stop_flapping() {
    let (a, b, c) = (rules(400.0), rules(900.0), rules(100.0));
    let (client, seen, task) = fake(vec![
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&a[0].object),
        },
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&b[0].object),
        },
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&a[0].object),
        },
    ]);
    let mut w = Writer::new(client, apply_config());
    let none = &|_: &str, _: &str| None;
    assert_eq!(w.reconcile(&a, true, 0, none).await[0].1, Outcome::Applied);
    // A 5 % move is below the 20 % hysteresis.
    assert_eq!(
        w.reconcile(&rules(420.0), true, 10, none).await[0].1,
        Outcome::Unchanged
    );
    assert_eq!(w.reconcile(&b, true, 20, none).await[0].1, Outcome::Applied);
    // Two changes in the hour: the third waits.
    assert_eq!(
        w.reconcile(&c, true, 30, none).await[0].1,
        Outcome::BudgetExhausted
    );
    // An hour after the first change the budget has room again.
    assert_eq!(
        w.reconcile(&a, true, 3601, none).await[0].1,
        Outcome::Applied
    );
    task.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_change_that_costs_slo_attainment_is_rolled_back() {
    let (first, second) = (rules(400.0), rules(900.0));
    let (client, seen, task) = fake(vec![
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&first[0].object),
        },
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&second[0].object),
        },
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 200,
            answer: applied(&first[0].object),
        },
    ]);
    let mut w = Writer::new(client, apply_config());
    w.reconcile(&first, true, 0, &|_, _| Some(0.99)).await;
    // Attainment held after the first change: nothing to do.
    assert!(w.evaluate(true, 61, &|_, _| Some(0.99)).await.is_empty());
    w.reconcile(&second, true, 100, &|_, _| Some(0.99)).await;
    // Too early to judge.
    assert!(w.evaluate(true, 130, &|_, _| Some(0.80)).await.is_empty());
    let rolled = w.evaluate(true, 161, &|_, _| Some(0.80)).await;
    assert_eq!(rolled.len(), 1);
    assert!(
        rolled[0].reason.contains("99.0 % to 80.0 %"),
        "{}",
        rolled[0].reason
    );
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[2].4, first[0].object, "the previous spec is restored");
}

fn lease(holder: &str, renew: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "meshtune-agent-leader", "namespace": "meshtune-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew, "acquireTime": renew, "leaseTransitions": 0}
    })
}

#[tokio::test]
async fn lease_acquire_renew_and_loss() {
    let t0 = Timestamp::from_second(1_800_000_000).unwrap();
    let t1 = Timestamp::from_second(1_800_000_005).unwrap();
    let t2 = Timestamp::from_second(1_800_000_010).unwrap();
    let (client, seen, task) = fake(vec![
        // Nobody holds it: create.
        Expect {
            method: "GET",
            path: LEASE_PATH,
            status: 404,
            answer: status(
                404,
                "NotFound",
                "leases \"meshtune-agent-leader\" not found",
            ),
        },
        Expect {
            method: "POST",
            path: LEASES,
            status: 201,
            answer: lease("node-a", "2027-01-15T08:00:00.000000Z", "1"),
        },
        // Renew.
        Expect {
            method: "GET",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-a", "2027-01-15T08:00:00.000000Z", "1"),
        },
        Expect {
            method: "PUT",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-a", "2027-01-15T08:00:05.000000Z", "2"),
        },
        // Someone else renewed in between: our write conflicts, leadership is lost.
        Expect {
            method: "GET",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-a", "2027-01-15T08:00:05.000000Z", "2"),
        },
        Expect {
            method: "PUT",
            path: LEASE_PATH,
            status: 409,
            answer: status(409, "Conflict", "the object has been modified"),
        },
    ]);
    let mut e = LeaderElector::new(client, "meshtune-system", "node-a", 15);
    assert!(e.tick(t0).await, "acquired");
    assert!(e.tick(t1).await, "renewed");
    assert!(!e.tick(t2).await, "lost");
    assert!(!e.is_leader());
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1].4["spec"]["holderIdentity"], "node-a");
    assert_eq!(
        seen[3].4["metadata"]["resourceVersion"], "1",
        "the renewal carries what it read"
    );
}

#[tokio::test]
async fn a_live_lease_of_another_node_is_respected_and_an_expired_one_taken_over() {
    let held_at = Timestamp::from_second(1_800_000_000).unwrap();
    let live = Timestamp::from_second(held_at.as_second() + 10).unwrap();
    let expired = Timestamp::from_second(held_at.as_second() + 60).unwrap();
    let renew = held_at.to_string();
    let (client, seen, task) = fake(vec![
        Expect {
            method: "GET",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-b", &renew, "7"),
        },
        Expect {
            method: "GET",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-b", &renew, "7"),
        },
        Expect {
            method: "PUT",
            path: LEASE_PATH,
            status: 200,
            answer: lease("node-a", &expired.to_string(), "8"),
        },
    ]);
    let mut e = LeaderElector::new(client, "meshtune-system", "node-a", 15);
    assert!(!e.tick(live).await, "node-b's lease is still live");
    assert!(e.tick(expired).await, "taken over once expired");
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "no write while node-b held the lease");
    assert_eq!(seen[2].4["spec"]["holderIdentity"], "node-a");
    assert_eq!(seen[2].4["spec"]["leaseTransitions"], 1);
}
