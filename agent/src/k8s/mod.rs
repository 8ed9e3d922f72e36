//! Kubernetes and Istio integration: the `ChainSLO` custom resource, the
//! DestinationRules meshtune wants (computed purely), the writer that
//! applies them with server-side apply, and leader election on a Lease.

pub mod chainslo;
pub mod chainslo_watch;
pub mod controller;
pub mod destinationrule;
pub mod lease;
pub mod peers;
pub mod writer;
