//! Pure planners: what was measured and declared in, decisions out. No
//! clock is read and nothing is written here: time comes in as arguments,
//! so every planner runs under a virtual clock in tests.

pub mod assurance;
pub mod deployment;
pub mod intent;
pub mod istio_metrics;
pub mod lookahead;
pub mod model_choice;
pub mod observe;
pub mod policy;
pub mod resources;
pub mod sizing;
pub mod traffic;

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The kinds of object meshtune writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    DestinationRule,
    VirtualService,
    /// Only a container's `resources` (server-side apply of the fields
    /// meshtune owns in the user's Deployment).
    Deployment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Deployment => "Deployment",
        }
    }

    /// Whether the kind is Istio's (one object per host; a user's object
    /// for a host wins over meshtune's).
    pub fn is_istio(self) -> bool {
        self != Kind::Deployment
    }

    /// The plural of the kind's API resource.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::DestinationRule => "destinationrules",
            Kind::VirtualService => "virtualservices",
            Kind::Deployment => "deployments",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "DestinationRule" => Some(Kind::DestinationRule),
            "VirtualService" => Some(Kind::VirtualService),
            "Deployment" => Some(Kind::Deployment),
            _ => None,
        }
    }
}

/// One object the agent wants, whole, as it leaves through the write seam,
/// with the reason for every value it decided.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The service host it configures, fully qualified.
    pub host: String,
    pub object: Value,
    /// Field path (e.g. `trafficPolicy.connectionPool.http.http2MaxRequests`)
    /// → why it has the value it has.
    pub reasons: BTreeMap<String, String>,
}

/// The label on every object meshtune writes; only objects carrying it are
/// ever replaced or removed.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value, and meshtune's server-side apply field manager.
pub const FIELD_MANAGER: &str = "meshtune";
/// The annotation a user puts on a Service or namespace to keep meshtune out.
pub const MANAGE_ANNOTATION: &str = "meshtune.io/manage";

/// A service host as Istio resolves it from an object in `namespace`:
/// `reviews`, `reviews.bookinfo` and `reviews.bookinfo.svc.cluster.local`
/// all name the same service.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.svc.cluster.local"),
        2 => format!("{host}.svc.cluster.local"),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hosts_resolve_in_the_objects_namespace() {
        for h in [
            "reviews",
            "reviews.bookinfo",
            "reviews.bookinfo.svc.cluster.local",
        ] {
            assert_eq!(
                qualify_host(h, "bookinfo"),
                "reviews.bookinfo.svc.cluster.local"
            );
        }
        assert_eq!(
            qualify_host("reviews", "other"),
            "reviews.other.svc.cluster.local"
        );
    }
}
