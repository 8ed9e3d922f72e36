//! The decision log: every change meshtune makes or recommends, field by
//! field (time, object, field, old → new, the reason, the predicted
//! effect), and — once an evaluation period has passed — its measured
//! effect: the attainment of the chains through the object's host before
//! and after. Bounded (the newest [`MAX_DECISIONS`]); the store keeps it
//! across restarts. Time is passed in.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Decisions kept (in memory and in the store).
pub const MAX_DECISIONS: usize = 10_000;

/// Whether the change was written or only recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionMode {
    Applied,
    Recommended,
    RolledBack,
    /// An objective breached for several windows in a row: the tuning
    /// round ran at once (the assurance loop).
    Replanned,
}

impl DecisionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionMode::Applied => "applied",
            DecisionMode::Recommended => "recommended",
            DecisionMode::RolledBack => "rolled_back",
            DecisionMode::Replanned => "replanned",
        }
    }
}

/// What followed a decision, one evaluation period later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub at_s: u64,
    /// Worst attainment of the chains through the host then.
    pub attainment_after: f64,
    /// `improved`, `unchanged` (within 0.1 point) or `worse`.
    pub effect: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: u64,
    pub at_s: u64,
    pub mode: DecisionMode,
    /// `Kind namespace/name`.
    pub object: String,
    pub host: String,
    /// Field path in the object (`.spec.…`).
    pub field: String,
    pub old: Value,
    pub new: Value,
    pub reason: String,
    /// What the change was expected to do (the configuration model's
    /// prediction when it chose; the rules' stated intent otherwise).
    pub predicted: String,
    /// Worst attainment of the chains through the host when decided.
    pub attainment_before: Option<f64>,
    pub measured: Option<Measured>,
}

/// One field change to log (the caller reads them off the guard's report).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub object: String,
    pub host: String,
    pub field: String,
    pub old: Value,
    pub new: Value,
    pub reason: String,
    pub predicted: String,
}

/// Which decisions `/v1/decisions` returns (all filters optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Substring of `Kind namespace/name` (e.g. `bookinfo/reviews`).
    pub object: Option<String>,
    /// Substring of the field path.
    pub field: Option<String>,
    /// `applied`, `recommended`, `rolled_back` or `replanned`.
    pub mode: Option<String>,
    /// Decided at or after this agent-clock second.
    pub since: Option<u64>,
    /// Newest first: skip this many, return at most `limit` (default 100, at most 1000).
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

#[derive(Debug, Default)]
pub struct DecisionLog {
    items: VecDeque<Decision>,
    next_id: u64,
    /// The last value logged per (object, field, mode), so a recommendation
    /// repeated every round is logged once.
    last: BTreeMap<(String, String, DecisionMode), Value>,
}

impl DecisionLog {
    /// The log as the store held it (oldest first).
    pub fn restore(decisions: impl IntoIterator<Item = Decision>) -> Self {
        let mut log = DecisionLog::default();
        for d in decisions {
            log.next_id = log.next_id.max(d.id + 1);
            log.last
                .insert((d.object.clone(), d.field.clone(), d.mode), d.new.clone());
            log.items.push_back(d);
        }
        while log.items.len() > MAX_DECISIONS {
            log.items.pop_front();
        }
        log
    }

    /// Logs the changes not logged already with the same new value; returns
    /// the new decisions.
    pub fn record(
        &mut self,
        changes: Vec<Change>,
        mode: DecisionMode,
        now_s: u64,
        attainment: &BTreeMap<String, f64>,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for c in changes {
            let key = (c.object.clone(), c.field.clone(), mode);
            if self.last.get(&key) == Some(&c.new) {
                continue;
            }
            self.last.insert(key, c.new.clone());
            let d = Decision {
                id: self.next_id,
                at_s: now_s,
                mode,
                attainment_before: attainment.get(&c.host).copied(),
                object: c.object,
                host: c.host,
                field: c.field,
                old: c.old,
                new: c.new,
                reason: c.reason,
                predicted: c.predicted,
                measured: None,
            };
            self.next_id += 1;
            self.items.push_back(d.clone());
            out.push(d);
        }
        while self.items.len() > MAX_DECISIONS {
            self.items.pop_front();
        }
        out
    }

    /// Measures the decisions at least `period_s` old that have not been:
    /// the host's attainment now against that when decided. Returns them.
    pub fn measure(
        &mut self,
        now_s: u64,
        period_s: u64,
        attainment: &BTreeMap<String, f64>,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for d in self.items.iter_mut() {
            if d.measured.is_some() || now_s < d.at_s + period_s {
                continue;
            }
            let (Some(before), Some(after)) = (d.attainment_before, attainment.get(&d.host)) else {
                continue;
            };
            let effect = if after - before > 0.001 {
                "improved"
            } else if before - after > 0.001 {
                "worse"
            } else {
                "unchanged"
            };
            d.measured = Some(Measured {
                at_s: now_s,
                attainment_after: *after,
                effect: effect.into(),
            });
            out.push(d.clone());
        }
        out
    }

    /// The lowest id still kept (older ones may go from the store).
    pub fn oldest_id(&self) -> u64 {
        self.items.front().map_or(self.next_id, |d| d.id)
    }

    /// `(matching, page)`: how many decisions match, and the page asked
    /// for, newest first.
    pub fn query(&self, q: &DecisionQuery) -> Result<(usize, Vec<Decision>), String> {
        let mode = match q.mode.as_deref() {
            None => None,
            Some("applied") => Some(DecisionMode::Applied),
            Some("recommended") => Some(DecisionMode::Recommended),
            Some("rolled_back") => Some(DecisionMode::RolledBack),
            Some("replanned") => Some(DecisionMode::Replanned),
            Some(other) => {
                return Err(format!(
                    "mode: {other:?} is not one of applied, recommended, rolled_back, replanned"
                ))
            }
        };
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > 1000 {
            return Err(format!("limit: {limit} is not between 1 and 1000"));
        }
        let matching: Vec<&Decision> = self
            .items
            .iter()
            .rev()
            .filter(|d| {
                q.object
                    .as_ref()
                    .is_none_or(|o| d.object.contains(o.as_str()))
            })
            .filter(|d| {
                q.field
                    .as_ref()
                    .is_none_or(|f| d.field.contains(f.as_str()))
            })
            .filter(|d| mode.is_none_or(|m| d.mode == m))
            .filter(|d| q.since.is_none_or(|s| d.at_s >= s))
            .collect();
        let page = matching
            .iter()
            .skip(q.offset.unwrap_or(0))
            .take(limit)
            .map(|d| (*d).clone())
            .collect();
        Ok((matching.len(), page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(field: &str, new: i64) -> Change {
        Change {
            object: "DestinationRule bookinfo/reviews".into(),
            host: "reviews.bookinfo.svc.cluster.local".into(),
            field: field.into(),
            old: json!(null),
            new: json!(new),
            reason: "because".into(),
            predicted: "p99 within 60 ms".into(),
        }
    }

    fn att(v: f64) -> BTreeMap<String, f64> {
        [("reviews.bookinfo.svc.cluster.local".to_string(), v)].into()
    }

    #[test]
    fn a_repeated_recommendation_is_logged_once_and_a_new_value_again() {
        let mut log = DecisionLog::default();
        let f = ".spec.trafficPolicy.connectionPool.http.http2MaxRequests";
        assert_eq!(
            log.record(
                vec![change(f, 32)],
                DecisionMode::Recommended,
                10,
                &att(0.9)
            )
            .len(),
            1
        );
        assert!(log
            .record(
                vec![change(f, 32)],
                DecisionMode::Recommended,
                20,
                &att(0.9)
            )
            .is_empty());
        let again = log.record(
            vec![change(f, 64)],
            DecisionMode::Recommended,
            30,
            &att(0.9),
        );
        assert_eq!(again[0].id, 1);
        assert_eq!(again[0].attainment_before, Some(0.9));
    }

    #[test]
    fn the_effect_is_measured_once_after_the_period() {
        let mut log = DecisionLog::default();
        log.record(
            vec![change(".spec.a", 1), change(".spec.b", 2)],
            DecisionMode::Applied,
            100,
            &att(0.90),
        );
        assert!(log.measure(150, 60, &att(0.99)).is_empty(), "too early");
        let m = log.measure(160, 60, &att(0.99));
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0].measured.as_ref().map(|x| x.effect.as_str()),
            Some("improved")
        );
        assert!(log.measure(400, 60, &att(0.5)).is_empty(), "measured once");
    }

    #[test]
    fn queries_filter_and_page_newest_first_and_bad_ones_name_the_parameter() {
        let mut log = DecisionLog::default();
        for i in 0..5 {
            log.record(
                vec![change(".spec.x", i)],
                DecisionMode::Applied,
                i as u64,
                &att(1.0),
            );
        }
        log.record(
            vec![change(".spec.y", 9)],
            DecisionMode::Recommended,
            9,
            &att(1.0),
        );
        let (n, page) = log
            .query(&DecisionQuery {
                field: Some("x".into()),
                offset: Some(1),
                limit: Some(2),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            page.iter().map(|d| d.new.clone()).collect::<Vec<_>>(),
            [json!(3), json!(2)]
        );
        let (n, _) = log
            .query(&DecisionQuery {
                mode: Some("recommended".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(n, 1);
        let e = log
            .query(&DecisionQuery {
                mode: Some("done".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.starts_with("mode:"), "{e}");
        // Restored from what the store held, ids go on.
        let back = DecisionLog::restore(log.items.iter().cloned());
        assert_eq!(back.next_id, 6);
        assert_eq!(back.query(&DecisionQuery::default()).unwrap().0, 6);
    }
}
