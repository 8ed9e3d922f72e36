//! `ChainSLO` (`meshtune.io/v1alpha1`): a chain and its objective declared
//! as a namespaced Kubernetes object. The CRD manifest is generated from
//! this type (`meshtune-agent crd`) and committed as
//! `manifests/crd-chainslo.yaml`; a test fails when they drift apart.

use kube::CustomResource;
use meshtune_filter_core::control::Priority;
use meshtune_filter_core::naming::is_label_safe;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the chain is recognised where it enters the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntryMatch {
    /// Exact host (`:authority` without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The latency objective: `percentile` of requests within `latencyMs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Objective {
    pub latency_ms: f64,
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    /// How long a request may take at most before it is failed (the
    /// deadline budget per-hop timeouts are cut from); default 4 × `latencyMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<f64>,
}

fn default_percentile() -> f64 {
    99.0
}

#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meshtune.io",
    version = "v1alpha1",
    kind = "ChainSLO",
    plural = "chainslos",
    shortname = "cslo",
    namespaced,
    status = "ChainSLOStatus",
    printcolumn = r#"{"name":"Objective","type":"number","jsonPath":".spec.objective.latencyMs"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChainSLOSpec {
    /// Chain name as the filter labels it (letters, digits, `-`, `_`).
    pub chain: String,
    pub entry: EntryMatch,
    pub objective: Objective,
    #[serde(default)]
    pub priority: PriorityClass,
}

/// Priority class of the chain: under saturation `low` is shed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    High,
    #[default]
    Normal,
    Low,
}

impl From<PriorityClass> for Priority {
    fn from(p: PriorityClass) -> Priority {
        match p {
            PriorityClass::High => Priority::High,
            PriorityClass::Normal => Priority::Normal,
            PriorityClass::Low => Priority::Low,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChainSLOStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl ChainSLOSpec {
    /// What is wrong with the object, in words for its status condition.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !is_label_safe(&self.chain) {
            out.push(format!(
                "spec.chain {:?}: use letters, digits, `-` and `_` (at most 64)",
                self.chain
            ));
        }
        if !(self.objective.latency_ms.is_finite() && self.objective.latency_ms > 0.0) {
            out.push("spec.objective.latencyMs: must be a positive number of milliseconds".into());
        }
        if !(self.objective.percentile > 0.0 && self.objective.percentile <= 100.0) {
            out.push("spec.objective.percentile: must be in (0, 100]".into());
        }
        if let Some(d) = self.objective.deadline_ms {
            if !(d.is_finite() && d >= self.objective.latency_ms && d <= 600_000.0) {
                out.push(
                    "spec.objective.deadlineMs: must be at least latencyMs and at most 600000"
                        .into(),
                );
            }
        }
        if self.entry.host.is_none()
            && self.entry.path_prefix.is_none()
            && self.entry.method.is_none()
        {
            out.push("spec.entry: give at least one of host, pathPrefix, method".into());
        }
        if matches!(&self.entry.path_prefix, Some(p) if !p.starts_with('/')) {
            out.push("spec.entry.pathPrefix: must start with `/`".into());
        }
        out
    }

    /// The filter's entry rule for this chain (sent in the agent's policy).
    pub fn entry_rule(&self) -> meshtune_filter_core::rules::ChainRule {
        meshtune_filter_core::rules::ChainRule {
            chain: self.chain.clone(),
            host: self.entry.host.clone(),
            path_prefix: self.entry.path_prefix.clone(),
            method: self.entry.method.clone(),
        }
    }

    /// The `Valid` condition to write to the object's status.
    pub fn validity(&self) -> Condition {
        let problems = self.problems();
        if problems.is_empty() {
            Condition {
                type_: "Valid".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: String::new(),
            }
        } else {
            Condition {
                type_: "Valid".into(),
                status: "False".into(),
                reason: "Invalid".into(),
                message: problems.join("; "),
            }
        }
    }
}

/// The CRD manifest as committed in `manifests/crd-chainslo.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let header =
        "# Generated by `meshtune-agent crd` from agent/src/k8s/chainslo.rs; do not edit.\n";
    Ok(format!(
        "{header}{}",
        serde_yaml_ng::to_string(&ChainSLO::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChainSLOSpec {
        ChainSLOSpec {
            chain: "checkout".into(),
            entry: EntryMatch {
                path_prefix: Some("/cart/checkout".into()),
                ..Default::default()
            },
            objective: Objective {
                latency_ms: 250.0,
                percentile: 99.0,
                deadline_ms: None,
            },
            priority: PriorityClass::High,
        }
    }

    #[test]
    fn valid_objects_are_accepted() {
        assert_eq!(spec().validity().status, "True");
    }

    #[test]
    fn invalid_objects_say_what_is_wrong() {
        let mut s = spec();
        s.chain = "check out".into();
        s.objective.latency_ms = 0.0;
        s.entry = EntryMatch {
            path_prefix: Some("cart".into()),
            ..Default::default()
        };
        let c = s.validity();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        for field in [
            "spec.chain",
            "spec.objective.latencyMs",
            "spec.entry.pathPrefix",
        ] {
            assert!(c.message.contains(field), "{}", c.message);
        }
    }

    #[test]
    fn the_crd_names_the_group_and_kind() {
        let y = crd_yaml().unwrap();
        assert!(y.contains("name: chainslos.meshtune.io"), "{y}");
        assert!(y.contains("kind: ChainSLO"));
    }
}
