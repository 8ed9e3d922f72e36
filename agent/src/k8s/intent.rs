//! Intents on a cluster: an objective or a priority is written into the
//! chain's ChainSLO object with server-side apply (field manager
//! `meshtune-intent`, only the fields the sentence names), where the agents
//! read it from. The reading and the change come from `plan::intent`.

use crate::k8s::chainslo::ChainSLO;
use crate::plan::intent::{chainslo_apply, Intent};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

/// The field manager of the fields an intent writes.
pub const FIELD_MANAGER: &str = "meshtune-intent";

/// The ChainSLO objects in `namespace`, as JSON.
pub async fn chainslos(client: &Client, namespace: &str) -> Result<Vec<Value>, kube::Error> {
    let api: Api<ChainSLO> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect())
}

/// The chain names the objects declare.
pub fn chain_names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o["spec"]["chain"].as_str().map(str::to_owned))
        .collect()
}

/// What an intent did on the cluster.
#[derive(Debug, PartialEq)]
pub struct Written {
    /// Each field's old → new.
    pub changes: Vec<String>,
    /// Whether it was applied (`--yes`) or only shown.
    pub applied: bool,
}

/// Writes `intent` into the ChainSLO of its chain among `objects` (applied
/// only when `apply`; otherwise the changes are only computed).
pub async fn write(
    client: &Client,
    namespace: &str,
    objects: &[Value],
    intent: &Intent,
    apply: bool,
) -> Result<Written, String> {
    let Some(chain) = intent.chain() else {
        // A resources bound: `chainslo_apply` says where it goes.
        return Err(chainslo_apply(&Value::Null, intent)
            .err()
            .unwrap_or_default());
    };
    let live = objects
        .iter()
        .find(|o| o["spec"]["chain"] == chain)
        .ok_or_else(|| {
            format!(
                "no ChainSLO in namespace {namespace} declares chain '{chain}' (it is in the agent's configuration only: run without --chainslo-namespace)"
            )
        })?;
    let (body, changes) = chainslo_apply(live, intent)?;
    if apply {
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<ChainSLO> = Api::namespaced(client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| format!("applying ChainSLO {namespace}/{name}: {e}"))?;
    }
    Ok(Written {
        changes,
        applied: apply,
    })
}
