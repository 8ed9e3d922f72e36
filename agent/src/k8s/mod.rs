//! Kubernetes and Istio I/O and the loops that run on a cluster: the
//! `ChainSLO` custom resource and its watch, leader election on a Lease,
//! the other agents' windows, which Services opted out, and the loop that
//! runs the tuner as the Lease holder.

pub mod chainslo;
pub mod chainslo_watch;
pub mod controller;
pub mod intent;
pub mod lease;
pub mod optout;
pub mod peers;
