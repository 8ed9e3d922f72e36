//! Which hosts users keep meshtune out of: the annotation
//! `meshtune.io/manage: "false"` on a Service, or on its namespace (every
//! Service in it).

use crate::plan::MANAGE_ANNOTATION;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ListParams};
use kube::Client;
use std::collections::BTreeSet;

fn opted_out(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(MANAGE_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// The fully qualified hosts of the opted-out Services in `namespaces`.
pub async fn opted_out_hosts(
    client: &Client,
    namespaces: &BTreeSet<String>,
) -> Result<BTreeSet<String>, kube::Error> {
    let mut out = BTreeSet::new();
    for ns in namespaces {
        let whole = match Api::<Namespace>::all(client.clone()).get_opt(ns).await? {
            Some(n) => opted_out(n.metadata.annotations.as_ref()),
            None => false,
        };
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        for s in services.list(&ListParams::default()).await? {
            if whole || opted_out(s.metadata.annotations.as_ref()) {
                if let Some(name) = &s.metadata.name {
                    out.insert(format!("{name}.{ns}.svc.cluster.local"));
                }
            }
        }
    }
    Ok(out)
}
