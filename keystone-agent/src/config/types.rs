//! The config file's YAML types, as written: the seed's fields plus what L4 needs.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use keystone_common::{PROTO_TCP, PROTO_UDP, limits::ring};
use serde::{Deserialize, Serialize};

use super::{DurationSpec, seed};
use crate::dataplane::{AttachMode, Limits};

/// The keys a config may have at its top level; any other is an error (a typo such
/// as `tenant:` would otherwise leave the agent with no tenant).
pub const TOP_LEVEL_KEYS: [&str; 10] = [
    "interfaces",
    "attach",
    "admin",
    "tenants",
    "webhook",
    "notifications",
    "limits",
    "fleet",
    "bgp",
    "deployment_orchestration",
];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Config {
    /// Interfaces the program attaches to (client side and backend side): names, or
    /// `{name, attach}` for one attached otherwise than `attach:` says.
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// How the program attaches to them: `xdp` (native, the default), `xdp-generic`,
    /// `tc` or `auto` (tc on virtual devices, xdp on NICs).
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
    /// The etcd cluster this gateway shares its desired state with (none: alone).
    #[serde(default)]
    pub fleet: Option<super::FleetConfig>,
    /// VIPs announced by BGP through BIRD (`announce`); off without it.
    #[serde(default)]
    pub bgp: Option<super::BgpConfig>,
    /// A coordinated multi-service plan (the seed's block), started by
    /// `POST /deployments/plans` when the request gives none.
    #[serde(default)]
    pub deployment_orchestration: Option<keystone_api::Orchestration>,
}

impl Config {
    /// Each interface with how it is attached (its own `attach:`, else the top
    /// level's).
    pub fn interface_modes(&self) -> Vec<(String, AttachMode)> {
        self.interfaces
            .iter()
            .map(|i| (i.name.clone(), i.attach.unwrap_or(self.attach)))
            .collect()
    }
}

/// One entry of `interfaces:`: a name (`veth0`) or a map (`{name: veth0, attach: tc}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceConfig {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachMode>,
}

/// The map form's fields.
#[derive(Deserialize)]
struct InterfaceFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    attach: Option<AttachMode>,
}

impl<'de> Deserialize<'de> for InterfaceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = InterfaceConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an interface name, or a map with `name` and `attach`")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
                Ok(InterfaceConfig {
                    name: name.to_owned(),
                    attach: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let f = InterfaceFields::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(InterfaceConfig {
                    name: f.name,
                    attach: f.attach,
                })
            }
        }
        d.deserialize_any(Either)
    }
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

/// The tenant's words are keystone-api's (one spelling each), read strictly with
/// [`keystone_api::known`]: a word the agent does not know is refused by field and line.
pub use keystone_api::{ForwardingMode, Protocol, Strategy};

/// The protocol's IP protocol number, as the data plane keys VIPs and backends.
pub trait ProtocolNumber {
    fn number(self) -> u8;
}

impl ProtocolNumber for Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Unknown => unreachable!("the config refuses a protocol it does not know"),
        }
    }
}

fn tcp() -> Protocol {
    Protocol::Tcp
}
fn nat() -> ForwardingMode {
    ForwardingMode::Nat
}
fn canary() -> Strategy {
    Strategy::Canary
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
    #[serde(default = "tcp", deserialize_with = "keystone_api::known")]
    pub protocol: Protocol,
    #[serde(default = "nat", deserialize_with = "keystone_api::known")]
    pub mode: ForwardingMode,
    #[serde(default)]
    pub stickiness: Stickiness,
    /// Maglev table size; a prime ≤ `limits::ring::MAX_RING_SIZE` (1,048,573). The
    /// tenants' `2 × ring_size` must fit `limits.ring_entries`.
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    #[serde(default = "canary", deserialize_with = "keystone_api::known")]
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

/// The config's type for a step parameter's kind, as written: percentages as
/// numbers, durations kept as written until `validate()` (which knows field and line).
macro_rules! config_value {
    (percent) => {
        f64
    };
    (threshold) => {
        f64
    };
    (duration) => {
        DurationSpec
    };
    (timeout) => {
        DurationSpec
    };
    (count) => {
        u64
    };
    (flag) => {
        bool
    };
}

/// A `required` parameter is a plain value (serde refuses the key left out, by field
/// and line); any other is an `Option`.
macro_rules! config_type {
    ($kind:ident required) => { config_value!($kind) };
    ($kind:ident) => { Option<config_value!($kind)> };
}

/// Declares [`CanaryConfig`] (the `canary` step parameters) and [`SwitchConfig`] (the
/// `blue_green` ones) from keystone-api's one list, each field read on its own (no
/// `flatten`, so an error keeps its path and line), and their values as a request
/// would give them ([`given`](CanaryConfig::given)), for the engine to apply.
macro_rules! config_step_structs {
    (
        canary { $( { [$(#[$cdoc:meta])*] $cname:ident $cfield:ident $ckind:ident [$($creq:ident)?] } )* }
        blue_green { $( { [$(#[$bdoc:meta])*] $bname:ident $bfield:ident $bkind:ident [$($breq:ident)?] } )* }
    ) => {
        /// A tenant's `canary_config`: its step parameters, and what else judges a canary.
        #[derive(Clone, Debug, Deserialize, Serialize)]
        pub struct CanaryConfig {
            $(
                $(#[$cdoc])*
                pub $cname: config_type!($ckind $($creq)?),
            )*
            /// Extra analysis sources (like Argo Rollouts / Flagger analysis).
            #[serde(default)]
            pub analysis: Option<AnalysisConfig>,
        }

        impl CanaryConfig {
            /// The step parameters `canary_config` sets, as a request would give them.
            pub fn given(&self) -> keystone_api::StepParams {
                keystone_api::StepParams {
                    $($cname: Given::given(&self.$cname),)*
                    ..Default::default()
                }
            }
        }

        /// A tenant's `switch_config`: how a blue/green switch runs.
        #[derive(Clone, Debug, Default, Deserialize, Serialize)]
        pub struct SwitchConfig {
            /// `instant` or `gradual` (the seed calls it `switch_strategy`); a switch request
            /// that names no strategy uses this one. Another word reads as `Unknown`,
            /// which validation refuses naming the word as written.
            #[serde(default, alias = "switch_strategy")]
            pub strategy: Option<keystone_api::SwitchStrategy>,
            /// HTTP path the idle side must answer before a switch goes to it (instead of
            /// each service's own health check).
            #[serde(default)]
            pub validation_endpoint: Option<String>,
            $(
                $(#[$bdoc])*
                pub $bname: config_type!($bkind $($breq)?),
            )*
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

        impl SwitchConfig {
            /// The blue/green step parameters `switch_config` sets, as a request would give them.
            pub fn given(&self) -> keystone_api::StepParams {
                keystone_api::StepParams {
                    $($bname: Given::given(&self.$bname),)*
                    ..Default::default()
                }
            }
        }

        /// The step parameters' names, in the order of the config's fields.
        #[cfg(test)]
        pub const STEP_PARAMS: &[&str] = &[$(stringify!($cname),)* $(stringify!($bname),)*];
    };
}

keystone_api::with_step_params!(config_step_structs);

/// A config value as a request would give it (None: left out).
trait Given<W> {
    fn given(&self) -> Option<W>;
}

macro_rules! given_as_is {
    ($($t:ty),*) => {$(
        impl Given<$t> for $t {
            fn given(&self) -> Option<$t> {
                Some(*self)
            }
        }
    )*};
}
given_as_is!(f64, u64, bool);

impl Given<keystone_api::DurationValue> for DurationSpec {
    fn given(&self) -> Option<keystone_api::DurationValue> {
        Some(self.into())
    }
}

impl<W, T: Given<W>> Given<W> for Option<T> {
    fn given(&self) -> Option<W> {
        self.as_ref().and_then(Given::given)
    }
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
