//! One guard in front of every sink: recommend-only mode, ownership (a
//! user's object for the same host wins; opted-out services are left
//! alone), hysteresis, the change budget, and rollback of a change after
//! which the chains through it lost SLO attainment. Sinks differ only in
//! how they read and write.

use crate::plan::{DesiredObject, Kind, MANAGED_BY_LABEL};
use crate::write::{diff, hosts_of, is_meshtune_object, Outcome, Sink};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compute and report, write nothing (the default).
    Recommend,
    Apply,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Recommend => "recommend",
            Mode::Apply => "apply",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub mode: Mode,
    /// At most this many changes per object within `window_s`.
    pub max_changes: usize,
    /// At most this many within `window_s` for an object the sink resizes
    /// in place (nothing restarts).
    pub max_resizes: usize,
    pub window_s: u64,
    /// Relative change below which an object is left as it is.
    pub hysteresis: f64,
    /// Take fields over from other field managers on conflict.
    pub force: bool,
    /// How long after a change attainment is watched.
    pub evaluation_s: u64,
    /// Attainment drop (absolute) that triggers a rollback.
    pub rollback_drop: f64,
    /// `trafficPolicy` fields meshtune may take over in a user's own
    /// DestinationRule for a host it wants to configure.
    pub take_over_fields: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            mode: Mode::Recommend,
            max_changes: 3,
            max_resizes: crate::config::DEFAULT_MAX_RESIZES_PER_HOUR,
            window_s: 3600,
            hysteresis: 0.2,
            force: false,
            evaluation_s: 300,
            rollback_drop: 0.05,
            take_over_fields: Vec::new(),
        }
    }
}

/// An object as the guard tracks it: kind, namespace, name.
pub type Key = (Kind, String, String);

fn key_of(d: &DesiredObject) -> Key {
    (d.kind, d.namespace.clone(), d.name.clone())
}

/// `Kind namespace/name`, how objects are named in reports.
pub fn label(k: &Key) -> String {
    format!("{} {}/{}", k.0.as_str(), k.1, k.2)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub key: Key,
    pub reason: String,
}

#[derive(Debug, Default)]
struct History {
    changes: VecDeque<u64>,
    current: Option<DesiredObject>,
    /// What the last change replaced; `None` when it created the object
    /// (its rollback removes it).
    previous: Option<DesiredObject>,
    /// (applied at, attainment before) while the change is evaluated.
    evaluating: Option<(u64, f64)>,
}

pub struct Guard {
    pub config: GuardConfig,
    history: BTreeMap<Key, History>,
    /// The latest recommendation per object, whatever the mode.
    recommendations: BTreeMap<String, Value>,
    /// Hosts a user's own object covers, with what meshtune did about it.
    conflicts: BTreeMap<String, Value>,
}

/// Numbers that may move in an object; a change smaller than `hysteresis`
/// (relative) on every one of them is not worth applying.
/// Whether `after` gives some container of a Deployment more CPU than
/// `before` did. The budget holds back lowering, not this: the allocation
/// raises CPU only to keep objectives (a quota that throttles costs latency
/// at once), each raise follows a rise in load or a lowering the budget
/// counted, and so cannot flap more often than the budget allows, as an
/// HPA scales up at once and down only after its stabilisation window.
fn raises_cpu(before: &Value, after: &Value) -> bool {
    let Some(containers) = after["spec"]["template"]["spec"]["containers"].as_array() else {
        return false;
    };
    containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .any(|name| {
            match (
                crate::plan::deployment::container_cpu(before, name),
                crate::plan::deployment::container_cpu(after, name),
            ) {
                (Some(b), Some(a)) => a > b,
                _ => false,
            }
        })
}

pub fn significant_change(old: &Value, new: &Value, hysteresis: f64) -> bool {
    fn numbers(v: &Value, path: String, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Object(o) => o
                .iter()
                .for_each(|(k, c)| numbers(c, format!("{path}.{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| numbers(c, format!("{path}[{i}]"), out)),
            Value::Number(n) => out.push((path, n.as_f64().unwrap_or(0.0))),
            // Durations ("2s", "228ms") move like numbers: a route timeout
            // from 216 ms to 228 ms is a small move, not a new value.
            Value::String(d) if millis(d).is_some() => out.push((path, millis(d).unwrap_or(0.0))),
            // So do resource quantities ("250m" → "260m" is a small move).
            Value::String(q) if quantity(q).is_some() => {
                out.push((path, quantity(q).unwrap_or(0.0)))
            }
            _ => out.push((path, f64::NAN)),
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    numbers(&old["spec"], String::new(), &mut a);
    numbers(&new["spec"], String::new(), &mut b);
    if a.len() != b.len() || a.iter().zip(&b).any(|((pa, _), (pb, _))| pa != pb) {
        return true;
    }
    if strip_numbers(&old["spec"]) != strip_numbers(&new["spec"]) {
        return true;
    }
    a.iter().zip(&b).any(|((_, x), (_, y))| {
        let base = x.abs().max(1.0);
        (x - y).abs() / base > hysteresis
    })
}

/// A duration (`"2s"`, `"0.5s"`, `"228ms"`) in milliseconds, the unit
/// large enough for the hysteresis' floor of 1.
fn millis(d: &str) -> Option<f64> {
    match d.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok(),
        None => Some(d.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0),
    }
}

/// A resource quantity in units large enough for the hysteresis' floor
/// of 1: CPU in millicores (`"250m"`, `"2"`), memory in MiB (`"256Mi"`).
fn quantity(q: &str) -> Option<f64> {
    use crate::plan::deployment::{parse_cpu, parse_memory};
    if q.ends_with('i') || q.ends_with(['k', 'M', 'G', 'T']) {
        parse_memory(q)
    } else if q.ends_with('m') || q.parse::<f64>().is_ok() {
        parse_cpu(q).map(|c| c * 1000.0)
    } else {
        None
    }
}

fn strip_numbers(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, c)| (k.clone(), strip_numbers(c)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_numbers).collect()),
        Value::Number(_) => Value::Null,
        Value::String(d) if millis(d).is_some() || quantity(d).is_some() => Value::Null,
        other => other.clone(),
    }
}

/// `d` aimed at a user's own DestinationRule `user`: only the named
/// `trafficPolicy` fields, under the user's name and host, without
/// meshtune's label (the object stays the user's).
fn taken_over(d: &DesiredObject, user: &Value, fields: &[String]) -> Option<DesiredObject> {
    let name = user["metadata"]["name"].as_str()?;
    let tp = &d.object["spec"]["trafficPolicy"];
    let picked: serde_json::Map<String, Value> = fields
        .iter()
        .filter_map(|f| Some((f.clone(), tp.get(f)?.clone())))
        .collect();
    if picked.is_empty() {
        return None;
    }
    let mut object = d.object.clone();
    object["metadata"] = json!({"name": name, "namespace": d.namespace});
    object["spec"] = json!({"host": user["spec"]["host"], "trafficPolicy": picked});
    Some(DesiredObject {
        name: name.to_owned(),
        object,
        reasons: d
            .reasons
            .iter()
            .filter(|(p, _)| {
                fields
                    .iter()
                    .any(|f| p.starts_with(&format!("trafficPolicy.{f}")))
            })
            .map(|(p, r)| (p.clone(), r.clone()))
            .collect(),
        ..d.clone()
    })
}

/// `live` cut down to the fields `shape` has: what those fields held
/// before meshtune wrote them (a field absent from `live` stays absent, so
/// writing the result back with server-side apply unsets it).
pub fn project(live: &Value, shape: &Value) -> Value {
    match (live, shape) {
        (Value::Object(l), Value::Object(s)) => Value::Object(
            s.iter()
                .filter_map(|(k, sv)| Some((k.clone(), project(l.get(k)?, sv))))
                .collect(),
        ),
        // Lists keyed by name (a Deployment's containers): each element of
        // the shape against the live element of the same name.
        (Value::Array(l), Value::Array(s)) if s.iter().all(|e| e["name"].is_string()) => {
            Value::Array(
                s.iter()
                    .filter_map(|se| {
                        let le = l.iter().find(|le| le["name"] == se["name"])?;
                        Some(project(le, se))
                    })
                    .collect(),
            )
        }
        (l, _) => l.clone(),
    }
}

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        Guard {
            config,
            history: BTreeMap::new(),
            recommendations: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        }
    }

    /// What the guard would write or has written, with reasons, and the
    /// hosts users' objects cover: served on `/v1/recommendations`.
    pub fn report(&self) -> Value {
        json!({
            "mode": self.config.mode.as_str(),
            "objects": self.recommendations,
            "conflicts": self.conflicts,
        })
    }

    /// Hosts a user's object covers right now.
    pub fn user_owned_hosts(&self) -> usize {
        self.conflicts.len()
    }

    /// Brings the sink towards `desired`. `opted_out` holds the hosts whose
    /// Service or namespace opted out; `attainment` the current SLO
    /// attainment of the chains through each host, remembered as the
    /// baseline of each change.
    pub async fn reconcile<S: Sink + Sync>(
        &mut self,
        sink: &S,
        desired: &[DesiredObject],
        opted_out: &BTreeSet<String>,
        leader: bool,
        now_s: u64,
        attainment: &BTreeMap<String, f64>,
    ) -> Vec<(Key, Outcome)> {
        let mut out = Vec::new();
        let mut listed: BTreeMap<(Kind, String), Vec<Value>> = BTreeMap::new();
        let mut conflicts = BTreeMap::new();
        for d in desired {
            if opted_out.contains(&d.host) {
                self.recommendations.remove(&label(&key_of(d)));
                out.push((key_of(d), Outcome::OptedOut));
                continue;
            }
            let lk = (d.kind, d.namespace.clone());
            if !listed.contains_key(&lk) {
                match sink.list(d.kind, &d.namespace).await {
                    Ok(objs) => {
                        listed.insert(lk.clone(), objs);
                    }
                    Err(e) => {
                        let outcome = match e {
                            crate::write::SinkError::IstioMissing { .. } => {
                                Outcome::IstioMissing(e.to_string())
                            }
                            _ => Outcome::Failed(e.to_string()),
                        };
                        out.push((key_of(d), outcome));
                        continue;
                    }
                }
            }
            let existing = listed.get(&lk).map(Vec::as_slice).unwrap_or_default();
            // A Deployment is always the user's: meshtune applies only the
            // resources it owns into it, so it never yields it to the user.
            let users: Vec<&Value> = existing
                .iter()
                .filter(|o| {
                    d.kind.is_istio()
                        && !is_meshtune_object(o)
                        && hosts_of(d.kind, o).contains(&d.host)
                })
                .collect();
            let mut target = d.clone();
            // Opting a service into resource management (its `max_cpu`) is
            // the consent to take its container's resources from the
            // Deployment's author.
            let mut force = self.config.force || d.kind == Kind::Deployment;
            if let Some(user) = users.first() {
                let user_name = user["metadata"]["name"].as_str().unwrap_or("").to_owned();
                let take = (d.kind == Kind::DestinationRule
                    && sink.can_take_over()
                    && !self.config.take_over_fields.is_empty())
                .then(|| taken_over(d, user, &self.config.take_over_fields))
                .flatten();
                // meshtune's own object for that host goes as soon as a user's appears.
                let own = existing.iter().any(|o| {
                    is_meshtune_object(o) && o["metadata"]["name"].as_str() == Some(&d.name)
                });
                let mut action = match &take {
                    Some(_) => format!(
                        "taking over {} in the user's object",
                        self.config.take_over_fields.join(", ")
                    ),
                    None => "writing nothing for this host; recommendation below".into(),
                };
                if own {
                    if self.config.mode == Mode::Apply && leader {
                        let o = sink.remove(d.kind, &d.namespace, &d.name).await;
                        if o == Outcome::Applied {
                            self.history.remove(&key_of(d));
                            action = format!("withdrew meshtune's {}; {action}", d.name);
                            out.push((key_of(d), Outcome::Withdrawn));
                        } else {
                            out.push((key_of(d), o));
                        }
                    } else {
                        action = format!("would withdraw meshtune's {}; {action}", d.name);
                    }
                }
                conflicts.insert(
                    d.host.clone(),
                    json!({
                        "kind": d.kind.as_str(),
                        "user_object": format!("{}/{}", d.namespace, user_name),
                        "why": "Istio merges neither two DestinationRules nor two VirtualServices for one host deterministically",
                        "action": action,
                        "recommended": d.object,
                        "reasons": d.reasons,
                    }),
                );
                match take {
                    Some(t) => {
                        target = t;
                        force = true;
                    }
                    None => {
                        self.recommendations.remove(&label(&key_of(d)));
                        out.push((key_of(d), Outcome::UserOwned(user_name)));
                        continue;
                    }
                }
            } else if let Some(same_name) = existing.iter().find(|o| {
                d.kind.is_istio()
                    && !is_meshtune_object(o)
                    && o["metadata"]["name"].as_str() == Some(&d.name)
            }) {
                // A user's object under meshtune's name, for another host: not ours to replace.
                let _ = same_name;
                out.push((key_of(d), Outcome::UserOwned(d.name.clone())));
                continue;
            }
            let key = key_of(&target);
            let live = existing
                .iter()
                .find(|o| o["metadata"]["name"].as_str() == Some(&target.name))
                .cloned()
                .unwrap_or(Value::Null);
            self.recommendations.insert(
                label(&key),
                json!({
                    "host": target.host,
                    "desired": target.object,
                    "changes": diff(&live["spec"], &target.object["spec"], ".spec"),
                    "reasons": target.reasons,
                }),
            );
            let h = self.history.entry(key.clone()).or_default();
            if let Some(cur) = &h.current {
                if !significant_change(&cur.object, &target.object, self.config.hysteresis) {
                    out.push((key, Outcome::Unchanged));
                    continue;
                }
            }
            if self.config.mode == Mode::Recommend {
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
            let before = h.current.as_ref().map_or(&live, |c| &c.object);
            let budget = if sink.resizes_in_place(target.kind) {
                self.config.max_resizes
            } else {
                self.config.max_changes
            };
            if h.changes.len() >= budget && !raises_cpu(before, &target.object) {
                out.push((key, Outcome::BudgetExhausted));
                continue;
            }
            let outcome = sink
                .apply(
                    target.kind,
                    &target.namespace,
                    &target.name,
                    &target.object,
                    force,
                )
                .await;
            if outcome == Outcome::Applied {
                // What this change replaced: what meshtune wrote before (or,
                // after a restart, the live values of the same fields), or
                // nothing when it created the object.
                let replaced = match (&h.current, live.is_null()) {
                    (_, true) => None,
                    (Some(c), false) => Some(c.clone()),
                    (None, false) => {
                        let mut object = project(&live, &target.object);
                        object["metadata"] = target.object["metadata"].clone();
                        Some(DesiredObject {
                            object,
                            ..target.clone()
                        })
                    }
                };
                h.changes.push_back(now_s);
                h.previous = replaced;
                h.current = Some(target.clone());
                h.evaluating = attainment.get(&target.host).map(|a| (now_s, *a));
            }
            out.push((key, outcome));
        }
        self.conflicts = conflicts;
        out
    }

    /// After the evaluation period, undoes any change whose chains lost
    /// more than `rollback_drop` of SLO attainment: the previous object is
    /// written back, or the object removed when the change created it.
    pub async fn evaluate<S: Sink + Sync>(
        &mut self,
        sink: &S,
        leader: bool,
        now_s: u64,
        attainment: &BTreeMap<String, f64>,
    ) -> Vec<Rollback> {
        let mut rollbacks = Vec::new();
        let keys: Vec<Key> = self.history.keys().cloned().collect();
        for key in keys {
            let Some(h) = self.history.get_mut(&key) else {
                continue;
            };
            let (Some((at, before)), Some(current)) = (h.evaluating, h.current.clone()) else {
                continue;
            };
            if now_s < at + self.config.evaluation_s {
                continue;
            }
            h.evaluating = None;
            let Some(after) = attainment.get(&current.host).copied() else {
                continue;
            };
            if before - after <= self.config.rollback_drop || !leader {
                continue;
            }
            let reason = format!(
                "SLO attainment of the chains through {} fell from {:.1} % to {:.1} % after the change",
                current.host,
                before * 100.0,
                after * 100.0
            );
            let (kind, ns, name) = key.clone();
            let previous = h.previous.clone();
            let outcome = match &previous {
                Some(p) => {
                    sink.apply(kind, &ns, &name, &p.object, self.config.force)
                        .await
                }
                None if current.object["metadata"]["labels"][MANAGED_BY_LABEL].is_string() => {
                    sink.remove(kind, &ns, &name).await
                }
                // A taken-over user object: meshtune's fields cannot be removed one by one here.
                None => Outcome::Failed("no earlier version to restore".into()),
            };
            if outcome == Outcome::Applied {
                if let Some(h) = self.history.get_mut(&key) {
                    h.current = previous;
                    h.previous = None;
                }
                tracing::warn!("rolled back {}: {reason}", label(&key));
                rollbacks.push(Rollback { key, reason });
            } else {
                tracing::error!("rolling back {} failed: {outcome:?}", label(&key));
            }
        }
        rollbacks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(host_rps: f64) -> Value {
        json!({"spec": {"trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": host_rps}}}}})
    }

    #[test]
    fn projecting_keeps_only_the_fields_meshtune_writes() {
        let live = json!({"spec": {"host": "a", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}, "connectionPool": {"http": {"http2MaxRequests": 7}}}}});
        let shape = json!({"spec": {"host": "a", "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 100, "maxRetries": 3}}}}});
        assert_eq!(
            project(&live, &shape),
            json!({"spec": {"host": "a", "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 7}}}}})
        );
    }

    #[test]
    fn only_more_cpu_for_a_container_is_a_raise() {
        let d = |cpu: &str| {
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "ratings", "resources": {"limits": {"cpu": cpu}}}]}}}})
        };
        assert!(raises_cpu(&d("200m"), &d("300m")));
        assert!(!raises_cpu(&d("300m"), &d("200m")));
        assert!(!raises_cpu(&d("300m"), &d("300m")));
        assert!(!raises_cpu(&Value::Null, &d("300m")), "nothing to compare");
        assert!(!raises_cpu(&dr(1.0), &dr(2.0)), "not a Deployment");
    }

    #[test]
    fn hysteresis_ignores_small_moves() {
        assert!(!significant_change(&dr(200.0), &dr(210.0), 0.2));
        assert!(significant_change(&dr(200.0), &dr(400.0), 0.2));
        let mut with_field = dr(200.0);
        with_field["spec"]["trafficPolicy"]["loadBalancer"] = json!({"simple": "LEAST_REQUEST"});
        assert!(
            significant_change(&dr(200.0), &with_field, 0.2),
            "a new field is a change"
        );
        // Route timeouts in milliseconds: a 5 % move is held, a halving is not.
        let vs = |t: &str| json!({"spec": {"http": [{"timeout": t, "retries": {"attempts": 2}}]}});
        assert!(!significant_change(&vs("216ms"), &vs("228ms"), 0.1));
        assert!(significant_change(&vs("216ms"), &vs("103ms"), 0.1));
        assert!(!significant_change(&vs("2s"), &vs("1950ms"), 0.1));
        assert!(significant_change(&vs("2s"), &vs("0.5s"), 0.1));
    }
}
