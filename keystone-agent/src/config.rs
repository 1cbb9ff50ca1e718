//! The YAML config: the seed format (`tenants:` with services, canary and switch
//! settings) plus what L4 needs (`listen:`, `protocol:`, `mode:`), parsed, then
//! validated as a whole so every problem is reported at once with its line.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use keystone_common::{Endpoint, mode, vip_flags};
use serde::Serialize;

use crate::{
    dataplane::{BackendSpec, VipSpec},
    yaml_lines,
};

mod bgp;
mod check;
mod collect;
mod duration;
mod fleet;
mod params;
mod problem;
mod resolve;
mod seed;
#[cfg(test)]
mod seed_docs_tests;
mod service_url;
#[cfg(test)]
mod tests;
mod types;
mod validate;
#[cfg(test)]
mod validation_tests;

pub use bgp::{BgpConfig, DEFAULT_DRAIN_TIMEOUT, find_program};
pub use check::check_report;
pub use duration::{DurationSpec, MAX_DURATION};
pub use fleet::{DEFAULT_LEASE_TTL, FleetConfig, FleetTls, check_gateway_id};
pub use params::{
    DEFAULT_INCREMENT, DEFAULT_INITIAL, DEFAULT_INTERVAL_SECS, DEFAULT_MIN_SAMPLES, Params,
    threshold_rate,
};
pub use problem::{ConfigError, Problem};
pub use types::{
    AdminConfig, AnalysisConfig, CanaryConfig, Config, DEPLOYMENT_EVENTS, ForwardingMode,
    HealthConfig, MAX_WEIGHT, NotificationTarget, PrometheusQuery, Protocol, ProtocolNumber,
    Service, Stickiness, Strategy, SwitchConfig, TOP_LEVEL_KEYS, Tenant, WebhookConfig,
};
use validate::validate;
pub use validate::{MIN_TOKEN_LEN, check_admin_token, check_not_all_zero, check_weight};

/// A backend with its address resolved and its labels kept for metrics.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedService {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub environment: Option<String>,
    /// `labels.version`, or "" when absent.
    pub version: String,
    /// Its `health` check, as configured.
    pub health: Option<HealthConfig>,
}

/// A tenant with its VIP and backends resolved: what the data plane is given.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedTenant {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub stickiness: Stickiness,
    pub ring_size: u32,
    pub strategy: Strategy,
    pub services: Vec<ResolvedService>,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    pub canary_config: Option<CanaryConfig>,
    pub switch_config: Option<SwitchConfig>,
}

impl ResolvedTenant {
    pub fn vip_endpoint(&self) -> Endpoint {
        Endpoint::new(self.vip, self.protocol.number())
    }

    /// The data plane's desired state for this tenant: `weight` gives each service's
    /// effective weight (by index), `is_up` whether it passes its health checks.
    pub fn vip_spec(
        &self,
        weight: impl Fn(usize, &ResolvedService) -> u32,
        is_up: impl Fn(&ResolvedService) -> bool,
    ) -> VipSpec {
        VipSpec {
            name: self.name.clone(),
            vip: self.vip_endpoint(),
            mode: match self.mode {
                ForwardingMode::Nat => mode::NAT,
                ForwardingMode::Dsr => mode::DSR,
                ForwardingMode::Unknown => {
                    unreachable!("the config refuses a mode it does not know")
                }
            },
            flags: match self.stickiness {
                Stickiness::None => 0,
                Stickiness::SourceIp => vip_flags::SOURCE_STICKY,
            },
            ring_size: self.ring_size,
            backends: self
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| BackendSpec {
                    name: s.name.clone(),
                    endpoint: Endpoint::new(s.address, self.protocol.number()),
                    weight: weight(i, s),
                    up: is_up(s),
                })
                .collect(),
        }
    }
}

/// A parsed, validated and resolved config.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    /// The text it was read from (for line numbers and the saved copy).
    pub source: String,
    pub config: Config,
    pub tenants: Vec<ResolvedTenant>,
    /// What loads but is probably not what was meant: unknown fields (typos), L7
    /// fields, contradictions. `--check` prints them; `--strict` refuses them.
    pub warnings: Vec<Problem>,
}

/// Resolves a host name and port to addresses: the system resolver, or a test's table.
pub type Resolver = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

pub fn system_resolver(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

impl LoadedConfig {
    /// Reads, parses, validates and resolves `path`; every problem is reported at once.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        Self::parse_with(path, text, &system_resolver)
    }

    /// `parse` with host names resolved by `resolve`. Every problem is reported at
    /// once, type errors included; each names its field and line.
    pub fn parse_with(
        path: &Path,
        text: &str,
        resolve: &Resolver,
    ) -> Result<LoadedConfig, ConfigError> {
        let index = yaml_lines::index_all(text);
        let collected = collect::deserialize_all(text, &index);
        let mut problems = collected.errors;
        let mut warnings = collected.warnings;
        let mut tenants = Vec::new();
        let with_line = |(field, reason): (String, String)| Problem {
            line: yaml_lines::line_of(&index.lines, &field),
            field,
            reason,
        };
        if let Some(config) = &collected.config {
            let checked = validate(config, &index, resolve);
            tenants = checked.tenants;
            // A field cut after a type error has its default now: what is said
            // about that default would be noise.
            let under_cut = |field: &str| {
                collected.cut.iter().any(|cut| {
                    field
                        .strip_prefix(cut.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                })
            };
            problems.extend(
                checked
                    .problems
                    .into_iter()
                    .filter(|(field, _)| !under_cut(field))
                    .map(with_line),
            );
            warnings.extend(checked.warnings.into_iter().map(with_line));
        }
        match collected.config {
            Some(config) if problems.is_empty() => Ok(LoadedConfig {
                path: path.to_owned(),
                source: text.to_owned(),
                config,
                tenants,
                warnings,
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
                warnings,
            }),
        }
    }

    /// Desired state with configured weights and every backend up.
    pub fn vip_specs(&self) -> Vec<VipSpec> {
        self.tenants
            .iter()
            .map(|t| t.vip_spec(|_, s| s.weight, |_| true))
            .collect()
    }
}
