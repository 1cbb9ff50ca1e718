//! The agent's YAML config, written from typed values (the lab writes configs; the
//! agent owns parsing and validation).

pub use keystone_api::Protocol;
use keystone_api::{DurationValue, StepParams, Strategy, SwitchStrategy};
use std::{
    fmt::Write as _,
    net::SocketAddr,
    ops::{Deref, DerefMut},
};

use crate::lab::Mode;

/// A canary rollout then a blue/green flip back, as (what, blue weight, green weight):
/// what `cargo xtask demo` shows and an integration test checks.
pub const ROLLOUT: &[(&str, u32, u32)] = &[
    ("start: everything on blue", 100, 0),
    ("canary: green takes 10 %", 90, 10),
    ("canary: green takes 50 %", 50, 50),
    ("promote: everything on green", 0, 100),
    ("blue/green flip back to blue", 100, 0),
];

/// One backend of a tenant.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub environment: String,
    pub version: String,
    /// Active health check (`health:`); none by default.
    pub health: Option<HealthCheck>,
}

/// A service's `health:` block.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// HTTP path (ks-backend answers any path with 200 and its name); `None` is a
    /// TCP connect check.
    pub path: Option<String>,
    /// Durations as the config takes them (`200ms`, `2s`).
    pub interval: String,
    pub timeout: String,
    /// Successes to come up (rise) and failures to go down (fall).
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl HealthCheck {
    /// `GET /` every 200 ms, 500 ms timeout, up after 1 success, down after 2 failures:
    /// fast enough for tests that fail a backend mid-rollout.
    pub fn fast_http() -> Self {
        Self {
            path: Some("/".into()),
            interval: "200ms".into(),
            timeout: "500ms".into(),
            success_threshold: 1,
            failure_threshold: 2,
        }
    }

    /// As [`HealthCheck::fast_http`], but slow to call a backend down (2 s timeout,
    /// 5 failures): for tests that hold connections and fail no backend on purpose,
    /// where a probe starved of CPU on a busy CI machine must not take a healthy
    /// backend, and its held connections, out. A stopped backend refuses at once and
    /// is still down within about a second.
    pub fn tolerant_http() -> Self {
        Self {
            timeout: "2s".into(),
            failure_threshold: 5,
            ..Self::fast_http()
        }
    }
}

/// A tenant's `canary_config:` block: keystone-api's step parameters, so the lab
/// writes each one (in the config, and as keystone-ctl's flags) by its one name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CanaryConfig(pub StepParams);

impl Deref for CanaryConfig {
    type Target = StepParams;
    fn deref(&self) -> &StepParams {
        &self.0
    }
}

impl DerefMut for CanaryConfig {
    fn deref_mut(&mut self) -> &mut StepParams {
        &mut self.0
    }
}

impl CanaryConfig {
    /// The lab's canaries: 10 % first, then +30 % every `interval` (10 → 40 → 70 → 100).
    pub fn ten_plus_thirty(interval: &str) -> Self {
        CanaryConfig(StepParams {
            initial_traffic: Some(10.0),
            increment: Some(30.0),
            interval: Some(DurationValue::Text(interval.into())),
            ..StepParams::default()
        })
    }

    /// Each parameter given, in `StepParams::NAMES` order: its name and its value as
    /// JSON (a duration's text is a string, so YAML quotes it).
    fn given(&self) -> Vec<(&'static str, serde_json::Value)> {
        let serde_json::Value::Object(mut given) =
            serde_json::to_value(&self.0).expect("step parameters serialise")
        else {
            unreachable!("StepParams serialises as an object")
        };
        StepParams::NAMES
            .iter()
            .filter_map(|name| given.remove(*name).map(|v| (*name, v)))
            .collect()
    }

    /// `canary start <tenant> --version <version>` with these steps as flags, for
    /// keystone-ctl: the same steps whether a canary comes from the config or the CLI.
    pub fn ctl_start_args(&self, tenant: &str, version: &str) -> Vec<String> {
        let mut args: Vec<String> = ["canary", "start", tenant, "--version", version]
            .map(str::to_owned)
            .into();
        for (name, value) in self.given() {
            args.push(format!("--{}", name.replace('_', "-")));
            args.push(match value {
                serde_json::Value::String(text) => text,
                other => plain(&other),
            });
        }
        args
    }
}

/// A JSON scalar as a person writes it: `10`, not `10.0`.
fn plain(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(n) => n.to_string(),
        None => value.to_string(),
    }
}

/// A blue/green tenant's `switch_config:` block.
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchConfig {
    pub strategy: SwitchStrategy,
    pub validation_timeout: String,
    pub rollback_on_failure: bool,
    /// The seed document's spelling: `switch_strategy:` for `strategy:`, and
    /// `validation_endpoint:` (the path the idle side must answer).
    pub seed_validation_endpoint: Option<String>,
    /// A gradual switch's step `interval:` and `increment:` (percent).
    pub steps: Option<(String, f64)>,
}

impl SwitchConfig {
    /// `{strategy: instant, validation_timeout: 5s, rollback_on_failure: true}`.
    pub fn instant() -> Self {
        Self {
            strategy: SwitchStrategy::Instant,
            validation_timeout: "5s".into(),
            rollback_on_failure: true,
            seed_validation_endpoint: None,
            steps: None,
        }
    }

    /// The seed's block as it writes it (`validation_endpoint: "/health"`,
    /// `switch_strategy: "gradual"`), with the lab's step timing.
    pub fn seed_gradual(interval: &str, increment: f64) -> Self {
        Self {
            strategy: SwitchStrategy::Gradual,
            seed_validation_endpoint: Some("/health".into()),
            steps: Some((interval.into(), increment)),
            ..Self::instant()
        }
    }
}

/// The config's `webhook:` block.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// At least 16 characters.
    pub secret: String,
    /// How far a request's timestamp may be from the agent's clock (`5m`).
    pub tolerance: String,
}

/// One `notifications:` target: where the agent POSTs deployment events, signed with
/// `secret`.
#[derive(Clone, Debug)]
pub struct NotificationTarget {
    pub url: String,
    pub secret: String,
}

/// One VIP with its backends.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub mode: Mode,
    pub strategy: Strategy,
    pub services: Vec<Service>,
    pub canary: Option<CanaryConfig>,
    /// Blue/green: the environment taking traffic (`active_environment:`).
    pub active_environment: Option<String>,
    pub switch: Option<SwitchConfig>,
    /// Maglev table size (`ring_size:`); the agent's default when `None`.
    pub ring_size: Option<u32>,
}

impl Tenant {
    /// The same health check on every service.
    pub fn with_health(mut self, check: HealthCheck) -> Self {
        for s in &mut self.services {
            s.health = Some(check.clone());
        }
        self
    }

    /// `deployment_strategy: canary` with this `canary_config`.
    pub fn with_canary(mut self, canary: CanaryConfig) -> Self {
        self.strategy = Strategy::Canary;
        self.canary = Some(canary);
        self
    }

    /// `deployment_strategy: blue_green`: only `active` takes traffic until a switch.
    pub fn blue_green(mut self, active: &str, switch: SwitchConfig) -> Self {
        self.strategy = Strategy::BlueGreen;
        self.active_environment = Some(active.to_owned());
        self.switch = Some(switch);
        self
    }

    /// Sets the weight of each named service; services not named keep theirs.
    /// Panics on a name the tenant does not have (a typo in a test).
    pub fn set_weights(&mut self, weights: &[(&str, u32)]) {
        for (name, weight) in weights {
            let svc = self
                .services
                .iter_mut()
                .find(|s| s.name == *name)
                .unwrap_or_else(|| panic!("tenant {} has no service {name}", self.name));
            svc.weight = *weight;
        }
    }
}

/// A whole agent config.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    /// The top-level `attach:` (`xdp`, `xdp-generic`, `tc`, `auto`); the agent's
    /// default when `None`.
    pub attach: Option<String>,
    pub admin_listen: String,
    pub token: String,
    pub tenants: Vec<Tenant>,
    pub webhook: Option<WebhookConfig>,
    /// The `notifications:` targets.
    pub notifications: Vec<NotificationTarget>,
    /// The `limits:` section as (field, value), e.g. `("max_backends", 2048)`;
    /// the agent's defaults for fields not listed.
    pub limits: Vec<(String, u32)>,
}

impl AgentConfig {
    pub fn tenant_mut(&mut self, name: &str) -> &mut Tenant {
        self.tenants
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("config has no tenant {name}"))
    }

    /// The config as the agent reads it.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let _ = writeln!(y, "# Written by keystone-lab.");
        let ifs: Vec<String> = self.interfaces.iter().map(|i| q(i)).collect();
        let _ = writeln!(y, "interfaces: [{}]", ifs.join(", "));
        if let Some(attach) = &self.attach {
            let _ = writeln!(y, "attach: {}", q(attach));
        }
        let _ = writeln!(y, "admin:");
        let _ = writeln!(y, "  listen: {}", q(&self.admin_listen));
        let _ = writeln!(y, "  token: {}", q(&self.token));
        if let Some(w) = &self.webhook {
            let _ = writeln!(y, "webhook:");
            let _ = writeln!(y, "  secret: {}", q(&w.secret));
            let _ = writeln!(y, "  tolerance: {}", q(&w.tolerance));
        }
        if !self.notifications.is_empty() {
            let _ = writeln!(y, "notifications:");
            for n in &self.notifications {
                let _ = writeln!(y, "  - url: {}", q(&n.url));
                let _ = writeln!(y, "    secret: {}", q(&n.secret));
            }
        }
        if !self.limits.is_empty() {
            let _ = writeln!(y, "limits:");
            for (field, value) in &self.limits {
                let _ = writeln!(y, "  {field}: {value}");
            }
        }
        let _ = writeln!(y, "tenants:");
        for t in &self.tenants {
            let _ = writeln!(y, "  - name: {}", q(&t.name));
            let _ = writeln!(y, "    listen: {}", q(&t.listen.to_string()));
            let _ = writeln!(y, "    protocol: {}", t.protocol);
            let _ = writeln!(y, "    mode: {}", t.mode.as_str());
            let _ = writeln!(y, "    deployment_strategy: {}", t.strategy);
            if let Some(size) = t.ring_size {
                let _ = writeln!(y, "    ring_size: {size}");
            }
            if let Some(c) = &t.canary {
                let _ = writeln!(y, "    canary_config:");
                for (name, value) in c.given() {
                    let value = match value {
                        serde_json::Value::String(text) => q(&text),
                        other => plain(&other),
                    };
                    let _ = writeln!(y, "      {name}: {value}");
                }
            }
            if let Some(env) = &t.active_environment {
                let _ = writeln!(y, "    active_environment: {}", q(env));
            }
            if let Some(sw) = &t.switch {
                let _ = writeln!(y, "    switch_config:");
                let strategy_key = match &sw.seed_validation_endpoint {
                    Some(path) => {
                        let _ = writeln!(y, "      validation_endpoint: {}", q(path));
                        "switch_strategy"
                    }
                    None => "strategy",
                };
                let _ = writeln!(y, "      {strategy_key}: {}", q(sw.strategy.name()));
                if let Some((interval, increment)) = &sw.steps {
                    let _ = writeln!(y, "      interval: {}", q(interval));
                    let _ = writeln!(y, "      increment: {increment}");
                }
                let _ = writeln!(y, "      validation_timeout: {}", q(&sw.validation_timeout));
                let _ = writeln!(y, "      rollback_on_failure: {}", sw.rollback_on_failure);
            }
            let _ = writeln!(y, "    services:");
            for s in &t.services {
                let _ = writeln!(y, "      - name: {}", q(&s.name));
                let _ = writeln!(y, "        address: {}", q(&s.address.to_string()));
                let _ = writeln!(y, "        weight: {}", s.weight);
                let _ = writeln!(y, "        environment: {}", q(&s.environment));
                let _ = writeln!(y, "        labels: {{ version: {} }}", q(&s.version));
                if let Some(h) = &s.health {
                    let mut fields = Vec::new();
                    if let Some(path) = &h.path {
                        fields.push(format!("path: {}", q(path)));
                    }
                    fields.push(format!("interval: {}", q(&h.interval)));
                    fields.push(format!("timeout: {}", q(&h.timeout)));
                    fields.push(format!("success_threshold: {}", h.success_threshold));
                    fields.push(format!("failure_threshold: {}", h.failure_threshold));
                    let _ = writeln!(y, "        health: {{ {} }}", fields.join(", "));
                }
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The CLI flags must spell the same steps as the config block (integers print
    // without a decimal point, as keystone-ctl's callers always wrote them).
    #[test]
    fn canary_ctl_args_spell_the_config_steps() {
        assert_eq!(
            CanaryConfig::ten_plus_thirty("2s").ctl_start_args("web", "1.1.0"),
            [
                "canary",
                "start",
                "web",
                "--version",
                "1.1.0",
                "--initial-traffic",
                "10",
                "--increment",
                "30",
                "--interval",
                "2s",
            ]
        );
    }

    #[test]
    fn yaml_has_every_field() {
        let cfg = AgentConfig {
            interfaces: vec!["eth-client".into(), "eth-blue".into()],
            attach: None,
            admin_listen: "127.0.0.1:9100".into(),
            token: "lab-test-token-0123".into(),
            webhook: None,
            notifications: Vec::new(),
            limits: vec![("max_vips".into(), 4), ("conn_table_entries".into(), 512)],
            tenants: vec![Tenant {
                name: "web".into(),
                listen: "[2001:2::10]:80".parse().unwrap(),
                protocol: Protocol::Udp,
                mode: Mode::Dsr,
                strategy: Strategy::Canary,
                services: vec![Service {
                    name: "blue".into(),
                    address: "198.18.11.2:8080".parse().unwrap(),
                    weight: 90,
                    environment: "blue".into(),
                    version: "1.0.0".into(),
                    health: None,
                }],
                canary: None,
                active_environment: None,
                switch: None,
                ring_size: Some(1009),
            }],
        };
        let y = cfg.to_yaml();
        for want in [
            "limits:\n  max_vips: 4\n  conn_table_entries: 512\n",
            "    ring_size: 1009",
            "interfaces: [\"eth-client\", \"eth-blue\"]",
            "  listen: \"127.0.0.1:9100\"",
            "    listen: \"[2001:2::10]:80\"",
            "    protocol: udp",
            "    mode: dsr",
            "        address: \"198.18.11.2:8080\"",
            "        weight: 90",
            "        labels: { version: \"1.0.0\" }",
        ] {
            assert!(y.contains(want), "{want:?} missing from:\n{y}");
        }
    }

    /// The deployment blocks come out in the agent's format and the agent accepts them.
    #[test]
    fn deployment_blocks_are_what_the_agent_reads() {
        let svc = |name: &str, ip: &str, version: &str| Service {
            name: name.into(),
            address: SocketAddr::new(ip.parse().unwrap(), 8080),
            weight: 1,
            environment: name.into(),
            version: version.into(),
            health: None,
        };
        let tenant = |name: &str, listen: &str, blue: &str, green: &str| Tenant {
            name: name.into(),
            listen: listen.parse().unwrap(),
            protocol: Protocol::Tcp,
            mode: Mode::Nat,
            strategy: Strategy::Canary,
            services: vec![svc("blue", blue, "1.0.0"), svc("green", green, "1.1.0")],
            canary: None,
            active_environment: None,
            switch: None,
            ring_size: None,
        };
        let cfg = AgentConfig {
            interfaces: vec!["eth-client".into()],
            attach: None,
            admin_listen: "127.0.0.1:9100".into(),
            token: "lab-test-token-0123".into(),
            limits: Vec::new(),
            webhook: Some(WebhookConfig {
                secret: "0123456789abcdef-lab".into(),
                tolerance: "5m".into(),
            }),
            notifications: vec![NotificationTarget {
                url: "http://127.0.0.1:9/events".into(),
                secret: "lab-notification-secret".into(),
            }],
            tenants: vec![
                tenant("web", "198.18.0.10:80", "198.18.11.2", "198.18.12.2")
                    .with_health(HealthCheck::fast_http())
                    .with_canary(CanaryConfig(StepParams {
                        max_traffic: Some(70.0),
                        ..CanaryConfig::ten_plus_thirty("2s").0
                    })),
                tenant(
                    "shop",
                    "[2001:2::10]:80",
                    "2001:2:0:11::2",
                    "2001:2:0:12::2",
                )
                .blue_green("blue", SwitchConfig::instant()),
                tenant("api", "198.18.0.11:80", "198.18.11.3", "198.18.12.3")
                    .blue_green("blue", SwitchConfig::seed_gradual("2s", 25.0)),
            ],
        };
        let y = cfg.to_yaml();
        for want in [
            "webhook:\n  secret: \"0123456789abcdef-lab\"\n  tolerance: \"5m\"",
            "notifications:\n  - url: \"http://127.0.0.1:9/events\"\n    secret: \"lab-notification-secret\"",
            "    canary_config:\n      initial_traffic: 10\n      increment: 30\n      interval: \"2s\"\n      max_traffic: 70",
            "    deployment_strategy: blue_green",
            "    active_environment: \"blue\"",
            "      strategy: \"instant\"",
            "      validation_endpoint: \"/health\"\n      switch_strategy: \"gradual\"\n      interval: \"2s\"\n      increment: 25",
            "        health: { path: \"/\", interval: \"200ms\", timeout: \"500ms\", success_threshold: 1, failure_threshold: 2 }",
        ] {
            assert!(y.contains(want), "{want:?} missing from:\n{y}");
        }
        let loaded =
            keystone_agent::config::LoadedConfig::parse(std::path::Path::new("lab.yaml"), &y)
                .unwrap_or_else(|e| panic!("the agent refuses the lab's config: {e}\n{y}"));
        assert!(
            loaded.warnings.is_empty(),
            "the agent warns about the lab's config: {:?}",
            loaded.warnings
        );
        assert_eq!(loaded.tenants.len(), 3);
    }
}
