//! Keystone's network-namespace lab: the topology (client, gateway, backends),
//! helpers to run and supervise processes inside it, agent configs, and the
//! parsing side of the `ks-client` traffic tool.
//!
//! The topology lives here and only here: `cargo xtask lab|demo` and the
//! integration tests in `tests/tests/` both build it with [`LabBuilder`].
//! Everything a [`Lab`] creates (namespaces, veths, a bpffs mount, processes)
//! is removed when it is dropped, also while a test panics, and is recorded
//! in `/run/keystone-lab/<name>/state.json` so `cargo xtask lab down` can
//! remove a lab whose owner is gone.

pub mod agent;
pub mod bins;
pub mod chromium;
pub mod cmd;
pub mod config;
pub mod cpus;
pub mod deploy;
pub mod error;
pub mod etcd;
pub mod fleet;
pub mod fleet_etcd;
pub mod forge;
pub mod helpers;
#[cfg(feature = "dataplane")]
pub mod kernel;
pub mod lab;
pub mod mounts;
pub mod packet_bench;
pub mod plans;
pub mod tools;
pub mod traffic;
pub mod wait;
#[cfg(feature = "dataplane")]
pub mod xdp;

pub use agent::{ADMIN_LISTEN, ADMIN_TOKEN, Auth, ok};
pub use bins::Bins;
pub use config::{
    AgentConfig, CanaryConfig, HealthCheck, NotificationTarget, Protocol, ROLLOUT, Service,
    SwitchConfig, Tenant, WebhookConfig,
};
pub use deploy::Deployment;
pub use error::{LabError, Result};
pub use fleet::{
    Announce, CLIENT_NET4, CLIENT_NET6, Churn, Count, Fleet, FleetBuilder, HeldFlow, Hold, Load,
    LoadReport, RETURN_TABLE, gateway_back4, gateway_back6, gateway4, gateway6,
};
pub use lab::{
    BRIDGE, Backend, Lab, LabBuilder, LabState, Mode, Owner, RUN_ENV, STATE_ROOT, VIP4, VIP6,
};
pub use traffic::{Batch, ClientLoop, HoldEvent, Summary};
pub use wait::{Probe, wait_for};
