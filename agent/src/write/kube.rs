//! The Kubernetes sink: server-side apply with field manager `meshtune`
//! (only the fields meshtune sends become its own), never forcing over
//! another manager unless the guard says so. The guard in front of it
//! decides what may be written, and only the Lease holder writes.

use crate::plan::{Kind, FIELD_MANAGER};
use crate::write::{Outcome, Sink, SinkError};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

/// The Istio API resource of `kind`.
pub fn resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    }
}

pub struct KubeSink {
    client: Client,
}

impl KubeSink {
    pub fn new(client: Client) -> Self {
        KubeSink { client }
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &resource(kind))
    }
}

fn failed(kind: Kind, e: kube::Error) -> Outcome {
    match e {
        kube::Error::Api(s) if s.code == 409 => Outcome::Conflict(s.message),
        kube::Error::Api(s) if s.code == 404 => Outcome::IstioMissing(
            SinkError::IstioMissing {
                kind: kind.as_str(),
                message: s.message,
            }
            .to_string(),
        ),
        e => Outcome::Failed(e.to_string()),
    }
}

impl Sink for KubeSink {
    fn describe(&self) -> String {
        "kubernetes".into()
    }

    fn can_take_over(&self) -> bool {
        true
    }

    async fn list(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, SinkError> {
        match self.api(kind, namespace).list(&ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(SinkError::IstioMissing {
                kind: kind.as_str(),
                message: s.message,
            }),
            Err(e) => Err(SinkError::Unavailable(format!(
                "listing {} in {namespace}: {e}",
                kind.plural()
            ))),
        }
    }

    async fn apply(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: &Value,
        force: bool,
    ) -> Outcome {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        match self
            .api(kind, namespace)
            .patch(name, &params, &Patch::Apply(object))
            .await
        {
            Ok(_) => Outcome::Applied,
            Err(e) => failed(kind, e),
        }
    }

    async fn remove(&self, kind: Kind, namespace: &str, name: &str) -> Outcome {
        match self
            .api(kind, namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Outcome::Applied,
            Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Applied,
            Err(e) => failed(kind, e),
        }
    }
}
