//! One agent's window as the leader pulls it from its peers. Sketches merge
//! exactly, so the merged window is what one agent seeing every node would
//! have.

use crate::data::aggregate::ChainAgg;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One agent's window: the chains' aggregates and the seconds they cover.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    pub covered_seconds: f64,
    pub chains: BTreeMap<String, ChainAgg>,
}

/// Adds `other`'s chains to `into`.
pub fn merge(into: &mut BTreeMap<String, ChainAgg>, other: &BTreeMap<String, ChainAgg>) {
    for (chain, agg) in other {
        into.entry(chain.clone()).or_default().merge(agg);
    }
}
