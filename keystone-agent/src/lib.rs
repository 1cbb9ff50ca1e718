//! Keystone's agent: config, data-plane programming, admin API and metrics.
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
#[cfg(test)]
mod api_tests;
pub mod config;
pub mod dataplane;
pub mod deploy;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod persist;
pub mod privileges;
pub mod recover;
pub mod store;
pub mod webhook;
pub mod yaml_lines;
