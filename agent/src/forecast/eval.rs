//! `forecast-eval`: every method and the selector, forecasting a trace
//! minute by minute, scored on its chronological evaluation part.

use super::{clean, Selector};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    #[error("{file}: line {line}: {message}")]
    Bad {
        file: String,
        line: usize,
        message: String,
    },
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` into Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Reads a `timestamp,requests` CSV into requests per second per minute,
/// with the minute index of the first value. Finer traces are summed into
/// minutes; missing minutes count as gaps (NaN, cleaned later).
pub fn read_trace(path: &std::path::Path) -> Result<(u64, Vec<f64>), TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TraceError::Read(file.clone(), e))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "timestamp,requests" => {}
        _ => {
            return Err(TraceError::Bad {
                file,
                line: 1,
                message: "expected the header `timestamp,requests`".into(),
            })
        }
    }
    let mut per_minute: BTreeMap<i64, f64> = BTreeMap::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TraceError::Bad {
            file: file.clone(),
            line: i + 1,
            message,
        };
        let (ts, n) = l
            .split_once(',')
            .ok_or_else(|| bad("expected `timestamp,requests`".into()))?;
        let t = parse_timestamp(ts)
            .ok_or_else(|| bad(format!("bad timestamp {ts:?} (want 2024-01-31T12:00:00Z)")))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad request count {n:?}")))?;
        *per_minute.entry(t.div_euclid(60)).or_default() += n;
    }
    let (Some(first), Some(last)) = (
        per_minute.keys().next().copied(),
        per_minute.keys().last().copied(),
    ) else {
        return Err(TraceError::Bad {
            file,
            line: 2,
            message: "no data".into(),
        });
    };
    let values = (first..=last)
        .map(|m| per_minute.get(&m).map_or(f64::NAN, |c| c / 60.0))
        .collect();
    Ok((first.max(0) as u64, values))
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    pub mae: f64,
    pub smape: f64,
    pub n: usize,
}

#[derive(Debug, Default)]
struct Acc {
    abs: f64,
    smape: f64,
    n: usize,
}

impl Acc {
    fn add(&mut self, f: f64, a: f64) {
        self.abs += (f - a).abs();
        let d = f.abs() + a.abs();
        self.smape += if d > 0.0 {
            2.0 * (f - a).abs() / d
        } else {
            0.0
        };
        self.n += 1;
    }
    fn score(&self) -> Score {
        let n = self.n.max(1) as f64;
        Score {
            mae: self.abs / n,
            smape: 100.0 * self.smape / n,
            n: self.n,
        }
    }
}

/// Scores per method name (and `selector`) and horizon on the part of the
/// series after `train_fraction`; models learn from everything before it.
pub fn evaluate(
    start_minute: u64,
    raw: &[f64],
    horizons: &[usize],
    train_fraction: f64,
    model: Option<std::sync::Arc<super::gru::GruModel>>,
) -> BTreeMap<String, BTreeMap<usize, Score>> {
    let values = clean(raw);
    let split = ((values.len() as f64) * train_fraction) as usize;
    let mut sel = Selector::with_model(horizons, 60, model);
    // (target index, method, horizon) -> forecast
    let mut pending: BTreeMap<usize, Vec<(String, usize, f64)>> = BTreeMap::new();
    let mut acc: BTreeMap<(String, usize), Acc> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        if let Some(fs) = pending.remove(&i) {
            for (name, h, f) in fs {
                acc.entry((name, h)).or_default().add(f, *v);
            }
        }
        sel.update(start_minute + i as u64, *v);
        for (k, h) in horizons.iter().enumerate() {
            let target = i + h;
            if target < split || target >= values.len() {
                continue;
            }
            let slot = pending.entry(target).or_default();
            for (name, f) in sel.method_forecasts(*h) {
                if let Some(f) = f {
                    slot.push((name.to_string(), *h, f));
                }
            }
            if let Some((f, _, _)) = sel.forecast(k) {
                slot.push(("selector".to_string(), *h, f));
            }
        }
    }
    let mut out: BTreeMap<String, BTreeMap<usize, Score>> = BTreeMap::new();
    for ((name, h), a) in acc {
        out.entry(name).or_default().insert(h, a.score());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1998-04-30T21:30:00Z"), Some(893_971_800));
        assert_eq!(parse_timestamp("2023-11-16T18:15:46Z"), Some(1_700_158_546));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn the_selector_is_scored_with_the_methods() {
        let series: Vec<f64> = (0..4000)
            .map(|m| 10.0 + (m % 1440) as f64 / 100.0)
            .collect();
        let r = evaluate(0, &series, &[1, 10], 0.7, None);
        for name in [
            "selector",
            "naive",
            "seasonal_naive",
            "holt_winters",
            "harmonic",
        ] {
            let s = r
                .get(name)
                .and_then(|h| h.get(&10))
                .copied()
                .unwrap_or_default();
            assert!(s.n > 1000, "{name}: {s:?}");
            assert!(s.mae.is_finite());
        }
    }
}
