//! The request and response shapes of the admin API, as the agent reads and writes
//! them (a later phase replaces these with the shared API crate's types).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    config::{ForwardingMode, Protocol, Strategy},
    dataplane::problems::DataplaneProblem,
    health::HealthState,
    outcome::TrafficSource,
    persist::PersistStatus,
};

#[derive(Clone, Debug, Serialize)]
pub struct TenantView {
    pub name: String,
    pub vip: String,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub strategy: Strategy,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    /// Where the effective weights come from (the config, a deployment, the API).
    pub traffic_source: TrafficSource,
    pub backends: Vec<TenantBackendView>,
    pub deployment_id: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantBackendView {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    pub configured_weight: u32,
    pub effective_weight: u32,
    /// Share of new connections the weights give this backend.
    pub traffic_percent: f64,
    pub health: HealthState,
    /// Why its last check could not run on this host (the health stays as it was).
    pub health_local_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// What makes traffic fail now although everything looks up (see
    /// `dataplane::problems`); empty when all is well.
    pub problems: Vec<DataplaneProblem>,
    pub config_path: String,
    pub config_generation: u64,
    pub config_loaded_at: String,
    /// Seconds covered by `recent_new_connections` / `traffic_share`.
    pub traffic_window_seconds: f64,
    pub tenants: Vec<TenantStatus>,
    /// Whether the agent's files are saved (see `/health`).
    pub persistence: PersistStatus,
    pub xdp_actions: BTreeMap<String, u64>,
    pub packet_reasons: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub name: String,
    pub vip: String,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub strategy: Strategy,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    /// Where `effective_weight` comes from: the config's `weight`, a deployment, the API.
    pub traffic_source: TrafficSource,
    pub deployment_id: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the data plane now (deployments and manual weights applied).
    pub effective_weight: u32,
    /// This backend's share of the tenant's effective weight.
    pub weight_share: f64,
    pub health: HealthState,
    /// Why its last check could not run on this host (the health stays as it was).
    pub health_local_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    /// New connections within the traffic window.
    pub recent_new_connections: u64,
    /// Share of the tenant's new connections within the traffic window.
    pub traffic_share: f64,
    /// Passive L4 signals (TCP): SYNs sent, SYN-ACKs and RSTs answered (`nat`),
    /// handshakes completed (`L4Counters::established`).
    pub tcp_syn: u64,
    pub tcp_syn_ack: u64,
    pub tcp_rst: u64,
    pub tcp_established: u64,
}
