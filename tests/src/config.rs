//! The agent's YAML config, written from typed values (the lab writes configs; the
//! agent owns parsing and validation).

use std::{fmt::Write as _, net::SocketAddr};

use crate::lab::Mode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

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
}

/// One VIP with its backends.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub mode: Mode,
    pub strategy: String,
    pub services: Vec<Service>,
}

impl Tenant {
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
    pub admin_listen: String,
    pub token: String,
    pub tenants: Vec<Tenant>,
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
        let _ = writeln!(y, "admin:");
        let _ = writeln!(y, "  listen: {}", q(&self.admin_listen));
        let _ = writeln!(y, "  token: {}", q(&self.token));
        let _ = writeln!(y, "tenants:");
        for t in &self.tenants {
            let _ = writeln!(y, "  - name: {}", q(&t.name));
            let _ = writeln!(y, "    listen: {}", q(&t.listen.to_string()));
            let _ = writeln!(y, "    protocol: {}", t.protocol.as_str());
            let _ = writeln!(y, "    mode: {}", t.mode.as_str());
            let _ = writeln!(y, "    deployment_strategy: {}", t.strategy);
            let _ = writeln!(y, "    services:");
            for s in &t.services {
                let _ = writeln!(y, "      - name: {}", q(&s.name));
                let _ = writeln!(y, "        address: {}", q(&s.address.to_string()));
                let _ = writeln!(y, "        weight: {}", s.weight);
                let _ = writeln!(y, "        environment: {}", q(&s.environment));
                let _ = writeln!(y, "        labels: {{ version: {} }}", q(&s.version));
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_has_every_field() {
        let cfg = AgentConfig {
            interfaces: vec!["eth-client".into(), "eth-blue".into()],
            admin_listen: "127.0.0.1:9100".into(),
            token: "t".into(),
            tenants: vec![Tenant {
                name: "web".into(),
                listen: "[2001:2::10]:80".parse().unwrap(),
                protocol: Protocol::Udp,
                mode: Mode::Dsr,
                strategy: "canary".into(),
                services: vec![Service {
                    name: "blue".into(),
                    address: "198.18.11.2:8080".parse().unwrap(),
                    weight: 90,
                    environment: "blue".into(),
                    version: "1.0.0".into(),
                }],
            }],
        };
        let y = cfg.to_yaml();
        for want in [
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
}
