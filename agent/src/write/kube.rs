//! The Kubernetes sink: server-side apply with field manager `meshtune`
//! (only the fields meshtune sends become its own), never forcing over
//! another manager unless the guard says so. The guard in front of it
//! decides what may be written, and only the Lease holder writes.

use crate::plan::{Kind, FIELD_MANAGER};
use crate::write::{Autoscalers, ObjectEvent, Outcome, Sink, SinkError};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

/// The API resource of `kind`.
pub fn resource(kind: Kind) -> ApiResource {
    let (group, version) = match kind {
        Kind::Deployment => ("apps", "v1"),
        _ => ("networking.istio.io", "v1"),
    };
    api_resource(group, version, kind.as_str(), kind.plural())
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub struct KubeSink {
    client: Client,
    /// Resize running pods in place (`pods/resize`, Kubernetes ≥ 1.33)
    /// instead of changing the Deployment's template (which rolls them).
    resize_in_place: bool,
}

impl KubeSink {
    pub fn new(client: Client) -> Self {
        KubeSink {
            client,
            resize_in_place: false,
        }
    }

    /// Resources are applied by resizing the Deployment's running pods in
    /// place rather than through its template.
    pub fn resizing_in_place(mut self, yes: bool) -> Self {
        self.resize_in_place = yes;
        self
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &resource(kind))
    }

    /// Every object of `(group, version, kind, plural)` in `namespace`, as JSON.
    async fn list_json(
        &self,
        namespace: &str,
        (group, version, kind, plural): (&str, &str, &str, &str),
    ) -> Result<Vec<Value>, kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &api_resource(group, version, kind, plural),
        );
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect())
    }

    /// Lists `plural` of `group/version` in `namespace`; an API the server
    /// does not serve (no VPA installed, say) holds nothing.
    async fn list_or_none(
        &self,
        namespace: &str,
        resource: (&str, &str, &str, &str),
    ) -> Result<Vec<Value>, SinkError> {
        let plural = resource.3;
        match self.list_json(namespace, resource).await {
            Ok(list) => Ok(list),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(SinkError::Unavailable(format!(
                "listing {plural} in {namespace}: {e}"
            ))),
        }
    }

    /// Resizes every running pod of Deployment `name` to the resources in
    /// `object` (a body from [`crate::plan::deployment::resources_apply`]).
    async fn resize_pods(&self, namespace: &str, name: &str, object: &Value) -> Outcome {
        let deployment = match self.api(Kind::Deployment, namespace).get(name).await {
            Ok(d) => d,
            Err(e) => return failed(Kind::Deployment, e),
        };
        let labels = deployment.data["spec"]["selector"]["matchLabels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if labels.is_empty() {
            return Outcome::Failed(format!(
                "Deployment {namespace}/{name}: no spec.selector.matchLabels to find its pods by"
            ));
        }
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &api_resource("", "v1", "Pod", "pods"),
        );
        let list = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l,
            Err(e) => return Outcome::Failed(format!("listing the pods of {name}: {e}")),
        };
        let body = crate::plan::deployment::resize_patch(object);
        for pod in list.items {
            let Some(pod_name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let patched = pods
                .patch_subresource(
                    "resize",
                    pod_name,
                    &PatchParams::default(),
                    &Patch::Strategic(&body),
                )
                .await;
            match patched {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {
                    return Outcome::Failed(format!(
                        "pod {pod_name}: the API server does not serve pods/resize (Kubernetes \
                         ≥ 1.33 does): set `resources.in_place_resize: false` ({})",
                        s.message
                    ))
                }
                Err(e) => return Outcome::Failed(format!("resizing pod {pod_name}: {e}")),
            }
        }
        Outcome::Applied
    }
}

fn failed(kind: Kind, e: kube::Error) -> Outcome {
    match e {
        kube::Error::Api(s) if s.code == 409 => Outcome::Conflict(s.message),
        kube::Error::Api(s) if s.code == 404 && kind == Kind::Deployment => {
            Outcome::Failed(format!("no such Deployment: {}", s.message))
        }
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

    fn resizes_in_place(&self, kind: Kind) -> bool {
        kind == Kind::Deployment && self.resize_in_place
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

    async fn autoscalers(&self, namespace: &str) -> Result<Autoscalers, SinkError> {
        Ok(Autoscalers {
            hpas: self
                .list_or_none(
                    namespace,
                    (
                        "autoscaling",
                        "v2",
                        "HorizontalPodAutoscaler",
                        "horizontalpodautoscalers",
                    ),
                )
                .await?,
            vpas: self
                .list_or_none(
                    namespace,
                    (
                        "autoscaling.k8s.io",
                        "v1",
                        "VerticalPodAutoscaler",
                        "verticalpodautoscalers",
                    ),
                )
                .await?,
        })
    }

    async fn pod_metrics(&self, namespace: &str) -> Result<Vec<Value>, SinkError> {
        let resource = ("metrics.k8s.io", "v1beta1", "PodMetrics", "pods");
        match self.list_json(namespace, resource).await {
            Ok(list) => Ok(list),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(SinkError::Unavailable(
                "the API server does not serve metrics.k8s.io (install metrics-server)".into(),
            )),
            Err(e) => Err(SinkError::Unavailable(format!(
                "listing pod metrics in {namespace}: {e}"
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
        if kind == Kind::Deployment && self.resize_in_place {
            return self.resize_pods(namespace, name, object).await;
        }
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

    /// An `events.k8s.io/v1` Event regarding the object.
    async fn record_event(&self, e: &ObjectEvent) -> Result<(), SinkError> {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::events::v1::Event;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let at = k8s_openapi::jiff::Timestamp::from_second(e.at_s as i64)
            .map_err(|x| SinkError::Unavailable(format!("event time {}: {x}", e.at_s)))?;
        let mut note = e.note.clone();
        if note.len() > 1024 {
            let mut cut = 1021;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", e.name)),
                namespace: Some(e.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(at)),
            action: Some(e.reason.to_owned()),
            reason: Some(e.reason.to_owned()),
            note: Some(note),
            type_: Some("Normal".into()),
            reporting_controller: Some("meshtune.io/agent".into()),
            reporting_instance: Some(
                std::env::var("NODE_NAME").unwrap_or_else(|_| "meshtune-agent".into()),
            ),
            regarding: Some(ObjectReference {
                api_version: Some(resource(e.kind).api_version),
                kind: Some(e.kind.as_str().to_owned()),
                namespace: Some(e.namespace.clone()),
                name: Some(e.name.clone()),
                ..ObjectReference::default()
            }),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &e.namespace)
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|x| {
                SinkError::Unavailable(format!("recording an event in {}: {x}", e.namespace))
            })
    }

    async fn remove(&self, kind: Kind, namespace: &str, name: &str) -> Outcome {
        if kind == Kind::Deployment {
            // The Deployment is the user's: only its resources are meshtune's.
            return Outcome::Failed(format!(
                "Deployment {namespace}/{name} is the user's; meshtune never deletes it"
            ));
        }
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
