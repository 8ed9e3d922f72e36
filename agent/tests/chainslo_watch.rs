//! The ChainSLO watch against an HTTP-level fake API server: the first list
//! sets the declared chains and every object's `Valid` condition; later
//! watch events (added, modified, deleted) take effect without a re-list.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::Client;
use meshtune_agent::{Agent, AgentConfig};
use serde_json::{json, Value};
use std::sync::Arc;

mod common;
use common::Handle;

const LIST: &str = "/apis/meshtune.io/v1alpha1/chainslos";

fn chainslo(name: &str, chain: &str, latency_ms: f64, valid: Option<bool>) -> Value {
    let mut o = json!({
        "apiVersion": "meshtune.io/v1alpha1",
        "kind": "ChainSLO",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
        "spec": {
            "chain": chain,
            "entry": {"pathPrefix": format!("/{chain}")},
            "objective": {"latencyMs": latency_ms, "percentile": 99.0},
            "priority": "high"
        }
    });
    if let Some(v) = valid {
        o["status"] = json!({"conditions": [{
            "type": "Valid", "status": if v { "True" } else { "False" },
            "reason": if v { "Accepted" } else { "Invalid" }, "message": ""
        }]});
    }
    o
}

/// The next request as (method, path, query, JSON body) and its responder.
async fn next(handle: &mut Handle) -> (String, String, String, Value, common::Responder) {
    let (req, send) = common::next_request(handle).await.expect("a request");
    (req.method, req.path, req.query, req.body, send)
}

fn respond(send: common::Responder, body: Vec<u8>) {
    common::respond(send, 200, body)
}

#[tokio::test]
async fn chainslos_are_listed_then_followed_by_watch() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("data_dir: {}\nchains: {{}}\n", dir.path().display());
    let agent = Agent::open(AgentConfig::parse(&yaml, "t.yaml").unwrap(), 0).unwrap();
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let client = Client::new(service, "default");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(meshtune_agent::k8s::chainslo_watch::run(
        Arc::clone(&agent),
        client,
        stop,
    ));

    // 1. The list: one valid object without status, one invalid.
    let (m, p, q, _, send) = next(&mut handle).await;
    assert_eq!((m.as_str(), p.as_str()), ("GET", LIST));
    assert!(!q.contains("watch=true"), "a list first: {q}");
    let list = json!({
        "apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLOList",
        "metadata": {"resourceVersion": "10"},
        "items": [chainslo("checkout", "checkout", 250.0, None), chainslo("bad", "bad chain", 0.0, None)]
    });
    respond(send, serde_json::to_vec(&list).unwrap());

    // 2. Each object's condition, in (namespace, name) order, as merge patches.
    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/meshtune.io/v1alpha1/namespaces/shop/chainslos/bad/status"
        )
    );
    let cond = &body["status"]["conditions"][0];
    assert_eq!(
        (cond["type"].as_str(), cond["status"].as_str()),
        (Some("Valid"), Some("False"))
    );
    let message = cond["message"].as_str().unwrap();
    assert!(
        message.contains("spec.chain") && message.contains("spec.objective.latencyMs"),
        "{message}"
    );
    respond(
        send,
        serde_json::to_vec(&chainslo("bad", "bad chain", 0.0, Some(false))).unwrap(),
    );
    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/meshtune.io/v1alpha1/namespaces/shop/chainslos/checkout/status"
        )
    );
    assert_eq!(body["status"]["conditions"][0]["status"], "True");
    respond(
        send,
        serde_json::to_vec(&chainslo("checkout", "checkout", 250.0, Some(true))).unwrap(),
    );

    // 3. The watch from the list's resourceVersion: a change, an addition
    //    and a deletion arrive as events.
    let (m, p, q, _, send) = next(&mut handle).await;
    assert_eq!((m.as_str(), p.as_str()), ("GET", LIST));
    assert!(
        q.contains("watch=true") && q.contains("resourceVersion=10"),
        "{q}"
    );
    {
        let chains = agent.chains();
        assert_eq!(chains.keys().collect::<Vec<_>>(), ["checkout"]);
        assert_eq!(chains["checkout"].slo_ms, 250.0);
    }
    let mut events = Vec::new();
    for (kind, obj) in [
        (
            "MODIFIED",
            chainslo("checkout", "checkout", 300.0, Some(true)),
        ),
        ("ADDED", chainslo("search", "search", 80.0, Some(true))),
        ("DELETED", chainslo("bad", "bad chain", 0.0, Some(false))),
    ] {
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!("12");
        events.extend(serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap());
        events.push(b'\n');
    }
    respond(send, events);

    // 4. The stream ended, so the watcher watches again from where it was;
    //    no condition needed writing (each already had the right one).
    let (m, p, q, _, _held) = next(&mut handle).await;
    assert_eq!((m.as_str(), p.as_str()), ("GET", LIST), "{q}");
    assert!(
        q.contains("watch=true") && q.contains("resourceVersion=12"),
        "{q}"
    );
    {
        let chains = agent.chains();
        assert_eq!(chains.keys().collect::<Vec<_>>(), ["checkout", "search"]);
        assert_eq!(chains["checkout"].slo_ms, 300.0);
        let rules = agent.current_policy(0).map(|p| p.rules).unwrap_or_default();
        assert_eq!(
            rules.iter().map(|r| r.chain.as_str()).collect::<Vec<_>>(),
            ["checkout", "search"]
        );
    }
    // Declared chains get their objective series like configured ones.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, agent.registry()).unwrap();
    assert!(
        text.contains("meshtune_chain_slo_seconds{chain=\"search\"} 0.08"),
        "{text}"
    );
    assert!(text.contains("meshtune_chain_slo_seconds{chain=\"checkout\"} 0.3"));
    assert_eq!(agent.metrics.chainslo_invalid.get(), 0);
    let policy = agent.current_policy(0).expect("policies are on by default");
    assert!(
        policy.chains.contains_key("search"),
        "declared chains reach the policy"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
