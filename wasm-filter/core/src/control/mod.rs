//! Data-path control: deadline budgets, retry budgets and adaptive
//! concurrency with priorities. Pure state machines with time passed in, so
//! every loop runs under a virtual clock in tests.

pub mod concurrency;
pub mod deadline;
pub mod no_retry;
pub mod policy;
pub mod priority;
pub mod retry;
pub mod waiting;

pub use concurrency::{AdaptiveLimit, Admission, ConcurrencyConfig};
pub use deadline::{DeadlineDecision, DEADLINE_HEADER};
pub use policy::{ChainPolicy, Policy};
pub use priority::Priority;
pub use retry::{RetryBudget, RetryBudgetConfig};
pub use waiting::{Left, WaitQueue};
