//! Cluster-wide inputs for the leader: every agent serves its node's window
//! (`GET /v1/window`), and the leader, which alone writes, pulls the other
//! agents' windows and merges them with its own before computing the
//! desired DestinationRules. Sketches merge exactly, so the merged window is
//! what one agent seeing every node would have. A peer that does not answer
//! is skipped for that round (logged); nothing is forwarded or queued.

pub use crate::data::window::{merge, WindowSnapshot};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::time::Duration;

/// The label the agent's pods carry (manifests/daemonset.yaml).
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=meshtune-agent";

/// `ip:port` of every running agent pod but this one (`own_ip`).
pub async fn peer_addresses(
    client: &kube::Client,
    namespace: &str,
    own_ip: Option<&str>,
    port: u16,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await?;
    Ok(list
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.status.and_then(|s| s.pod_ip))
        .filter(|ip| Some(ip.as_str()) != own_ip)
        .map(|ip| format!("{ip}:{port}"))
        .collect())
}

/// Fetches a peer's window.
pub async fn fetch(addr: &str, token: Option<&str>) -> Result<WindowSnapshot, String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    let uri = format!("http://{addr}/v1/window");
    let (status, body) = crate::http::get(&uri, &headers, Duration::from_secs(3)).await?;
    if !status.is_success() {
        return Err(format!("{addr}: answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{addr}: {e}"))
}
