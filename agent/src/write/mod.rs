//! The one seam every object the agent wants leaves through. The guard
//! ([`guard::Guard`]) decides what may be written — recommend-only mode,
//! the change budget, hysteresis, rollback, and whose objects they are —
//! the same way for every sink; a sink only reads and writes objects:
//! Kubernetes server-side apply ([`kube::KubeSink`]) or a directory of YAML
//! files for GitOps and the lab's control plane ([`dir::DirSink`]).

pub mod dir;
pub mod guard;
pub mod kube;

pub use crate::plan::deployment::Autoscalers;
use crate::plan::{Kind, FIELD_MANAGER, MANAGED_BY_LABEL};
use serde_json::Value;
use std::future::Future;

/// What became of one desired object.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recommend mode: this is what would be applied.
    Recommended,
    Applied,
    Unchanged,
    BudgetExhausted,
    NotLeader,
    /// Another field manager owns a field meshtune wants; nothing written.
    Conflict(String),
    /// A user's own object covers the host (named): meshtune writes nothing
    /// for it and reports the conflict.
    UserOwned(String),
    /// meshtune's own object for a host a user's object now covers was removed.
    Withdrawn,
    /// The Service or its namespace says `meshtune.io/manage: "false"`.
    OptedOut,
    /// The API for the kind is missing: Istio is not installed.
    IstioMissing(String),
    Failed(String),
}

/// Reading or writing a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the API server has no {kind} (networking.istio.io/v1): is Istio installed? ({message})"
    )]
    IstioMissing { kind: &'static str, message: String },
}

/// Where desired objects go. Only the guard calls these.
pub trait Sink {
    /// How the sink is named in logs and on the API (`kubernetes`, `dir:PATH`).
    fn describe(&self) -> String;

    /// Whether the sink can write some fields of an object it does not own
    /// (server-side apply can; a directory of files cannot).
    fn can_take_over(&self) -> bool;

    /// Whether a change to an object of `kind` reaches the running pods
    /// without restarting them (a Deployment's resources resized in place,
    /// `pods/resize`): the guard then holds it to the resize budget rather
    /// than the rollout budget. Templates roll the pods; that is the default.
    fn resizes_in_place(&self, kind: Kind) -> bool {
        let _ = kind;
        false
    }

    /// Every object of `kind` in `namespace`, the users' and meshtune's.
    fn list(
        &self,
        kind: Kind,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<Value>, SinkError>> + Send;

    /// The autoscalers in `namespace` (read only: a Deployment one of
    /// them sizes is left alone, see [`crate::plan::deployment`]).
    fn autoscalers(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Autoscalers, SinkError>> + Send;

    /// Writes `object` (whole, as meshtune wants it); `force` takes fields
    /// over from other field managers where the sink has such a notion.
    fn apply(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: &Value,
        force: bool,
    ) -> impl Future<Output = Outcome> + Send;

    /// Records a decision on the object it changed (`kubectl describe`
    /// shows it on a cluster); sinks without events record nothing.
    fn record_event(
        &self,
        event: &ObjectEvent,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = event;
        async { Ok(()) }
    }

    /// What the pods in `namespace` use now, as the metrics API serves it
    /// (`metrics.k8s.io/v1beta1` PodMetrics, with each pod's labels): the
    /// CPU source of the resources planner on a cluster. Sinks without a
    /// cluster have none.
    fn pod_metrics(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<Value>, SinkError>> + Send {
        let _ = namespace;
        async {
            Err(SinkError::Unavailable(
                "this sink has no metrics API (pod metrics come from a cluster's metrics-server)"
                    .into(),
            ))
        }
    }

    /// Removes meshtune's object `name` (never one it does not own).
    fn remove(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Outcome> + Send;
}

/// A decision to record on the object it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `Applied`, `Recommended` or `RolledBack` (a CamelCase word, as
    /// Kubernetes reasons are).
    pub reason: &'static str,
    /// What changed and why, at most 1 KiB (the API's limit).
    pub note: String,
    /// Agent clock, seconds since the epoch.
    pub at_s: u64,
}

/// Whether `object` carries meshtune's managed-by label.
pub fn is_meshtune_object(object: &Value) -> bool {
    object["metadata"]["labels"][MANAGED_BY_LABEL].as_str() == Some(FIELD_MANAGER)
}

/// The hosts an existing object configures, fully qualified in its namespace.
pub fn hosts_of(kind: Kind, object: &Value) -> Vec<String> {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let raw: Vec<&str> = match kind {
        Kind::DestinationRule => object["spec"]["host"].as_str().into_iter().collect(),
        Kind::VirtualService => object["spec"]["hosts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default(),
        // A Deployment configures no host; its desired object names the
        // service it sizes.
        Kind::Deployment => Vec::new(),
    };
    raw.into_iter()
        .map(|h| crate::plan::qualify_host(h, ns))
        .collect()
}

/// Every leaf of `desired` whose live value differs, as
/// `{"path", "live", "desired"}` (live is null where the field is absent).
pub fn diff(live: &Value, desired: &Value, path: &str) -> Vec<Value> {
    match desired {
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| {
                diff(
                    live.get(k).unwrap_or(&Value::Null),
                    v,
                    &format!("{path}.{k}"),
                )
            })
            .collect(),
        leaf if live != leaf => {
            vec![serde_json::json!({"path": path, "live": live, "desired": leaf})]
        }
        _ => Vec::new(),
    }
}
