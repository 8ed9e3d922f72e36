//! The assurance loop: a chain whose objective was breached for `k`
//! consecutive windows gets an immediate re-plan (the tuning round runs
//! now instead of at its next interval) and an entry in the decision log
//! saying so. Windows do not overlap: a new one is judged once a whole
//! window has passed since the last. Pure: time and verdicts passed in.

use std::collections::BTreeMap;

/// A chain breached for `windows` consecutive windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub chain: String,
    pub windows: u32,
    /// The attainment of each of those windows, oldest first.
    pub attainment: Vec<f64>,
    /// The objective's percentile (the share of requests that must be good).
    pub percentile: f64,
}

#[derive(Debug, Clone)]
pub struct Assurance {
    k: u32,
    window_s: u64,
    last_judged_s: Option<u64>,
    /// Attainment of the consecutive breached windows so far, per chain.
    streak: BTreeMap<String, Vec<f64>>,
}

/// One chain's last window, as judged by [`crate::data::attainment::meets`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub attainment: f64,
    pub percentile: f64,
}

impl Assurance {
    /// `k` breached windows trigger a re-plan (0: never); windows of `window_s`.
    pub fn new(k: u32, window_s: u64) -> Self {
        Assurance {
            k,
            window_s: window_s.max(1),
            last_judged_s: None,
            streak: BTreeMap::new(),
        }
    }

    /// Judges the window ending at `now_s` if a whole window has passed
    /// since the last one judged; `verdicts` holds every chain with traffic
    /// in it (a chain without traffic breaks its streak). Returns the
    /// chains that reached `k` breached windows; their streak starts over,
    /// so a lasting breach re-plans once every `k` windows.
    pub fn judge(&mut self, now_s: u64, verdicts: &BTreeMap<String, Verdict>) -> Vec<Breach> {
        if self.k == 0 {
            return Vec::new();
        }
        if let Some(last) = self.last_judged_s {
            if now_s < last + self.window_s {
                return Vec::new();
            }
        }
        self.last_judged_s = Some(now_s);
        self.streak.retain(|chain, _| verdicts.contains_key(chain));
        let mut out = Vec::new();
        for (chain, v) in verdicts {
            if crate::data::attainment::meets(v.attainment, v.percentile) {
                self.streak.remove(chain);
                continue;
            }
            let streak = self.streak.entry(chain.clone()).or_default();
            streak.push(v.attainment);
            if streak.len() as u32 >= self.k {
                out.push(Breach {
                    chain: chain.clone(),
                    windows: self.k,
                    attainment: std::mem::take(streak),
                    percentile: v.percentile,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(of: &[(&str, f64)]) -> BTreeMap<String, Verdict> {
        of.iter()
            .map(|(c, a)| {
                (
                    c.to_string(),
                    Verdict {
                        attainment: *a,
                        percentile: 99.0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn three_breached_windows_in_a_row_trigger_one_replan_and_the_count_starts_over() {
        let mut a = Assurance::new(3, 60);
        let bad = verdicts(&[("checkout", 0.95), ("ratings", 0.999)]);
        assert!(a.judge(60, &bad).is_empty());
        assert!(a.judge(120, &bad).is_empty());
        let b = a.judge(180, &bad);
        assert_eq!(
            b,
            vec![Breach {
                chain: "checkout".into(),
                windows: 3,
                attainment: vec![0.95; 3],
                percentile: 99.0
            }]
        );
        // The breach goes on: the next re-plan after three more windows.
        assert!(a.judge(240, &bad).is_empty());
        assert!(a.judge(300, &bad).is_empty());
        assert_eq!(a.judge(360, &bad).len(), 1);
    }

    #[test]
    fn a_met_window_or_a_window_without_traffic_breaks_the_streak() {
        let mut a = Assurance::new(2, 60);
        let bad = verdicts(&[("checkout", 0.9)]);
        assert!(a.judge(60, &bad).is_empty());
        assert!(a.judge(120, &verdicts(&[("checkout", 0.995)])).is_empty());
        assert!(a.judge(180, &bad).is_empty());
        assert!(a.judge(240, &verdicts(&[])).is_empty(), "no traffic");
        assert!(a.judge(300, &bad).is_empty());
        assert_eq!(a.judge(360, &bad).len(), 1);
    }

    #[test]
    fn windows_are_judged_once_a_whole_window_has_passed_and_k_zero_is_off() {
        let mut a = Assurance::new(2, 300);
        let bad = verdicts(&[("checkout", 0.5)]);
        assert!(a.judge(300, &bad).is_empty());
        // Minutes inside the same five-minute window are not new windows.
        for t in [360, 420, 480, 540] {
            assert!(a.judge(t, &bad).is_empty(), "{t}");
        }
        assert_eq!(a.judge(600, &bad).len(), 1);
        let mut off = Assurance::new(0, 60);
        for t in 1..10 {
            assert!(off.judge(t * 60, &bad).is_empty());
        }
    }
}
