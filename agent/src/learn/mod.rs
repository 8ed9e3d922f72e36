//! Learned models of the mesh (beside `forecast`): the configuration
//! model, trained from the lab's sweep of real Envoy.

pub mod config_model;
pub mod online;
