//! What was measured: mergeable aggregates, the per-chain state the reports
//! feed, the history store, the decision log, and windows as agents exchange them.

pub mod aggregate;
pub mod attainment;
pub mod decisions;
pub mod state;
pub mod store;
pub mod usage;
pub mod window;
