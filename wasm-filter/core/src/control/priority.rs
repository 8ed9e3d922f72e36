//! Chain priority classes, shared by the policy and the concurrency limit.

use serde::{Deserialize, Serialize};

/// Priority class of a chain: when an upstream is at its concurrency limit,
/// `low` is shed first and `high` last.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}
