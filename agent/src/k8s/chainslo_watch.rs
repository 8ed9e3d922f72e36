//! Keeps the agent's declared chains in step with the cluster's ChainSLO
//! objects: kube's `watcher` lists them once, then follows a watch from the
//! list's resourceVersion (re-listing when the watch expires, with backoff
//! on errors), so a new, changed or deleted ChainSLO takes effect within a
//! round trip. Each object's `Valid` condition is written when it changes.

use crate::app::agent::Agent;
use crate::config::{ChainSpec, DeclaredChains};
use crate::k8s::chainslo::ChainSLO;
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// (namespace, name) of an object.
pub type ObjectKey = (String, String);

/// The chains and entry rules of the valid objects, and how many are
/// invalid (pure).
pub fn declared(objects: &BTreeMap<ObjectKey, ChainSLO>) -> (DeclaredChains, i64) {
    let mut out = DeclaredChains::default();
    let mut invalid = 0;
    for obj in objects.values() {
        if !obj.spec.problems().is_empty() {
            invalid += 1;
            continue;
        }
        out.rules.push(obj.spec.entry_rule());
        out.chains.insert(
            obj.spec.chain.clone(),
            ChainSpec {
                slo_ms: obj.spec.objective.latency_ms,
                percentile: obj.spec.objective.percentile,
                description: String::new(),
                priority: obj.spec.priority.into(),
                deadline_ms: obj.spec.objective.deadline_ms,
            },
        );
    }
    (out, invalid)
}

fn key(obj: &ChainSLO) -> Option<ObjectKey> {
    Some((obj.metadata.namespace.clone()?, obj.metadata.name.clone()?))
}

fn publish(agent: &Agent, objects: &BTreeMap<ObjectKey, ChainSLO>) {
    let (d, invalid) = declared(objects);
    agent.metrics.chainslo_invalid.set(invalid);
    agent.set_declared(d);
}

/// Writes the object's `Valid` condition if it differs from the one there.
async fn set_condition(client: &Client, obj: &ChainSLO) {
    let cond = obj.spec.validity();
    let current = obj
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Valid"));
    if current == Some(&cond) {
        return;
    }
    let Some((ns, name)) = key(obj) else { return };
    let api: Api<ChainSLO> = Api::namespaced(client.clone(), &ns);
    let status = serde_json::json!({"status": {"conditions": [cond]}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::warn!("could not set the status of ChainSLO {ns}/{name}: {e}");
    }
}

/// Follows ChainSLO objects until `stop` changes.
pub async fn run(agent: Arc<Agent>, client: Client, mut stop: watch::Receiver<bool>) {
    let api: Api<ChainSLO> = Api::all(client.clone());
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut objects: BTreeMap<ObjectKey, ChainSLO> = BTreeMap::new();
    // A (re-)list is collected apart and replaces the set when complete.
    let mut listing: Option<BTreeMap<ObjectKey, ChainSLO>> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => break,
        };
        match event {
            None => break,
            Some(Err(e)) => {
                agent.metrics.chainslo_watch_errors.inc();
                tracing::warn!("watching ChainSLO objects: {e}");
            }
            Some(Ok(Event::Init)) => listing = Some(BTreeMap::new()),
            Some(Ok(Event::InitApply(obj))) => {
                if let (Some(l), Some(k)) = (listing.as_mut(), key(&obj)) {
                    l.insert(k, obj);
                }
            }
            Some(Ok(Event::InitDone)) => {
                objects = listing.take().unwrap_or_default();
                publish(&agent, &objects);
                for obj in objects.values() {
                    set_condition(&client, obj).await;
                }
            }
            Some(Ok(Event::Apply(obj))) => {
                set_condition(&client, &obj).await;
                if let Some(k) = key(&obj) {
                    objects.insert(k, obj);
                }
                publish(&agent, &objects);
            }
            Some(Ok(Event::Delete(obj))) => {
                if let Some(k) = key(&obj) {
                    objects.remove(&k);
                }
                publish(&agent, &objects);
            }
        }
    }
}
