//! The request and response shapes of the admin API, as the agent reads and writes
//! them (a later phase replaces these with the shared API crate's types).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    config::{DurationSpec, ForwardingMode, Protocol, Strategy},
    dataplane::problems::DataplaneProblem,
    deploy::{self, Params},
    errors::{DeployError, invalid},
    health::HealthState,
    outcome::TrafficSource,
    persist::PersistStatus,
};

/// What a reload did: the new generation, and where it contradicts a live outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Reloaded {
    #[serde(rename = "config_generation")]
    pub generation: u64,
    pub conflicts: Vec<String>,
}

/// A request's step parameters as sent: every field that is not the request's own.
pub type StepParams = serde_json::Map<String, serde_json::Value>;

/// Optional step parameters of a deployment request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ParamOverrides {
    pub initial_traffic: Option<f64>,
    pub increment: Option<f64>,
    pub interval: Option<DurationSpec>,
    pub max_traffic: Option<f64>,
    pub health_threshold: Option<f64>,
    pub rollback_threshold: Option<f64>,
    pub min_samples: Option<u64>,
    pub validation_timeout: Option<DurationSpec>,
    pub rollback_on_failure: Option<bool>,
}

/// The step parameters a deployment request may set.
pub const PARAMETER_NAMES: [&str; 9] = [
    "initial_traffic",
    "increment",
    "interval",
    "max_traffic",
    "health_threshold",
    "rollback_threshold",
    "min_samples",
    "validation_timeout",
    "rollback_on_failure",
];

impl ParamOverrides {
    /// Reads a request's step parameters. A misspelt parameter is refused by name
    /// (never a silently kept default), and so is a value of the wrong type (serde's
    /// flattened fields would lose the name, hence the separate pass).
    pub fn from_params(params: &StepParams) -> Result<ParamOverrides, DeployError> {
        if let Some(name) = params
            .keys()
            .find(|k| !PARAMETER_NAMES.contains(&k.as_str()))
        {
            return Err(invalid(
                name.as_str(),
                format!("unknown parameter; known: {}", PARAMETER_NAMES.join(", ")),
            ));
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(params.clone()))
            .map_err(|e| invalid(e.path().to_string(), e.into_inner().to_string()))
    }

    pub fn apply(&self, p: &mut Params) -> Result<(), DeployError> {
        if let Some(v) = self.initial_traffic {
            p.initial_traffic = v;
        }
        if let Some(v) = self.increment {
            p.increment = v;
        }
        if let Some(v) = &self.interval {
            p.interval_seconds = v
                .parse()
                .map_err(|reason| invalid("interval", reason))?
                .as_secs_f64();
        }
        if let Some(v) = self.max_traffic {
            p.max_traffic = v;
        }
        if let Some(v) = self.health_threshold {
            p.health_threshold = deploy::threshold_rate(v, &v.to_string())
                .map_err(|reason| invalid("health_threshold", reason))?;
        }
        if let Some(v) = self.rollback_threshold {
            p.rollback_threshold = deploy::threshold_rate(v, &v.to_string())
                .map_err(|reason| invalid("rollback_threshold", reason))?;
        }
        if let Some(v) = self.min_samples {
            p.min_samples = v;
        }
        if let Some(v) = &self.validation_timeout {
            p.validation_timeout_seconds = Some(
                v.parse()
                    .map_err(|reason| invalid("validation_timeout", reason))?
                    .as_secs_f64(),
            );
        }
        if let Some(v) = self.rollback_on_failure {
            p.rollback_on_failure = v;
        }
        match p.problems().into_iter().next() {
            Some((field, reason)) => Err(invalid(field, reason)),
            None => Ok(()),
        }
    }
}

/// `POST /deployments/canary`.
#[derive(Clone, Debug, Deserialize)]
pub struct CanaryRequest {
    /// The tenant.
    pub service: String,
    /// `labels.version` of the canary backends.
    pub version: String,
    /// Step parameters (`ParamOverrides::from_params` reads them).
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
}

/// `POST /deployments/blue-green/switch`.
#[derive(Clone, Debug, Deserialize)]
pub struct SwitchRequest {
    pub service: String,
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    /// `instant` or `gradual`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Step parameters (`ParamOverrides::from_params` reads them).
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
}

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
