//! Keystone's agent: config, data-plane programming, admin API and metrics.
#![deny(unsafe_code)]

pub mod config;
pub mod dataplane;
pub mod yaml_lines;
pub mod agent;
pub mod api;
pub mod metrics;
#[cfg(test)]
mod api_tests;
