//! How long a decision with the configuration model takes: 100 services,
//! each scoring 200 candidate configurations (and what is in force) at 10
//! horizon steps with the shipped model (`models/config-model.json`), on
//! one core. `cargo run --release -p meshtune-agent --example lookahead_bench`
//! The last line: `lookahead services=100 candidates=200 steps=10 rows=… ms=…`.

use meshtune_agent::learn::config_model::{ConfigModel, FEATURES};
use meshtune_agent::plan::lookahead::{candidates, choose, Knobs, Observed, Situation};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/config-model.json");
    let model = ConfigModel::load(&path)?;
    let cands = candidates(200, 1);
    let situations: Vec<Situation> = (0..100)
        .map(|i| {
            let rps = 20.0 + i as f64;
            let mut values = vec![0.0; FEATURES.len() - 7];
            values[0] = rps;
            values[1] = 0.01 * (i % 5) as f64;
            values[2] = 9.0;
            values[3] = 14.0 + (i % 7) as f64;
            values[4] = 16.0 + (i % 11) as f64;
            values[5] = rps * 0.009;
            values[6] = 0.02 * (i % 4) as f64;
            values[7] = 3.0;
            Situation {
                observed: Observed { values },
                forecast_rps: (0..10).map(|h| rps * (1.0 + 0.02 * h as f64)).collect(),
                p99_budget_ms: 40.0,
                error_budget: 0.01,
                current: Knobs {
                    http2_max_requests: 1024,
                    http1_max_pending: 1024,
                    max_retries: 3,
                    consecutive_5xx: 0,
                    timeout_ms: 0,
                    retry_attempts: 2,
                    per_try_timeout_ms: 100,
                },
            }
        })
        .collect();
    let mut best = f64::INFINITY;
    let mut changes = 0;
    for _ in 0..3 {
        let t0 = Instant::now();
        changes = 0;
        for s in &situations {
            if choose(&model, s, &cands, 1.0, 0.01)?.change {
                changes += 1;
            }
        }
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "lookahead services=100 candidates=200 steps=10 rows={} trees_per_outcome={} ms={best:.1} changes={changes}",
        100 * 201 * 10,
        model.params.trees
    );
    Ok(())
}
