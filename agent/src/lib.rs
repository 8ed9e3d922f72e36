//! The meshtune node agent as a library: the binary in `main.rs` only
//! parses arguments; tests and the local lab run the same code in-process.

pub mod aggregate;
pub mod api;
pub mod config;
pub mod forecast;
pub mod k8s;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod state;
pub mod store;

pub use config::AgentConfig;
pub use server::Agent;

/// Seconds since the Unix epoch, read once per request or tick and passed on.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
