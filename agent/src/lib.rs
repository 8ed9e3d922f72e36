//! The meshtune node agent as a library: the binary in `main.rs` only
//! parses arguments; tests and the local lab run the same code in-process.
//!
//! Layers, each importing only those before it (a test over the `use`
//! lines keeps it so, `tests/layout.rs`):
//!
//! 1. `config`, `clock`, `http`, `forecast`, `learn` — what the user
//!    declared; the agent's clock (wall or trace time); one HTTP GET with a
//!    deadline; the forecasters; learned models.
//! 2. `data` — what was measured: aggregates, the chain state, the store,
//!    windows as peers exchange them.
//! 3. `plan` — pure planners: inputs in, decisions out (policy for the
//!    filters, traffic rules, observations, attainment).
//! 4. `write` — the one seam desired objects leave through: the guard
//!    (recommend mode, change budget, hysteresis, rollback, ownership) and
//!    one file per sink (Kubernetes server-side apply, a directory).
//! 5. `app` — the running agent: its state, API, metrics, tuning loop.
//! 6. `k8s` — cluster I/O and its loops (ChainSLO watch, Lease, peers).

pub mod clock;
pub mod config;
pub mod forecast;
pub mod http;
pub mod learn;

pub mod data;

pub mod plan;

pub mod write;

pub mod app;

pub mod k8s;

pub use app::agent::Agent;
pub use config::AgentConfig;

/// Seconds since the Unix epoch on the agent's clock ([`clock`]: wall
/// time, or trace time in a lab replay), read once per request or tick and
/// passed on.
pub fn now_secs() -> u64 {
    clock::now_ms() / 1000
}

/// Milliseconds since the Unix epoch on the agent's clock.
pub fn now_ms() -> u64 {
    clock::now_ms()
}
