//! The running agent: its shared state and background loops, the HTTP API,
//! its metrics, the built-in page, and the tuning loop that sends desired objects through the
//! write seam.

pub mod agent;
pub mod api;
pub mod forecasting;
pub mod learning;
pub mod metrics;
pub mod recommend;
pub mod serve;
pub mod tuner;
pub mod ui;

pub use serve::serve;

/// Takes a lock, poisoned or not: every value behind the agent's locks is
/// whole at every await and unwind point (assigned in one statement).
pub fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
