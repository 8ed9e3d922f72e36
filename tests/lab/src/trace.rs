//! Real traffic traces (`timestamp,requests` CSV) turned into lab load.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The shared traces directory beside the repository.
pub fn traces_dir() -> PathBuf {
    crate::envoy::repo_root().join("../shared/data/traces")
}

/// Reads the `requests` column of a `timestamp,requests` CSV.
pub fn read_counts(path: &Path) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim() == "timestamp,requests" => {}
        other => bail!(
            "{}: expected the header `timestamp,requests`, found {:?}",
            path.display(),
            other
        ),
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v = l.rsplit(',').next().unwrap_or("");
            v.trim().parse::<f64>().with_context(|| {
                format!(
                    "{}: line {}: bad request count {v:?}",
                    path.display(),
                    i + 2
                )
            })
        })
        .collect()
}

/// `len` points from `offset`, scaled so the busiest equals `peak_rps`.
pub fn scaled(counts: &[f64], offset: usize, len: usize, peak_rps: f64) -> Vec<f64> {
    let slice: Vec<f64> = counts.iter().skip(offset).take(len).copied().collect();
    let max = slice.iter().copied().fold(0.0f64, f64::max);
    if max <= 0.0 {
        return vec![0.0; slice.len()];
    }
    slice.iter().map(|c| c / max * peak_rps).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_shape() {
        assert_eq!(scaled(&[1.0, 2.0, 4.0, 8.0], 1, 2, 10.0), vec![5.0, 10.0]);
        assert_eq!(scaled(&[0.0, 0.0], 0, 2, 10.0), vec![0.0, 0.0]);
    }
}
