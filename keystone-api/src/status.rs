//! `GET /status`, `GET /tenants`, `GET /health`, reloads and error answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::deployment::{DeployState, Strategy};

wire_enum! {
    pub enum Protocol {
        Tcp = "tcp",
        Udp = "udp",
    }
}

wire_enum! {
    /// How packets reach the backends.
    pub enum ForwardingMode {
        Nat = "nat",
        Dsr = "dsr",
    }
}

wire_enum! {
    /// A backend's health; `unknown` (no check configured, or none finished yet) is
    /// treated as up.
    pub enum HealthState {
        Up = "up",
        Down = "down",
    }
}

wire_enum! {
    /// `GET /health`'s `status`.
    pub enum HealthStatus {
        Ok = "ok",
        /// A file the agent keeps cannot be written, or forwarding would stop on exit.
        Degraded = "degraded",
    }
}

/// Where a tenant's live weights come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrafficSource {
    /// The config's weights and `active_environment`.
    #[default]
    Config,
    /// The traffic split of a deployment (running or finished).
    Deployment {
        deployment_id: String,
        state: DeployState,
    },
    /// Weights set with `POST /tenants/{name}/weights`, or, with a `reason`, by the
    /// agent itself (recovered from the pinned data plane).
    Manual {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A source this version does not know.
    #[serde(other)]
    Unknown,
}

/// What makes traffic fail now although everything looks up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataplaneProblem {
    /// Stable name, for scripts: `partial_checksums`.
    pub kind: String,
    /// What is wrong and what to do, for people.
    pub message: String,
}

/// Whether the agent's files are saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistStatus {
    /// False while the latest write of some file failed.
    pub saved: bool,
    /// Failed writes since the agent started.
    pub write_failures: u64,
    /// By file (state, config, health, webhook_replay): why its latest write failed.
    pub unsaved: BTreeMap<String, String>,
    /// Set when the state file could not be read at start.
    pub recovered: Option<String>,
}

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub problems: Vec<DataplaneProblem>,
    pub config_path: String,
    pub config_generation: u64,
    pub config_loaded_at: String,
    /// Seconds covered by `recent_new_connections` / `recent_traffic_percent`.
    pub traffic_window_seconds: f64,
    pub tenants: Vec<TenantStatus>,
    pub persistence: PersistStatus,
    pub xdp_actions: BTreeMap<String, u64>,
    pub packet_reasons: BTreeMap<String, u64>,
    /// Present when the agent is a member of a fleet (`fleet:` in its config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::FleetStatus>,
    /// BGP announcements (absent without a `bgp:` block).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::AnnounceStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantStatus {
    #[serde(flatten)]
    pub about: TenantAbout,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    pub backends: Vec<BackendStatus>,
    /// The hash of the tenant's live Maglev table (16 hex digits): equal on every
    /// gateway that sends its new flows to the same backends. Absent while the agent
    /// has not written the table (not programmed yet, or found pinned at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_hash: Option<String>,
}

/// A backend in `GET /status`: the same view as in `GET /tenants`, and its counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStatus {
    #[serde(flatten)]
    pub backend: TenantBackend,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    /// New connections within the traffic window.
    pub recent_new_connections: u64,
    /// Share (0–100) of the tenant's new connections within the traffic window.
    pub recent_traffic_percent: f64,
    pub tcp_syn: u64,
    pub tcp_syn_ack: u64,
    pub tcp_rst: u64,
    pub tcp_established: u64,
}

/// A tenant as `GET /tenants` and `POST /tenants/{name}/weights` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tenant {
    #[serde(flatten)]
    pub about: TenantAbout,
    pub backends: Vec<TenantBackend>,
}

/// A tenant's VIP, strategy and where its weights come from: what `status` and
/// `tenants` say alike.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantAbout {
    pub name: String,
    pub vip: String,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub strategy: Strategy,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    pub traffic_source: TrafficSource,
    /// The tenant's running deployment, if any.
    pub deployment_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantBackend {
    #[serde(flatten)]
    pub identity: BackendIdentity,
    /// The config's weight.
    pub configured_weight: u32,
    /// Weight in the data plane now (deployments and manual weights applied).
    pub effective_weight: u32,
    /// Share (0–100) of new connections the effective weights give this backend.
    pub traffic_percent: f64,
}

/// Which backend, and its health: what `status` and `tenants` say alike.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendIdentity {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    pub health: HealthState,
    /// Why its last check could not run on this host (the health stays as it was).
    pub health_local_error: Option<String>,
}

/// `GET /tenants`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// `GET /health`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub status: HealthStatus,
    pub config_generation: u64,
    /// Only when degraded: what would fail on the agent's exit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub persistence: PersistStatus,
}

/// `POST /admin/reload`: the new generation, and where it contradicts a live outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reloaded {
    /// `reloaded`.
    pub status: String,
    pub config_generation: u64,
    pub conflicts: Vec<String>,
}

/// Every error answer: a reason for a person, and for config errors each problem.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// One problem with a config or a request: the field, its line when known, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Problem {
    pub field: String,
    /// 1-based line in the config file, when known.
    pub line: Option<u64>,
    pub reason: String,
}
