//! The one writer of DestinationRules: server-side apply with field manager
//! `meshtune` (only the fields meshtune sends become its own), never forcing
//! over another manager unless configured, only while leading, at most N
//! changes per object and window, and a rollback when the chains through a
//! changed rule lose SLO attainment.

use crate::k8s::destinationrule::{significant_change, DesiredRule, FIELD_MANAGER};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

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
        leaf if live != leaf => vec![json!({"path": path, "live": live, "desired": leaf})],
        _ => Vec::new(),
    }
}
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compute and report, write nothing (the default).
    Recommend,
    Apply,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub mode: Mode,
    /// At most this many changes per object within `window_s`.
    pub max_changes: usize,
    pub window_s: u64,
    /// Relative change below which a rule is left as it is.
    pub hysteresis: f64,
    /// Take fields over from other managers on conflict.
    pub force: bool,
    /// How long after a change attainment is watched.
    pub evaluation_s: u64,
    /// Attainment drop (absolute) that triggers a rollback.
    pub rollback_drop: f64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            mode: Mode::Recommend,
            max_changes: 3,
            window_s: 3600,
            hysteresis: 0.2,
            force: false,
            evaluation_s: 300,
            rollback_drop: 0.05,
        }
    }
}

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
    /// The DestinationRule API is missing: Istio is not installed.
    IstioMissing(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct History {
    changes: VecDeque<u64>,
    current: Option<Value>,
    previous: Option<Value>,
    /// (applied at, attainment before) while the change is evaluated.
    evaluating: Option<(u64, f64)>,
}

pub fn destination_rule_resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "DestinationRule".into(),
        plural: "destinationrules".into(),
    }
}

pub struct Writer {
    client: Client,
    pub config: WriterConfig,
    history: BTreeMap<(String, String), History>,
    /// The latest recommendation per object (served on the API in recommend mode).
    pub recommendations: BTreeMap<(String, String), Value>,
}

impl Writer {
    pub fn new(client: Client, config: WriterConfig) -> Self {
        Writer {
            client,
            config,
            history: BTreeMap::new(),
            recommendations: BTreeMap::new(),
        }
    }

    /// The live rule's spec, or null when there is none (or no Istio).
    async fn live_spec(&self, namespace: &str, name: &str) -> Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &destination_rule_resource());
        match api.get_opt(name).await {
            Ok(Some(obj)) => obj.data.get("spec").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    async fn apply(&self, namespace: &str, name: &str, object: &Value) -> Outcome {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &destination_rule_resource());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if self.config.force {
            params = params.force();
        }
        match api.patch(name, &params, &Patch::Apply(object)).await {
            Ok(_) => Outcome::Applied,
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Conflict(s.message),
            Err(kube::Error::Api(s)) if s.code == 404 => Outcome::IstioMissing(format!(
                "the API server has no DestinationRule (networking.istio.io/v1): is Istio installed? ({})",
                s.message
            )),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Brings the cluster towards `desired`. `attainment(ns, name)` is the
    /// current SLO attainment of the chains through that rule's service,
    /// remembered as the baseline of each change.
    pub async fn reconcile(
        &mut self,
        desired: &[DesiredRule],
        leader: bool,
        now_s: u64,
        attainment: &(dyn Fn(&str, &str) -> Option<f64> + Sync),
    ) -> Vec<((String, String), Outcome)> {
        let mut out = Vec::new();
        for d in desired {
            let key = (d.namespace.clone(), d.name.clone());
            let h = self.history.entry(key.clone()).or_default();
            if let Some(cur) = &h.current {
                if !significant_change(cur, &d.object, self.config.hysteresis) {
                    out.push((key, Outcome::Unchanged));
                    continue;
                }
            }
            if self.config.mode == Mode::Recommend {
                // What would change: meshtune's fields against the live rule (read only).
                let live = self.live_spec(&d.namespace, &d.name).await;
                let changes = diff(&live, &d.object["spec"], ".spec");
                self.recommendations.insert(
                    key.clone(),
                    json!({"desired": d.object, "changes": changes}),
                );
                out.push((key, Outcome::Recommended));
                continue;
            }
            if !leader {
                out.push((key, Outcome::NotLeader));
                continue;
            }
            while h
                .changes
                .front()
                .is_some_and(|t| t + self.config.window_s <= now_s)
            {
                h.changes.pop_front();
            }
            if h.changes.len() >= self.config.max_changes {
                out.push((key, Outcome::BudgetExhausted));
                continue;
            }
            let outcome = self.apply(&d.namespace, &d.name, &d.object).await;
            let h = self.history.entry(key.clone()).or_default();
            if outcome == Outcome::Applied {
                h.changes.push_back(now_s);
                h.previous = h.current.replace(d.object.clone());
                h.evaluating = attainment(&d.namespace, &d.name).map(|a| (now_s, a));
            }
            out.push((key, outcome));
        }
        out
    }

    /// After the evaluation window, restores the previous rule of any change
    /// whose chains lost more than `rollback_drop` of SLO attainment.
    pub async fn evaluate(
        &mut self,
        leader: bool,
        now_s: u64,
        attainment: &(dyn Fn(&str, &str) -> Option<f64> + Sync),
    ) -> Vec<Rollback> {
        let mut rollbacks = Vec::new();
        let keys: Vec<(String, String)> = self.history.keys().cloned().collect();
        for (ns, name) in keys {
            let Some(h) = self.history.get_mut(&(ns.clone(), name.clone())) else {
                continue;
            };
            let Some((at, before)) = h.evaluating else {
                continue;
            };
            if now_s < at + self.config.evaluation_s {
                continue;
            }
            h.evaluating = None;
            let Some(after) = attainment(&ns, &name) else {
                continue;
            };
            if before - after <= self.config.rollback_drop || !leader {
                continue;
            }
            let Some(previous) = h.previous.clone() else {
                continue;
            };
            let reason = format!(
                "SLO attainment of the chains through {ns}/{name} fell from {:.1} % to {:.1} % after the change",
                before * 100.0,
                after * 100.0
            );
            if self.apply(&ns, &name, &previous).await == Outcome::Applied {
                if let Some(h) = self.history.get_mut(&(ns.clone(), name.clone())) {
                    h.current = Some(previous);
                    h.previous = None;
                }
                tracing::warn!("rolled back {ns}/{name}: {reason}");
                rollbacks.push(Rollback {
                    namespace: ns,
                    name,
                    reason,
                });
            }
        }
        rollbacks
    }
}
