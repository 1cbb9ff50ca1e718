//! The YAML config: the seed format (`tenants:` with services, canary and switch
//! settings) plus what L4 needs (`listen:`, `protocol:`, `mode:`), parsed, then
//! validated as a whole so every problem is reported at once with its line.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use keystone_common::{
    Endpoint, PROTO_TCP, PROTO_UDP, limits::ring, maglev::is_prime, mode, vip_flags,
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{AttachMode, BackendSpec, Limits, VipSpec},
    yaml_lines::{self, Index},
};

mod check;
mod collect;
mod seed;
#[cfg(test)]
mod seed_docs_tests;
mod service_url;
#[cfg(test)]
mod validation_tests;

pub use check::check_report;

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
    /// `deploy::threshold_rate` for the one rule.
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

/// The longest duration any field accepts: 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration as written: `30s`, `1m30s`, `500ms`, or a bare number of seconds.
/// Kept as written until `validate()`, which knows the field's path and line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

/// By hand rather than `untagged`: a wrong type is refused at the field itself, with
/// a message that says what a duration looks like.
impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl serde::de::Visitor<'_> for DurationVisitor {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 30s or 1m30s, or a number of seconds")
            }
            fn visit_f64<E>(self, v: f64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v as f64))
            }
            fn visit_str<E>(self, v: &str) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Text(v.to_owned()))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

impl DurationSpec {
    pub fn parse(&self) -> Result<Duration, String> {
        let d = match self {
            DurationSpec::Seconds(s) => {
                Duration::try_from_secs_f64(*s).map_err(|_| format!("{s} is not a duration ≥ 0"))?
            }
            DurationSpec::Text(t) => humantime::parse_duration(t)
                .map_err(|e| format!("'{t}' is not a duration like 30s or 1m30s: {e}"))?,
        };
        // Longer than any interval or timeout means, and short enough that adding it
        // to a clock never overflows.
        if d > MAX_DURATION {
            return Err(format!(
                "{} is longer than the longest allowed ({})",
                humantime::format_duration(d),
                humantime::format_duration(MAX_DURATION)
            ));
        }
        Ok(d)
    }

    /// The value of a field that `validate()` has accepted.
    pub fn get(&self) -> Duration {
        self.parse().unwrap_or_default()
    }
}

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Path of the field, e.g. `tenants[0].services[1].weight`.
    pub field: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is invalid:\n{}", format_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
        /// Found too; reported by `--check` next to the problems.
        warnings: Vec<Problem>,
    },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }

    pub fn warnings(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { warnings, .. } => warnings,
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

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

type Problems = Vec<(String, String)>;

/// What `validate` found: the tenants it could resolve, problems and warnings as
/// (field, reason).
struct Checked {
    tenants: Vec<ResolvedTenant>,
    problems: Problems,
    warnings: Problems,
}

/// Shortest admin token accepted (from the config, its file or the environment).
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin token rule, wherever the token comes from.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let len = token.trim().chars().count();
    if len < MIN_TOKEN_LEN {
        return Err(format!(
            "is {len} characters; an admin token needs at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 16`)"
        ));
    }
    Ok(())
}

/// One weight's rule (the config and the API's manual weights share it).
pub fn check_weight(weight: u32) -> Result<(), String> {
    if weight > MAX_WEIGHT {
        return Err(format!("{weight} is above the maximum weight {MAX_WEIGHT}"));
    }
    Ok(())
}

/// A tenant's weights all 0 leave its VIP with no backend: refused by the config and
/// by the API's manual weights alike.
pub fn check_not_all_zero(weights: impl IntoIterator<Item = u32>) -> Result<(), String> {
    if weights.into_iter().all(|w| w == 0) {
        return Err("every weight is 0, so the VIP would have no backend: at least one service needs a weight above 0".into());
    }
    Ok(())
}

/// Link-local addresses have no meaning off their own link (and IPv6 ones need a
/// scope the data plane does not carry): a gateway cannot forward to them.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn validate(config: &Config, index: &Index, resolve: &Resolver) -> Checked {
    let mut problems: Problems = Vec::new();
    let mut warnings: Problems = Vec::new();
    let mut push = |field: String, reason: String| problems.push((field, reason));
    let mut warn = |field: String, reason: String| warnings.push((field, reason));

    if let (Some(_), Some(_)) = (&config.admin.token, &config.admin.token_file) {
        push(
            "admin.token".into(),
            "set either token or token_file, not both".into(),
        );
    }
    if let Some(Err(reason)) = config.admin.token.as_deref().map(check_admin_token) {
        push("admin.token".into(), reason);
    }
    if config.tenants.is_empty() {
        push(
            "tenants".into(),
            "no tenant: list at least one under `tenants:` (a VIP with its services)".into(),
        );
    }
    let limits = &config.limits;
    for (field, reason) in limits.problems() {
        push(format!("limits.{field}"), reason);
    }
    if config.tenants.len() > limits.max_vips as usize {
        push(
            "tenants".into(),
            format!(
                "{} tenants, but limits.max_vips is {} (raise it to serve more VIPs)",
                config.tenants.len(),
                limits.max_vips
            ),
        );
    }
    let services: usize = config.tenants.iter().map(|t| t.services.len()).sum();
    if services > limits.max_backends as usize {
        push(
            "limits.max_backends".into(),
            format!(
                "{} is less than the {services} services of all tenants together",
                limits.max_backends
            ),
        );
    }
    let ring_entries = Limits::ring_entries_needed(config.tenants.iter().map(|t| t.ring_size));
    if ring_entries > u64::from(limits.ring_entries) {
        push(
            "limits.ring_entries".into(),
            format!(
                "{} is less than the {ring_entries} the tenants' tables need (2 × ring_size per tenant)",
                limits.ring_entries
            ),
        );
    }
    for (i, name) in config.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            push(
                format!("interfaces[{i}]"),
                format!("'{name}' is not a valid interface name"),
            );
        }
    }

    if let Some(webhook) = &config.webhook {
        match (&webhook.secret, &webhook.secret_file) {
            (Some(_), Some(_)) => push(
                "webhook.secret".into(),
                "set either secret or secret_file, not both".into(),
            ),
            (None, None) => push(
                "webhook".into(),
                "needs secret or secret_file to verify signatures".into(),
            ),
            (Some(secret), None) if secret.len() < 16 => push(
                "webhook.secret".into(),
                "must be at least 16 characters".into(),
            ),
            _ => {}
        }
        if let Some(Err(reason)) = webhook.tolerance.as_ref().map(DurationSpec::parse) {
            push("webhook.tolerance".into(), reason);
        }
    }
    for (i, target) in config.notifications.iter().enumerate() {
        match url::Url::parse(&target.url) {
            _ if target.url.is_empty() => {
                push(format!("notifications[{i}].url"), "required".into())
            }
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => push(
                format!("notifications[{i}].url"),
                format!("'{}' is not an http(s) URL", target.url),
            ),
        }
        for (j, event) in target.events.iter().enumerate() {
            if !DEPLOYMENT_EVENTS.contains(&event.as_str()) {
                push(
                    format!("notifications[{i}].events[{j}]"),
                    format!(
                        "unknown event '{event}'; known: {}",
                        DEPLOYMENT_EVENTS.join(", ")
                    ),
                );
            }
        }
    }

    let mut resolved = Vec::new();
    // Every backend as (field, address, protocol), to check against every VIP.
    let mut backends: Vec<(String, SocketAddr, Protocol)> = Vec::new();
    let mut tenant_names: HashMap<&str, usize> = HashMap::new();
    let mut vips: HashMap<(SocketAddr, Protocol), usize> = HashMap::new();
    // A NAT backend endpoint may serve one VIP only: replies are mapped back by it.
    let mut nat_backends: HashMap<(SocketAddr, Protocol), String> = HashMap::new();

    for (t, tenant) in config.tenants.iter().enumerate() {
        let at = |field: &str| format!("tenants[{t}].{field}");
        if tenant.name.trim().is_empty() {
            push(at("name"), "required (and not empty)".into());
        } else if let Some(first) = tenant_names.insert(&tenant.name, t) {
            push(
                at("name"),
                format!("'{}' is already the name of tenants[{first}]", tenant.name),
            );
        }
        if !is_prime(tenant.ring_size) || tenant.ring_size > ring::MAX_RING_SIZE {
            push(
                at("ring_size"),
                format!(
                    "{} must be a prime no larger than {}",
                    tenant.ring_size,
                    ring::MAX_RING_SIZE
                ),
            );
        }
        let vip = match tenant.listen.as_deref() {
            None => {
                push(
                    at("listen"),
                    "required: the VIP as address:port, e.g. 198.18.0.10:80".into(),
                );
                None
            }
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(vip) if vip.port() == 0 => {
                    push(at("listen"), "port must not be 0".into());
                    None
                }
                Ok(vip) => Some(vip),
                Err(_) => {
                    push(
                        at("listen"),
                        format!(
                            "'{text}' is not address:port (e.g. 198.18.0.10:80 or [2001:db8::10]:80)"
                        ),
                    );
                    None
                }
            },
        };
        if let Some(vip) = vip
            && let Some(first) = vips.insert((vip, tenant.protocol), t)
        {
            push(
                at("listen"),
                format!(
                    "{vip}/{:?} is already served by tenants[{first}]",
                    tenant.protocol
                ),
            );
        }
        if let Some(canary) = &tenant.canary_config {
            validate_canary(canary, &at("canary_config"), index, &mut push);
        }
        seed::check_active_environment(
            tenant,
            &format!("tenants[{t}]"),
            index,
            &mut push,
            &mut warn,
        );
        if let Some(switch) = &tenant.switch_config {
            for (name, value) in [
                ("validation_timeout", &switch.validation_timeout),
                ("interval", &switch.interval),
                ("drain_timeout", &switch.drain_timeout),
            ] {
                if let Some(Err(reason)) = value.as_ref().map(DurationSpec::parse) {
                    push(at(&format!("switch_config.{name}")), reason);
                }
            }
            if let Some(increment) = switch.increment
                && !(increment > 0.0 && increment <= 100.0)
            {
                push(
                    at("switch_config.increment"),
                    format!("{increment} is not a percentage above 0 and at most 100"),
                );
            }
            if let Some(endpoint) = &switch.validation_endpoint
                && (!endpoint.starts_with('/') || endpoint.contains(char::is_whitespace))
            {
                push(
                    at("switch_config.validation_endpoint"),
                    format!(
                        "'{endpoint}' is not an HTTP path like /health (it starts with / and has no spaces)"
                    ),
                );
            }
            if let Some(strategy) = &switch.strategy
                && strategy != "instant"
                && strategy != "gradual"
            {
                // Named as written: `strategy`, or the seed's `switch_strategy`.
                let seed_name = at("switch_config.switch_strategy");
                let field = if index.lines.contains_key(&seed_name) {
                    seed_name
                } else {
                    at("switch_config.strategy")
                };
                push(
                    field,
                    format!("unknown switch strategy '{strategy}'; expected instant or gradual"),
                );
            }
        }
        if tenant.services.is_empty() {
            push(at("services"), "a tenant needs at least one service".into());
        } else if tenant.active_environment.is_none()
            || tenant.deployment_strategy != Strategy::BlueGreen
        {
            // A blue/green tenant's active environment takes the traffic whatever
            // its weights (see `seed::check_active_environment`).
            if let Err(reason) = check_not_all_zero(tenant.services.iter().map(|s| s.weight)) {
                push(at("services"), reason);
            }
        }

        let mut service_names: HashMap<&str, usize> = HashMap::new();
        let mut endpoints: HashMap<SocketAddr, usize> = HashMap::new();
        let mut services = Vec::new();
        for (s, service) in tenant.services.iter().enumerate() {
            let at = |field: &str| format!("tenants[{t}].services[{s}].{field}");
            if service.name.trim().is_empty() {
                push(at("name"), "required (and not empty)".into());
            } else if let Some(first) = service_names.insert(&service.name, s) {
                push(
                    at("name"),
                    format!(
                        "'{}' is already the name of services[{first}]",
                        service.name
                    ),
                );
            }
            if let Some(health) = &service.health {
                for (name, value) in [("interval", &health.interval), ("timeout", &health.timeout)]
                {
                    if let Some(Err(reason)) = value.as_ref().map(DurationSpec::parse) {
                        push(at(&format!("health.{name}")), reason);
                    }
                }
                seed::check_health(health, &at("health"), &mut push);
            }
            if let Err(reason) = check_weight(service.weight) {
                push(at("weight"), reason);
            }
            let address = match resolve_service(service, vip.map(|v| v.ip()), resolve) {
                Ok(address) => address,
                Err((field, reason)) => {
                    push(at(field), reason);
                    continue;
                }
            };
            let address_field = if service.url.is_some() {
                "url"
            } else {
                "address"
            };
            if is_link_local(address.ip()) {
                push(
                    at(address_field),
                    format!(
                        "{address} is link-local: it means nothing beyond its own link, so a gateway cannot forward to it; use the backend's routable address"
                    ),
                );
            }
            backends.push((at(address_field), address, tenant.protocol));
            if let Some(first) = endpoints.insert(address, s) {
                push(
                    at("address"),
                    format!("{address} is already services[{first}] of this tenant"),
                );
            }
            if let Some(vip) = vip {
                if tenant.mode == ForwardingMode::Dsr && address.port() != vip.port() {
                    push(
                        at("address"),
                        format!(
                            "dsr mode rewrites only MAC addresses, so the backend port ({}) must equal the VIP port ({})",
                            address.port(),
                            vip.port()
                        ),
                    );
                }
                if tenant.mode == ForwardingMode::Nat
                    && let Some(other) =
                        nat_backends.insert((address, tenant.protocol), tenant.name.clone())
                    && other != tenant.name
                {
                    push(
                        at("address"),
                        format!(
                            "{address} already serves tenant '{other}' in nat mode; replies are mapped back to their VIP by backend address, so give each VIP its own backend port"
                        ),
                    );
                }
            }
            services.push(ResolvedService {
                name: service.name.clone(),
                address,
                weight: service.weight,
                environment: service.environment.clone(),
                version: service.labels.get("version").cloned().unwrap_or_default(),
                health: service.health.clone(),
            });
        }
        if let Some(vip) = vip {
            resolved.push(ResolvedTenant {
                name: tenant.name.clone(),
                vip,
                protocol: tenant.protocol,
                mode: tenant.mode,
                stickiness: tenant.stickiness,
                ring_size: tenant.ring_size,
                strategy: tenant.deployment_strategy,
                services,
                active_environment: tenant.active_environment.clone(),
                canary_config: tenant.canary_config.clone(),
                switch_config: tenant.switch_config.clone(),
            });
        }
    }
    for (field, address, protocol) in backends {
        if let Some(t) = vips.get(&(address, protocol)) {
            push(
                field,
                format!(
                    "{address} is the VIP of tenants[{t}] ('{}'); a backend that is a VIP would send its traffic back through the gateway",
                    config.tenants[*t].name
                ),
            );
        }
    }
    Checked {
        tenants: resolved,
        problems,
        warnings,
    }
}

/// The step values are checked by the deployment engine's own rules
/// (`deploy::Params::problems`), so the config and API requests agree.
fn validate_canary(
    c: &CanaryConfig,
    at: &str,
    index: &Index,
    push: &mut impl FnMut(String, String),
) {
    let interval_ok = match c.interval.parse() {
        Ok(_) => true,
        Err(reason) => {
            push(format!("{at}.interval"), reason);
            false
        }
    };
    let mut thresholds_ok = true;
    for (name, value) in [
        ("health_threshold", c.health_threshold),
        ("rollback_threshold", c.rollback_threshold),
    ] {
        let field = format!("{at}.{name}");
        let written = index
            .written
            .get(&field)
            .cloned()
            .unwrap_or_else(|| value.to_string());
        if let Err(reason) = crate::deploy::threshold_rate(value, &written) {
            push(field, reason);
            thresholds_ok = false;
        }
    }
    for (field, reason) in crate::deploy::Params::from_canary_config(Some(c)).problems() {
        let threshold = field.ends_with("_threshold");
        if (field != "interval" || interval_ok) && (!threshold || thresholds_ok) {
            push(format!("{at}.{field}"), reason);
        }
    }
    if let Some(PrometheusQuery { address, query }) =
        c.analysis.as_ref().and_then(|a| a.prometheus.as_ref())
    {
        match url::Url::parse(address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => push(
                format!("{at}.analysis.prometheus.address"),
                format!("'{address}' is not an http(s) URL"),
            ),
        }
        if query.trim().is_empty() {
            push(
                format!("{at}.analysis.prometheus.query"),
                "must not be empty".into(),
            );
        }
    }
}

/// Resolves a service's `address:port` or `url`, preferring an address of the VIP's
/// family. Errors name the field (`address` or `url`) and the reason.
fn resolve_service(
    service: &Service,
    vip_ip: Option<IpAddr>,
    resolve: &Resolver,
) -> Result<SocketAddr, (&'static str, String)> {
    let (field, host, port) = match (&service.address, &service.url) {
        (Some(_), Some(_)) => return Err(("url", "set either url or address, not both".into())),
        (None, None) => {
            return Err((
                "address",
                "required: address: host:port or url: http://host:port".into(),
            ));
        }
        (Some(address), None) => {
            if let Ok(addr) = address.parse::<SocketAddr>() {
                return check_family("address", addr, vip_ip);
            }
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(("address", format!("'{address}' is not host:port")));
            };
            let port = port.parse::<u16>().map_err(|_| {
                (
                    "address",
                    format!("'{port}' in '{address}' is not a port number"),
                )
            })?;
            ("address", host.trim_matches(['[', ']']).to_owned(), port)
        }
        (None, Some(text)) => {
            let (host, port) = service_url::host_port(text).map_err(|reason| ("url", reason))?;
            ("url", host, port)
        }
    };
    if port == 0 {
        return Err((field, "port must not be 0".into()));
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolve(&host, port)
            .map_err(|e| (field, format!("cannot resolve host '{host}': {e}")))?,
    };
    let preferred = addrs
        .iter()
        .find(|a| vip_ip.is_none_or(|v| v.is_ipv4() == a.is_ipv4()))
        .or(addrs.first())
        .copied()
        .ok_or((field, format!("host '{host}' resolved to no address")))?;
    check_family(field, preferred, vip_ip)
}

fn check_family(
    field: &'static str,
    addr: SocketAddr,
    vip_ip: Option<IpAddr>,
) -> Result<SocketAddr, (&'static str, String)> {
    if addr.port() == 0 {
        return Err((field, "port must not be 0".into()));
    }
    match vip_ip {
        Some(vip) if vip.is_ipv4() != addr.is_ipv4() => Err((
            field,
            format!(
                "backend {addr} and VIP {vip} are different address families; Keystone does not translate between IPv4 and IPv6"
            ),
        )),
        _ => Ok(addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::parse(Path::new("test.yaml"), text)
    }

    pub(super) fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// The seed's example shape, with the `listen:` line Keystone adds.
    const SEED: &str = r#"
tenants:
  - name: api
    listen: 198.18.0.10:80
    deployment_strategy: canary
    canary_config:
      initial_traffic: 10
      increment: 10
      interval: 5m
      max_traffic: 50
      health_threshold: 95
      rollback_threshold: 90
    services:
      - name: api-v1
        url: http://localhost:8080
        weight: 90
        environment: production
        health:
          path: /health
          interval: 10s
          timeout: 5s
          retries: 3
        labels:
          version: "1.23.0"
      - name: api-v2
        url: http://127.0.0.1:8081/
        weight: 10
        environment: canary
        labels:
          version: "1.24.0"
  - name: web
    listen: "[2001:db8::10]:443"
    deployment_strategy: blue_green
    active_environment: blue
    switch_config:
      strategy: instant
      validation_timeout: 30s
      rollback_on_failure: true
    services:
      - name: web-blue
        address: "[2001:db8::1:1]:8443"
        environment: blue
      - name: web-green
        address: "[2001:db8::1:2]:8443"
        environment: green
        weight: 0
"#;

    #[test]
    fn seed_shaped_config_loads() {
        let loaded = parse(SEED).unwrap();
        assert_eq!(loaded.tenants.len(), 2);
        let api = &loaded.tenants[0];
        assert_eq!(api.vip, "198.18.0.10:80".parse().unwrap());
        assert_eq!(api.protocol, Protocol::Tcp);
        assert_eq!(api.mode, ForwardingMode::Nat);
        assert_eq!(api.services[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(api.services[1].version, "1.24.0");
        let web = &loaded.tenants[1];
        assert_eq!(web.strategy, Strategy::BlueGreen);
        assert_eq!(web.services[0].weight, 1, "weight defaults to 1");
        assert_eq!(web.services[1].weight, 0);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let canary = loaded.config.tenants[0].canary_config.as_ref().unwrap();
        assert_eq!(canary.interval.get(), Duration::from_secs(300));
        let specs = loaded.vip_specs();
        assert_eq!(specs[1].vip.family, keystone_common::FAMILY_IPV6);
        assert_eq!(specs[0].backends[0].weight, 90);
    }

    #[test]
    fn conn_table_entries_default_and_range() {
        let loaded = parse(SEED).unwrap();
        assert_eq!(
            loaded.config.limits.conn_table_entries,
            Limits::default().conn_table_entries
        );
        let text = format!("limits:\n  conn_table_entries: 512\n{SEED}");
        assert_eq!(parse(&text).unwrap().config.limits.conn_table_entries, 512);
        for bad in ["0", "255", "16777217"] {
            let text = format!("limits:\n  conn_table_entries: {bad}\n{SEED}");
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].field, "limits.conn_table_entries");
            assert_eq!(p[0].line, Some(2));
            assert!(p[0].reason.contains("256 to 16777216"), "{}", p[0].reason);
        }
    }

    #[test]
    fn unknown_fields_are_reported_not_fatal() {
        let text = SEED.replace(
            "    deployment_strategy: canary",
            "    deployment_strategy: canary\n    colour: red",
        );
        let loaded = parse(&text).unwrap();
        assert_eq!(
            loaded.warnings,
            [Problem {
                field: "tenants[0].colour".into(),
                line: Some(6),
                reason: "unknown field, ignored".into()
            }]
        );
    }

    #[test]
    fn missing_listen_names_field_and_line() {
        let text = "tenants:\n  - name: api\n    services:\n      - name: a\n        address: 127.0.0.1:80\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "tenants[0].listen");
        assert_eq!(p[0].line, Some(2));
        assert!(p[0].reason.contains("required"));
    }

    #[test]
    fn wrong_type_names_field_and_line() {
        let text = "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    services:\n      - name: a\n        address: 127.0.0.1:80\n        weight: lots\n";
        let p = problems(text);
        assert_eq!(p[0].field, "tenants[0].services[0].weight");
        assert_eq!(p[0].line, Some(7));
        assert!(p[0].reason.contains("invalid type"), "{}", p[0].reason);
    }

    #[test]
    fn bad_enum_and_duration_are_named() {
        let text = "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    protocol: sctp\n    services: []\n";
        let p = problems(text);
        assert_eq!(p[0].field, "tenants[0].protocol");
        assert_eq!(p[0].line, Some(4));
        let text = SEED.replace("interval: 5m", "interval: soon");
        let p = problems(&text);
        assert_eq!(p[0].field, "tenants[0].canary_config.interval");
        assert_eq!(p[0].line, Some(9));
        assert!(
            p[0].reason.contains("'soon' is not a duration"),
            "{}",
            p[0].reason
        );
    }

    #[test]
    fn all_semantic_problems_reported_at_once_with_lines() {
        let text = r#"tenants:
  - name: api
    listen: 198.18.0.10:80
    ring_size: 65536
    services:
      - name: a
        address: 127.0.0.1:80
        weight: 2000000
      - name: a
        address: "[::1]:80"
      - name: c
        url: http://no-such-host.invalid:8080
  - name: api
    listen: 198.18.0.10:80
    mode: dsr
    services:
      - name: d
        address: 127.0.0.1:81
"#;
        let p = problems(text);
        let find = |field: &str| {
            p.iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("no problem for {field} in {p:#?}"))
        };
        assert_eq!(find("tenants[0].ring_size").line, Some(4));
        assert_eq!(find("tenants[0].services[0].weight").line, Some(8));
        assert_eq!(find("tenants[0].services[1].name").line, Some(9));
        assert!(
            find("tenants[0].services[1].address")
                .reason
                .contains("address families")
        );
        let unresolved = find("tenants[0].services[2].url");
        assert_eq!(unresolved.line, Some(12));
        assert!(
            unresolved
                .reason
                .contains("cannot resolve host 'no-such-host.invalid'"),
            "{}",
            unresolved.reason
        );
        assert_eq!(find("tenants[1].name").line, Some(13));
        assert!(find("tenants[1].listen").reason.contains("already served"));
        assert!(
            find("tenants[1].services[0].address")
                .reason
                .contains("must equal the VIP port")
        );
        assert_eq!(p.len(), 8, "{p:#?}");
    }

    #[test]
    fn limits_default_to_the_compiled_sizes_and_are_checked_against_the_tenants() {
        let c = parse(SEED).expect("seed config");
        assert_eq!(c.config.limits, Limits::default());

        let text = r#"limits:
  max_vips: 1
  max_backends: 2
  ring_entries: 4000
  conn_table_entries: 0
tenants:
  - name: a
    listen: 198.18.0.10:80
    ring_size: 1009
    services: [{name: x, address: "198.18.11.2:8080"}, {name: y, address: "198.18.11.3:8080"}]
  - name: b
    listen: 198.18.0.11:80
    ring_size: 1009
    services: [{name: z, address: "198.18.11.4:8080"}]
"#;
        let p = problems(text);
        let find = |field: &str| {
            p.iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("no problem for {field} in {p:#?}"))
        };
        assert!(find("tenants").reason.contains("limits.max_vips is 1"));
        let backends = find("limits.max_backends");
        assert_eq!(backends.line, Some(3));
        assert!(
            backends.reason.contains("3 services"),
            "{}",
            backends.reason
        );
        let ring = find("limits.ring_entries");
        assert_eq!(ring.line, Some(4));
        assert!(ring.reason.contains("4036"), "{}", ring.reason);
        assert_eq!(find("limits.conn_table_entries").line, Some(5));
        assert_eq!(p.len(), 4, "{p:#?}");

        // Large tables fit when the ring array is sized for them.
        let text = r#"limits:
  ring_entries: 1310746
tenants:
  - name: a
    listen: 198.18.0.10:80
    ring_size: 655373
    services: [{name: x, address: "198.18.11.2:8080"}]
"#;
        let c = parse(text).expect("fits");
        assert_eq!(c.config.limits.ring_entries, 2 * 655_373);
        assert_eq!(c.config.limits.max_vips, Limits::default().max_vips);
    }

    #[test]
    fn nat_backend_shared_by_two_vips_is_refused() {
        let text = r#"tenants:
  - name: a
    listen: 198.18.0.10:80
    services: [{name: x, address: "198.18.11.2:8080"}]
  - name: b
    listen: 198.18.0.11:80
    services: [{name: y, address: "198.18.11.2:8080"}]
"#;
        let p = problems(text);
        assert_eq!(p[0].field, "tenants[1].services[0].address");
        assert!(
            p[0].reason.contains("already serves tenant 'a'"),
            "{}",
            p[0].reason
        );
    }

    #[test]
    fn canary_config_ranges_are_checked() {
        let text = SEED
            .replace("initial_traffic: 10", "initial_traffic: 80")
            .replace("increment: 10", "increment: 0");
        let p = problems(&text);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tenants[0].canary_config.increment",
                "tenants[0].canary_config.initial_traffic"
            ]
        );
        assert_eq!(p[0].line, Some(8));
    }

    #[test]
    fn switch_config_is_checked() {
        let text = SEED.replace(
            "strategy: instant",
            "strategy: sideways\n      interval: never\n      increment: 0",
        );
        let p = problems(&text);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tenants[1].switch_config.interval",
                "tenants[1].switch_config.increment",
                "tenants[1].switch_config.strategy"
            ],
            "{p:#?}"
        );
        assert!(p[2].reason.contains("unknown switch strategy 'sideways'"));
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let p = problems("tenants:\n  - name: [unclosed\n");
        assert!(p[0].line.is_some(), "{p:?}");
    }
}
