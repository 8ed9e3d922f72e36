//! The write seam's guard in front of the Kubernetes sink, and leader
//! election, against an HTTP-level fake API server that asserts every
//! request (method, path, query, content type, body), as kube-rs'
//! controller examples do with `tower-test`.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use meshtune_agent::config::TrafficSpec;
use meshtune_agent::k8s::lease::LeaderElector;
use meshtune_agent::plan::observe::ServiceObservation;
use meshtune_agent::plan::traffic::desired;
use meshtune_agent::plan::{DesiredObject, Kind};
use meshtune_agent::write::guard::{Guard, GuardConfig, Mode};
use meshtune_agent::write::kube::KubeSink;
use meshtune_agent::write::Outcome;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

mod common;
use common::{fake, status, Expect};

const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";
const DRS: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
const VSS: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases/meshtune-agent-leader";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases";
const HOST: &str = "reviews.bookinfo.svc.cluster.local";

fn rules(rps: f64) -> Vec<DesiredObject> {
    let o = ServiceObservation {
        namespace: "bookinfo".into(),
        service: "reviews".into(),
        rps,
        percentile: 99.0,
        latency_ms: 100.0,
        error_rate: 0.0,
        attainment: None,
        replica_latency_ms: Vec::new(),
        replicas_known: 0,
        chain_objectives: Vec::new(),
    };
    desired(&[o], &[], &TrafficSpec::default())
}

fn apply_config() -> GuardConfig {
    GuardConfig {
        mode: Mode::Apply,
        max_changes: 2,
        window_s: 3600,
        evaluation_s: 60,
        ..GuardConfig::default()
    }
}

fn applied(obj: &Value) -> Value {
    let mut o = obj.clone();
    o["metadata"]["resourceVersion"] = json!("1");
    o
}

/// The LIST of a namespace's objects, answered with `items`.
fn list(path: &'static str, items: Vec<Value>) -> Expect {
    Expect {
        method: "GET",
        path,
        status: 200,
        answer: json!({"apiVersion": "networking.istio.io/v1", "kind": "List", "metadata": {}, "items": items}),
    }
}

fn patch(path: &'static str, answer: &Value) -> Expect {
    Expect {
        method: "PATCH",
        path,
        status: 200,
        answer: applied(answer),
    }
}

/// A user's own DestinationRule (no meshtune label) named `name` for `host`.
fn users_rule(name: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": "bookinfo", "resourceVersion": "9"},
        "spec": {"host": host, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}})
}

fn attained(a: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([(HOST.to_string(), a)])
}

fn nobody_opted_out() -> BTreeSet<String> {
    BTreeSet::new()
}

#[tokio::test]
async fn server_side_apply_with_field_manager_and_content_type() {
    let want = rules(400.0).remove(0).object;
    let (client, seen, task) = fake(vec![list(DRS, vec![]), patch(DR_PATH, &want)]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let out = g
        .reconcile(
            &sink,
            &rules(400.0),
            &nobody_opted_out(),
            true,
            1000,
            &attained(0.99),
        )
        .await;
    assert_eq!(out[0].1, Outcome::Applied);
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, ctype, body) = &seen[1];
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
    let report = g.report();
    let rec = &report["objects"]["DestinationRule bookinfo/reviews"];
    assert!(
        rec["reasons"]["trafficPolicy.connectionPool.http.http2MaxRequests"]
            .as_str()
            .unwrap()
            .contains("Little's law"),
        "{rec}"
    );
}

#[tokio::test]
async fn conflicts_are_reported_not_forced_and_missing_istio_is_clear() {
    let (client, _, task) = fake(vec![
        list(DRS, vec![]),
        Expect {
            method: "PATCH",
            path: DR_PATH,
            status: 409,
            answer: status(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.trafficPolicy.outlierDetection"),
        },
        Expect { method: "GET", path: DRS, status: 404, answer: status(404, "NotFound", "the server could not find the requested resource") },
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let none = BTreeMap::new();
    let out = g
        .reconcile(&sink, &rules(400.0), &nobody_opted_out(), true, 1000, &none)
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Conflict(m) if m.contains("kubectl")),
        "{out:?}"
    );
    let out = g
        .reconcile(&sink, &rules(400.0), &nobody_opted_out(), true, 1001, &none)
        .await;
    assert!(
        matches!(&out[0].1, Outcome::IstioMissing(m) if m.contains("is Istio installed")),
        "{out:?}"
    );
    task.await.unwrap();
}

#[tokio::test]
async fn recommend_mode_and_followers_write_nothing() {
    // meshtune's live rule: a different pool size and no outlier detection.
    let live = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "3",
                     "labels": {"app.kubernetes.io/managed-by": "meshtune"}},
        "spec": {"host": HOST,
                 "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 10, "http1MaxPendingRequests": 40, "maxRetries": 16}}}}});
    let (client, seen, task) = fake(vec![list(DRS, vec![live.clone()]), list(DRS, vec![live])]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(GuardConfig::default());
    let none = BTreeMap::new();
    let out = g
        .reconcile(&sink, &rules(400.0), &nobody_opted_out(), true, 1000, &none)
        .await;
    assert_eq!(out[0].1, Outcome::Recommended);
    let report = g.report();
    let changes = report["objects"]["DestinationRule bookinfo/reviews"]["changes"]
        .as_array()
        .unwrap()
        .clone();
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
    let mut g = Guard::new(apply_config());
    let out = g
        .reconcile(
            &sink,
            &rules(400.0),
            &nobody_opted_out(),
            false,
            1000,
            &none,
        )
        .await;
    assert_eq!(out[0].1, Outcome::NotLeader);
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|s| s.0 == "GET"), "reads only");
}

#[tokio::test]
async fn the_change_budget_and_hysteresis_stop_flapping() {
    let (a, b, c) = (rules(400.0), rules(900.0), rules(100.0));
    let mine = |o: &Value| applied(o);
    let (client, seen, task) = fake(vec![
        list(DRS, vec![]),
        patch(DR_PATH, &a[0].object),
        list(DRS, vec![mine(&a[0].object)]),
        list(DRS, vec![mine(&a[0].object)]),
        patch(DR_PATH, &b[0].object),
        list(DRS, vec![mine(&b[0].object)]),
        list(DRS, vec![mine(&b[0].object)]),
        patch(DR_PATH, &a[0].object),
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let none = BTreeMap::new();
    let no = nobody_opted_out();
    assert_eq!(
        g.reconcile(&sink, &a, &no, true, 0, &none).await[0].1,
        Outcome::Applied
    );
    // A 5 % move is below the 20 % hysteresis.
    assert_eq!(
        g.reconcile(&sink, &rules(420.0), &no, true, 10, &none)
            .await[0]
            .1,
        Outcome::Unchanged
    );
    assert_eq!(
        g.reconcile(&sink, &b, &no, true, 20, &none).await[0].1,
        Outcome::Applied
    );
    // Two changes in the hour: the third waits.
    assert_eq!(
        g.reconcile(&sink, &c, &no, true, 30, &none).await[0].1,
        Outcome::BudgetExhausted
    );
    // An hour after the first change the budget has room again.
    assert_eq!(
        g.reconcile(&sink, &a, &no, true, 3601, &none).await[0].1,
        Outcome::Applied
    );
    task.await.unwrap();
    let patches = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == "PATCH")
        .count();
    assert_eq!(patches, 3);
}

/// meshtune's ratings Deployment with its container under `cores`.
fn ratings_cpu(cores: f64) -> Vec<DesiredObject> {
    let bare = json!({"metadata": {"name": "ratings", "namespace": "bookinfo"},
        "spec": {"template": {"spec": {"containers": [{"name": "ratings"}]}}}});
    let object = meshtune_agent::plan::deployment::resources_apply(
        &bare,
        "ratings",
        meshtune_agent::plan::deployment::ContainerAllocation {
            cpu: Some(cores),
            memory_mib: None,
        },
    )
    .unwrap();
    vec![DesiredObject {
        kind: Kind::Deployment,
        namespace: "bookinfo".into(),
        name: "ratings".into(),
        host: "ratings.bookinfo.svc.cluster.local".into(),
        object,
        reasons: BTreeMap::new(),
    }]
}

/// One round writing ratings' CPU at `now_s`: the guard's outcome.
async fn write_ratings_cpu(
    g: &mut Guard,
    sink: &meshtune_agent::write::dir::DirSink,
    now_s: u64,
    cores: f64,
) -> Outcome {
    let out = g
        .reconcile(
            sink,
            &ratings_cpu(cores),
            &nobody_opted_out(),
            true,
            now_s,
            &BTreeMap::new(),
        )
        .await;
    out[0].1.clone()
}

#[tokio::test]
async fn the_change_budget_holds_back_lowering_cpu_never_raising_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = meshtune_agent::write::dir::DirSink::new(dir.path()).unwrap();
    let mut g = Guard::new(apply_config());
    // Two changes in the hour: lowering further waits, but more CPU is
    // written at once (and counted).
    for (now_s, cores, want) in [
        (0, 0.4, Outcome::Applied),
        (10, 0.3, Outcome::Applied),
        (20, 0.2, Outcome::BudgetExhausted),
        (30, 0.6, Outcome::Applied),
        (40, 0.3, Outcome::BudgetExhausted),
    ] {
        assert_eq!(
            write_ratings_cpu(&mut g, &sink, now_s, cores).await,
            want,
            "{cores} cores at {now_s} s"
        );
    }
    let written = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(written.contains("600m"), "{written}");
}

#[tokio::test]
async fn resizes_in_place_are_held_to_the_resize_budget_not_the_rollout_one() {
    let dir = tempfile::tempdir().unwrap();
    let sink = meshtune_agent::write::dir::DirSink::new(dir.path())
        .unwrap()
        .resizing_in_place(true);
    let mut g = Guard::new(GuardConfig {
        max_resizes: 4,
        ..apply_config()
    });
    // Past the two rollouts, lowering goes on (nothing restarts) until the
    // four resizes of the hour are spent; an hour later it may again.
    for (now_s, cores, want) in [
        (0, 0.4, Outcome::Applied),
        (10, 0.3, Outcome::Applied),
        (20, 0.2, Outcome::Applied),
        (30, 0.6, Outcome::Applied),
        (40, 0.3, Outcome::BudgetExhausted),
        (3600, 0.3, Outcome::Applied),
    ] {
        assert_eq!(
            write_ratings_cpu(&mut g, &sink, now_s, cores).await,
            want,
            "{cores} cores at {now_s} s"
        );
    }
}

#[tokio::test]
async fn a_change_that_costs_slo_attainment_is_rolled_back() {
    let (first, second) = (rules(400.0), rules(900.0));
    let (client, seen, task) = fake(vec![
        list(DRS, vec![]),
        patch(DR_PATH, &first[0].object),
        list(DRS, vec![applied(&first[0].object)]),
        patch(DR_PATH, &second[0].object),
        patch(DR_PATH, &first[0].object),
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let no = nobody_opted_out();
    g.reconcile(&sink, &first, &no, true, 0, &attained(0.99))
        .await;
    // Attainment held after the first change: nothing to do.
    assert!(g
        .evaluate(&sink, true, 61, &attained(0.99))
        .await
        .is_empty());
    g.reconcile(&sink, &second, &no, true, 100, &attained(0.99))
        .await;
    // Too early to judge.
    assert!(g
        .evaluate(&sink, true, 130, &attained(0.80))
        .await
        .is_empty());
    let rolled = g.evaluate(&sink, true, 161, &attained(0.80)).await;
    assert_eq!(rolled.len(), 1);
    assert!(
        rolled[0].reason.contains("99.0 % to 80.0 %"),
        "{}",
        rolled[0].reason
    );
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[4].4, first[0].object, "the previous spec is restored");
}

#[tokio::test]
async fn a_harmful_first_change_is_removed_not_kept() {
    let first = rules(400.0);
    let (client, seen, task) = fake(vec![
        list(DRS, vec![]),
        patch(DR_PATH, &first[0].object),
        Expect {
            method: "DELETE",
            path: DR_PATH,
            status: 200,
            answer: status(200, "", ""),
        },
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    g.reconcile(&sink, &first, &nobody_opted_out(), true, 0, &attained(0.99))
        .await;
    let rolled = g.evaluate(&sink, true, 61, &attained(0.50)).await;
    assert_eq!(
        rolled.len(),
        1,
        "meshtune created it, so undoing it removes it"
    );
    task.await.unwrap();
    assert_eq!(seen.lock().unwrap()[2].0, "DELETE");
}

#[tokio::test]
async fn a_users_rule_for_the_host_wins_and_meshtunes_own_is_withdrawn() {
    let ours = applied(&rules(400.0)[0].object);
    let theirs = users_rule("reviews-by-team", "reviews");
    let (client, seen, task) = fake(vec![
        // Only the user's: nothing is written.
        list(DRS, vec![theirs.clone()]),
        // The user's appeared beside meshtune's: meshtune's goes.
        list(DRS, vec![ours, theirs]),
        Expect {
            method: "DELETE",
            path: DR_PATH,
            status: 200,
            answer: status(200, "", ""),
        },
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let none = BTreeMap::new();
    let out = g
        .reconcile(&sink, &rules(400.0), &nobody_opted_out(), true, 0, &none)
        .await;
    assert_eq!(
        out,
        vec![(
            (Kind::DestinationRule, "bookinfo".into(), "reviews".into()),
            Outcome::UserOwned("reviews-by-team".into())
        )]
    );
    let report = g.report();
    let conflict = &report["conflicts"][HOST];
    assert_eq!(conflict["user_object"], "bookinfo/reviews-by-team");
    assert!(conflict["recommended"]["spec"]["trafficPolicy"]["connectionPool"].is_object());
    assert_eq!(g.user_owned_hosts(), 1);
    let out = g
        .reconcile(&sink, &rules(400.0), &nobody_opted_out(), true, 10, &none)
        .await;
    assert_eq!(out[0].1, Outcome::Withdrawn, "{out:?}");
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter().filter(|s| s.0 == "PATCH").count(),
        0,
        "nothing written for the user's host"
    );
}

#[tokio::test]
async fn named_fields_are_taken_over_in_the_users_rule_only_when_configured() {
    let theirs = users_rule("reviews-by-team", "reviews.bookinfo");
    let path = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews-by-team";
    let (client, seen, task) = fake(vec![list(DRS, vec![theirs.clone()]), patch(path, &theirs)]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(GuardConfig {
        take_over_fields: vec!["connectionPool".into()],
        ..apply_config()
    });
    let out = g
        .reconcile(
            &sink,
            &rules(400.0),
            &nobody_opted_out(),
            true,
            0,
            &BTreeMap::new(),
        )
        .await;
    assert_eq!(out[0].1, Outcome::Applied);
    task.await.unwrap();
    let seen = seen.lock().unwrap();
    let (_, _, query, _, body) = &seen[1];
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(body["metadata"]["name"], "reviews-by-team");
    assert!(
        body["metadata"].get("labels").is_none(),
        "the object stays the user's"
    );
    assert_eq!(body["spec"]["host"], "reviews.bookinfo");
    let tp = body["spec"]["trafficPolicy"].as_object().unwrap();
    assert_eq!(
        tp.keys().collect::<Vec<_>>(),
        vec!["connectionPool"],
        "only the named field"
    );
}

#[tokio::test]
async fn a_users_virtual_service_for_the_host_is_never_replaced() {
    // spec.http is an atomic list: applying meshtune's routes would take the user's.
    let want = DesiredObject {
        kind: Kind::VirtualService,
        namespace: "bookinfo".into(),
        name: "reviews".into(),
        host: HOST.into(),
        object: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "labels": {"app.kubernetes.io/managed-by": "meshtune"}},
            "spec": {"hosts": [HOST], "http": [{"route": [{"destination": {"host": HOST}}], "timeout": "2s"}]}}),
        reasons: BTreeMap::new(),
    };
    let theirs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews-canary", "namespace": "bookinfo"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}});
    let vs_path = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews";
    let (client, seen, task) = fake(vec![
        list(VSS, vec![theirs]),
        list(VSS, vec![]),
        patch(vs_path, &want.object),
    ]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let out = g
        .reconcile(
            &sink,
            std::slice::from_ref(&want),
            &nobody_opted_out(),
            true,
            0,
            &BTreeMap::new(),
        )
        .await;
    assert_eq!(out[0].1, Outcome::UserOwned("reviews-canary".into()));
    assert_eq!(g.report()["conflicts"][HOST]["kind"], "VirtualService");
    // No user VirtualService: meshtune writes its own.
    let out = g
        .reconcile(
            &sink,
            &[want],
            &nobody_opted_out(),
            true,
            10,
            &BTreeMap::new(),
        )
        .await;
    assert_eq!(out[0].1, Outcome::Applied);
    task.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_opted_out_service_is_left_alone() {
    let (client, seen, task) = fake(vec![]);
    let sink = KubeSink::new(client);
    let mut g = Guard::new(apply_config());
    let out = g
        .reconcile(
            &sink,
            &rules(400.0),
            &BTreeSet::from([HOST.to_string()]),
            true,
            0,
            &BTreeMap::new(),
        )
        .await;
    assert_eq!(out[0].1, Outcome::OptedOut);
    drop(sink);
    task.await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "not even read");
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

#[tokio::test]
async fn services_and_namespaces_opt_out_with_the_manage_annotation() {
    let (service, mut handle): (_, common::Handle) = tower_test::mock::pair();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let svc = |name: &str, manage: Option<&str>| {
            let mut m = json!({"name": name});
            if let Some(v) = manage {
                m["annotations"] = json!({"meshtune.io/manage": v});
            }
            json!({"metadata": m})
        };
        let answers = [
            (
                "/api/v1/namespaces/bookinfo",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bookinfo"}}),
            ),
            (
                "/api/v1/namespaces/bookinfo/services",
                json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                "items": [svc("reviews", Some("false")), svc("ratings", None), svc("details", Some("true"))]}),
            ),
            (
                "/api/v1/namespaces/legacy",
                json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "legacy", "annotations": {"meshtune.io/manage": "False"}}}),
            ),
            (
                "/api/v1/namespaces/legacy/services",
                json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                "items": [svc("old", None)]}),
            ),
        ];
        for (path, answer) in answers {
            let (seen, send) = common::next_request(&mut handle).await.unwrap();
            assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", path));
            common::respond(send, 200, serde_json::to_vec(&answer).unwrap());
        }
    });
    let hosts = meshtune_agent::k8s::optout::opted_out_hosts(
        &client,
        &BTreeSet::from(["bookinfo".to_string(), "legacy".to_string()]),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert_eq!(
        hosts,
        BTreeSet::from([
            "reviews.bookinfo.svc.cluster.local".to_string(),
            "old.legacy.svc.cluster.local".to_string()
        ])
    );
}
