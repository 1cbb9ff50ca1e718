//! Running keystone-agent in the gateway namespace and talking to it.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{ExitStatus, Output},
    time::Duration,
};

use crate::{
    bins::Bins,
    cmd::{self, in_ns},
    config::{AgentConfig, Protocol, Service, Tenant},
    error::{LabError, Result, io_err},
    lab::{Lab, Mode},
    wait::{Probe, wait_for},
};

/// The agent's admin address inside the gateway namespace.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// The lab's admin bearer token.
pub const ADMIN_TOKEN: &str = "lab-secret";
/// The agent's process name in the lab.
pub const AGENT: &str = "agent";
/// How long the agent gets to load XDP and answer `/health`.
const AGENT_READY: Duration = Duration::from_secs(60);

impl Lab {
    /// A tenant on `listen` with one service per named backend at
    /// `<backend address>:<backend_port>` (same address family as `listen`).
    pub fn tenant(
        &self,
        name: &str,
        listen: SocketAddr,
        protocol: Protocol,
        mode: Mode,
        backend_port: u16,
        weights: &[(&str, u32)],
    ) -> Result<Tenant> {
        let services = weights
            .iter()
            .map(|(b, weight)| {
                let b = self.backend(b)?;
                let ip = match listen.ip() {
                    IpAddr::V4(_) => IpAddr::V4(b.ipv4),
                    IpAddr::V6(_) => IpAddr::V6(b.ipv6),
                };
                Ok(Service {
                    name: b.name.clone(),
                    address: SocketAddr::new(ip, backend_port),
                    weight: *weight,
                    environment: b.name.clone(),
                    version: format!("1.{}.0", b.index - 1),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tenant {
            name: name.to_owned(),
            listen,
            protocol,
            mode,
            strategy: "canary".into(),
            services,
        })
    }

    /// A config with every gateway interface, the lab's admin address and token.
    pub fn agent_config(&self, tenants: Vec<Tenant>) -> AgentConfig {
        AgentConfig {
            interfaces: self.gateway_interfaces(),
            admin_listen: ADMIN_LISTEN.into(),
            token: ADMIN_TOKEN.into(),
            tenants,
        }
    }

    /// Where the agent's config lives.
    pub fn config_path(&self) -> PathBuf {
        self.state_dir().join("keystone.yaml")
    }

    /// Writes `cfg` to [`Lab::config_path`].
    pub fn write_config(&self, cfg: &AgentConfig) -> Result<PathBuf> {
        self.write_config_text(&cfg.to_yaml())
    }

    /// Writes `text` as the config, atomically (the agent never reads half a file).
    pub fn write_config_text(&self, text: &str) -> Result<PathBuf> {
        let path = self.config_path();
        let tmp = path.with_extension("yaml.tmp");
        fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// Starts keystone-agent in the gateway namespace on [`Lab::config_path`] with the
    /// lab's bpffs as pin dir and a state dir of the lab's own, and waits until
    /// `/health` answers.
    pub fn start_agent(&mut self) -> Result<()> {
        let agent = self.bins().agent.clone();
        Bins::require(&agent)?;
        let gw = self.gateway_ns().to_owned();
        let config = self.config_path();
        let pins = self.pin_dir();
        let agent_state = self.state_dir().join("agent-state");
        self.spawn(
            AGENT,
            &gw,
            &agent,
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "--pin-dir".as_ref(),
                pins.as_os_str(),
                "--state-dir".as_ref(),
                agent_state.as_os_str(),
            ],
        )?;
        self.note("config", config.display().to_string())?;
        self.note("admin", format!("http://{ADMIN_LISTEN}"))?;
        self.wait_agent_ready(AGENT_READY)
    }

    /// Polls `GET /health` until it answers 200, failing early if the agent exits.
    pub fn wait_agent_ready(&mut self, timeout: Duration) -> Result<()> {
        wait_for("keystone-agent to answer GET /health", timeout, || {
            self.ensure_running(AGENT)?;
            Ok(match self.admin_get("/health") {
                Ok((200, _)) => Probe::Ready(()),
                Ok((code, body)) => Probe::NotYet(format!("HTTP {code}: {body}")),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })
    }

    /// `GET http://ADMIN_LISTEN<path>` with the bearer token, from the gateway
    /// namespace (curl). Returns (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        self.admin_request("GET", path)
    }

    /// `method http://ADMIN_LISTEN<path>` with the bearer token. Returns (status, body).
    pub fn admin_request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let out = cmd::run(in_ns(self.gateway_ns(), "curl").args([
            "-sS",
            "-m",
            "5",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            "-w",
            "\n%{http_code}",
            &format!("http://{ADMIN_LISTEN}{path}"),
        ]))?;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        Ok((code, body.to_owned()))
    }

    /// Runs `keystone-ctl --api … --token … <args>` in the gateway namespace; returns
    /// its output whatever the exit status.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        let ctl = Bins::require(&self.bins().ctl)?.to_path_buf();
        cmd::output(
            in_ns(self.gateway_ns(), ctl)
                .args([
                    "--api",
                    &format!("http://{ADMIN_LISTEN}"),
                    "--token",
                    ADMIN_TOKEN,
                ])
                .args(args),
        )
    }

    /// `keystone-ctl reload`; an error (with ctl's output) when the agent refuses.
    pub fn reload(&self) -> Result<String> {
        let out = self.ctl(&["reload"])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(LabError::Command {
                cmd: "keystone-ctl reload".into(),
                status: out.status.to_string(),
                stderr: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    /// Stops the agent with SIGTERM (it detaches XDP and exits 0).
    pub fn stop_agent(&mut self) -> Result<Option<ExitStatus>> {
        self.stop(AGENT)
    }
}
