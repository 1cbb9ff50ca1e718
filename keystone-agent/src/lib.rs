//! Keystone's agent: config, data-plane programming, admin API and metrics.
#![deny(unsafe_code)]

pub mod admin_server;
pub mod admin_token;
pub mod agent;
pub mod analysis;
pub mod announce;
pub mod api;
#[cfg(test)]
mod api_tests;
pub mod change_timing;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod deploy;
pub mod deploy_metrics;
pub mod errors;
pub mod fleet;
pub mod health;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod open_files;
pub mod orchestration;
pub mod outcome;
pub mod persist;
pub mod privileges;
pub mod reconcile;
pub mod recover;
pub mod reload;
pub mod requests;
pub mod rollout;
pub mod sd_notify;
pub mod secrets;
pub mod signing;
pub mod status;
pub mod status_page;
pub mod store;
pub mod strategy;
pub mod tasks;
pub mod token_role;
pub mod validation;
pub mod webhook;
pub mod wire;
pub mod yaml_lines;

/// The commit this agent was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("KEYSTONE_GIT_COMMIT");
/// What `--version` prints after the name: `0.1.0 (commit 1c1d1a1b2c3d)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYSTONE_GIT_COMMIT"),
    ")"
);
