//! meshtune-lab: local meshes of real Envoy sidecars for the quick start,
//! the end-to-end tests and the benchmarks.

pub mod bench;
pub mod callgrind;
pub mod cgroup;
pub mod chromium;
pub mod control_plane;
pub mod cpu_model;
pub mod envoy;
pub mod eval;
pub mod faults;
pub mod http;
pub mod istio;
pub mod lifecycle;
pub mod load;
pub mod mesh;
pub mod overload;
pub mod proc;
pub mod prometheus;
pub mod replicas;
pub mod services;
pub mod sweep;
pub mod trace;
