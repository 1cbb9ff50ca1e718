//! The config file's YAML types, as written: the seed's fields plus what L4 needs.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use keystone_common::{PROTO_TCP, PROTO_UDP, limits::ring};
use serde::{Deserialize, Serialize};

use super::{DurationSpec, seed};
use crate::dataplane::{AttachMode, Limits};

/// The keys a config may have at its top level; any other is an error (a typo such
/// as `tenant:` would otherwise leave the agent with no tenant).
pub const TOP_LEVEL_KEYS: [&str; 7] = [
    "interfaces",
    "attach",
    "admin",
    "tenants",
    "webhook",
    "notifications",
    "limits",
];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Config {
    /// Interfaces the XDP program attaches to (client side and backend side).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// How the program attaches to them: `xdp` (native, the default) or `xdp-generic`.
    #[serde(default)]
    pub attach: AttachMode,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// The signed deployment webhook (`POST /webhooks/deployment`); off without a secret.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Where deployment events are sent (signed like the inbound webhook).
    #[serde(default)]
    pub notifications: Vec<NotificationTarget>,
    /// Data plane capacities (map sizes); set at start, a reload cannot change them.
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WebhookConfig {
    /// Shared HMAC-SHA256 secret ...
    #[serde(default)]
    pub secret: Option<String>,
    /// ... or a file holding it.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How far a request's timestamp may be from the agent's clock (default 5m).
    #[serde(default)]
    pub tolerance: Option<DurationSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NotificationTarget {
    /// Receiver of `POST` requests with a JSON event body.
    #[serde(default)]
    pub url: String,
    /// Secret to sign the events with (same scheme as the inbound webhook).
    #[serde(default)]
    pub secret: Option<String>,
    /// Events to send (default: all): started, step, paused, promoted, rolled_back,
    /// aborted, failed.
    #[serde(default)]
    pub events: Vec<String>,
}

/// Deployment events a notification target can subscribe to.
pub const DEPLOYMENT_EVENTS: [&str; 7] = [
    "started",
    "step",
    "paused",
    "promoted",
    "rolled_back",
    "aborted",
    "failed",
];

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AdminConfig {
    /// Admin API address; loopback by default.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the admin API.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the bearer token (alternative to `token`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// File holding a second, read-only token: GETs only (see `token_role`).
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            token_file: None,
            read_token_file: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    #[default]
    Nat,
    Dsr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Canary,
    BlueGreen,
    Rolling,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stickiness {
    /// Hash the whole 5-tuple: each connection is placed on its own.
    #[default]
    None,
    /// Hash the client address only: a client keeps one backend across connections.
    SourceIp,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tenant {
    #[serde(default)]
    pub name: String,
    /// The VIP, `address:port` (IPv6 in brackets). Required.
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardingMode,
    #[serde(default)]
    pub stickiness: Stickiness,
    /// Maglev table size; a prime ≤ `limits::ring::MAX_RING_SIZE` (1,048,573). The
    /// tenants' `2 × ring_size` must fit `limits.ring_entries`.
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    #[serde(default)]
    pub deployment_strategy: Strategy,
    #[serde(default)]
    pub canary_config: Option<CanaryConfig>,
    #[serde(default)]
    pub active_environment: Option<String>,
    #[serde(default)]
    pub switch_config: Option<SwitchConfig>,
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_ring_size() -> u32 {
    ring::DEFAULT_RING_SIZE
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CanaryConfig {
    /// Percent of new connections the canary starts with.
    pub initial_traffic: f64,
    /// Percent added each `interval`.
    pub increment: f64,
    pub interval: DurationSpec,
    /// Percent at which the rollout pauses for approval.
    #[serde(default = "hundred")]
    pub max_traffic: f64,
    /// Success rate in percent (0–100) needed to take the next step; see
    /// `params::threshold_rate` for the one rule.
    #[serde(default = "default_health_threshold")]
    pub health_threshold: f64,
    /// Success rate in percent below which the canary is rolled back.
    #[serde(default = "default_rollback_threshold")]
    pub rollback_threshold: f64,
    /// Fewer samples than this make a verdict inconclusive (default 5).
    #[serde(default)]
    pub min_samples: Option<u64>,
    /// Extra analysis sources (like Argo Rollouts / Flagger analysis).
    #[serde(default)]
    pub analysis: Option<AnalysisConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct AnalysisConfig {
    #[serde(default)]
    pub prometheus: Option<PrometheusQuery>,
}

/// A PromQL query whose value is the canary's success rate (0–1); `{{tenant}}` and
/// `{{version}}` are replaced before it is sent. It gates each step next to the health
/// probes and the data plane's L4 signals: below `rollback_threshold` rolls back, no
/// data holds the step.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct PrometheusQuery {
    /// Base URL of the Prometheus server, e.g. `http://127.0.0.1:9090`.
    pub address: String,
    pub query: String,
}

fn hundred() -> f64 {
    100.0
}
fn default_health_threshold() -> f64 {
    95.0
}
fn default_rollback_threshold() -> f64 {
    90.0
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SwitchConfig {
    /// `instant` or `gradual` (the seed calls it `switch_strategy`); a switch request
    /// that names no strategy uses this one.
    #[serde(default, alias = "switch_strategy")]
    pub strategy: Option<String>,
    /// HTTP path the idle side must answer before a switch goes to it (instead of
    /// each service's own health check).
    #[serde(default)]
    pub validation_endpoint: Option<String>,
    #[serde(default)]
    pub validation_timeout: Option<DurationSpec>,
    #[serde(default)]
    pub rollback_on_failure: Option<bool>,
    /// How long the new side is watched after an instant flip, and the step interval
    /// of a gradual switch (default: `canary_config.interval`, else 10s).
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    /// Percent per step of a gradual switch (default: `canary_config.increment`, else 10).
    #[serde(default)]
    pub increment: Option<f64>,
    /// After a completed switch, how long connections established on the old side
    /// keep it before they are moved (default: until they close).
    #[serde(default)]
    pub drain_timeout: Option<DurationSpec>,
}

/// A service's health check, with the seed's field names (see `seed::check_health`
/// for which are refused and why).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HealthConfig {
    /// HTTP path to `GET`; without one (or `endpoint`) the check is a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    /// The seed's name for `path`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub success_threshold: Option<u32>,
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    #[serde(default)]
    pub expected_status_code: Option<u16>,
    #[serde(default)]
    pub expected_response: Option<String>,
    /// Always true in Keystone; `false` is refused.
    #[serde(default)]
    pub deployment_aware: Option<bool>,
    /// Refused (with where to say it instead).
    #[serde(default)]
    pub metrics_endpoint: Option<String>,
    #[serde(default)]
    pub canary_tolerance: Option<f64>,
    #[serde(default)]
    pub rollback_threshold: Option<f64>,
}

impl HealthConfig {
    /// The HTTP path to check, if the check is HTTP (`path` or `endpoint`).
    pub fn http_path(&self) -> Option<&str> {
        self.path.as_deref().or(self.endpoint.as_deref())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Service {
    #[serde(default)]
    pub name: String,
    /// `http://host:port/...` (the host is resolved by the agent) ...
    #[serde(default)]
    pub url: Option<String>,
    /// ... or `address:port`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `health: "/health"` (an HTTP check on that path) or the map form.
    #[serde(default, deserialize_with = "seed::health_field")]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

/// Largest accepted weight: keeps Maglev's credit arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;
