//! The logic of the meshtune proxy-wasm filter and the report format shared
//! with the node agent. Nothing here talks to a host: the cdylib in
//! `wasm-filter/` wires these pieces to proxy-wasm calls, so every rule can be
//! tested natively.

pub mod abi;
pub mod aggregator;
#[cfg(any(test, feature = "builders"))]
pub mod builders;
pub mod config;
pub mod control;
pub mod naming;
pub mod rules;
pub mod sketch;
pub mod wire;

pub use aggregator::{Aggregator, KeyId, LocalReply, PendingCounts, RecordOutcome};
pub use config::{ConfigError, FilterConfig};
pub use sketch::Sketch;
pub use wire::{Direction, HopRecord, Report, SCHEMA_VERSION};
