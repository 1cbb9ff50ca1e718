//! Running keystone-agent in the gateway namespace and talking to it.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{ExitStatus, Output},
    time::Duration,
};

use keystone_api::{DeploymentList, Health, Status, Strategy, TenantList};
use serde::de::DeserializeOwned;

use crate::{
    bins::Bins,
    cmd::{self, in_ns},
    config::{AgentConfig, Protocol, Service, Tenant},
    deploy::Deployment,
    error::{LabError, Result, io_err},
    lab::{Lab, Mode, tail},
    wait::{Probe, wait_for},
};

/// The agent's admin address inside the gateway namespace.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// The lab's admin bearer token.
pub const ADMIN_TOKEN: &str = "lab-admin-token-0123";
/// The agent's process name in the lab.
pub const AGENT: &str = "agent";
/// How long the agent gets to load XDP and answer `/health`.
const AGENT_READY: Duration = Duration::from_secs(60);

/// How a request to the admin API authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// The lab's token ([`ADMIN_TOKEN`]).
    Token,
    /// Another bearer token (a wrong one, in tests).
    Bearer(&'a str),
    /// No `Authorization` header.
    None,
}

/// A 2xx answer's JSON body as `T` (a keystone-api type), or an error with `what`, the
/// status and the body.
pub fn answer_as<T: DeserializeOwned>(what: &str, code: u16, body: &str) -> Result<T> {
    if !(200..300).contains(&code) {
        return Err(LabError::Http {
            what: what.to_owned(),
            status: code,
            body: body.to_owned(),
        });
    }
    body_as(what, body)
}

/// An admin API body as `T` whatever its status (an error answer as
/// [`keystone_api::ErrorBody`]).
pub fn body_as<T: DeserializeOwned>(what: &str, body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|source| LabError::Parse {
        what: what.to_owned(),
        output: body.to_owned(),
        source,
    })
}

/// The deployment id in the 202 answer to a start (API or webhook): its `deployment_id`.
pub fn deployment_id(body: &str) -> String {
    let accepted: keystone_api::Accepted =
        body_as("a start's answer", body).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !accepted.deployment_id.is_empty(),
        "no deployment id in {body}"
    );
    accepted.deployment_id
}

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
                    health: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tenant {
            name: name.to_owned(),
            listen,
            protocol,
            mode,
            strategy: Strategy::Canary,
            services,
            canary: None,
            active_environment: None,
            switch: None,
            ring_size: None,
        })
    }

    /// A config with every gateway interface, the lab's admin address and token.
    pub fn agent_config(&self, tenants: Vec<Tenant>) -> AgentConfig {
        AgentConfig {
            interfaces: self.gateway_interfaces(),
            attach: None,
            admin_listen: ADMIN_LISTEN.into(),
            token: ADMIN_TOKEN.into(),
            tenants,
            webhook: None,
            notifications: Vec::new(),
            limits: Vec::new(),
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

    /// The agent's `--state-dir` (deployments, last-good config, replay cache).
    pub fn agent_state_dir(&self) -> PathBuf {
        self.state_dir().join("agent-state")
    }

    /// Starts keystone-agent in the gateway namespace on [`Lab::config_path`] with the
    /// lab's bpffs as pin dir and a state dir of the lab's own, and waits until
    /// `/health` answers.
    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    /// The usual start of a lab with an agent: backends serving on `backend_port`,
    /// the gateway's neighbours known, then the agent (with `agent_args`) running
    /// the config `cfg` makes for this lab.
    pub fn start_with_config(
        &mut self,
        backend_port: u16,
        agent_args: &[&str],
        cfg: impl FnOnce(&Lab) -> Result<AgentConfig>,
    ) -> Result<()> {
        self.start_backends(backend_port)?;
        self.warm_neighbours()?;
        let cfg = cfg(self)?;
        self.write_config(&cfg)?;
        self.start_agent_with(agent_args)
    }

    /// [`Lab::start_agent`] with extra command-line arguments (e.g. `--keep-forwarding`).
    pub fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        self.start_agent_wrapped(&[], extra)
    }

    /// [`Lab::start_agent_with`], the agent run by a wrapper that execs it: `wrapper`
    /// is the wrapper's path and arguments (e.g. `/usr/bin/prlimit --nofile=1024:2048`),
    /// the agent's path and arguments follow them.
    pub fn start_agent_wrapped(&mut self, wrapper: &[&str], extra: &[&str]) -> Result<()> {
        let config = self.config_path();
        self.spawn_agent_wrapped(AGENT, &config, wrapper, extra)?;
        self.note("config", config.display().to_string())?;
        self.note("admin", format!("http://{ADMIN_LISTEN}"))?;
        self.wait_agent_ready(AGENT_READY)
    }

    /// Starts keystone-agent as the lab process `name` on `config`, with the lab's
    /// bpffs as pin dir, its state dir and `extra` arguments, without waiting for it.
    pub fn spawn_agent(&mut self, name: &str, config: &Path, extra: &[&str]) -> Result<u32> {
        self.spawn_agent_wrapped(name, config, &[], extra)
    }

    /// [`Lab::spawn_agent`] run by `wrapper` (see [`Lab::start_agent_wrapped`]).
    fn spawn_agent_wrapped(
        &mut self,
        name: &str,
        config: &Path,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<u32> {
        let agent = self.bins().agent.clone();
        Bins::require(&agent)?;
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, args)) => (PathBuf::from(program), args),
            None => (agent.clone(), &[][..]),
        };
        let agent_arg = (!wrapper.is_empty()).then_some(agent.as_os_str());
        let gw = self.gateway_ns().to_owned();
        let pins = self.pin_dir();
        let agent_state = self.agent_state_dir();
        self.spawn(
            name,
            &gw,
            &program,
            &wrapper_args
                .iter()
                .map(|a| a.as_ref())
                .chain(agent_arg)
                .chain([
                    "--config".as_ref(),
                    config.as_os_str(),
                    "--pin-dir".as_ref(),
                    pins.as_os_str(),
                    "--state-dir".as_ref(),
                    agent_state.as_os_str(),
                ])
                .chain(extra.iter().map(|a| a.as_ref()))
                .collect::<Vec<&std::ffi::OsStr>>(),
        )
    }

    /// The pid of the lab process `name`.
    pub fn pid_of(&self, name: &str) -> Result<u32> {
        self.state()
            .processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })
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

    /// [`Lab::admin_get`] of a 2xx answer, read as the keystone-api type `T`.
    pub fn admin_get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (code, body) = self.admin_get(path)?;
        answer_as(&format!("GET {path}"), code, &body)
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<Status> {
        self.admin_get_as("/status")
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<Health> {
        self.admin_get_as("/health")
    }

    /// `GET /tenants`.
    pub fn tenants(&self) -> Result<Vec<keystone_api::Tenant>> {
        self.admin_get_as::<TenantList>("/tenants")
            .map(|l| l.tenants)
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

    /// `method http://ADMIN_LISTEN<path>` from the gateway namespace (curl) with the
    /// given authentication, extra headers and body (sent as is, `Content-Type:
    /// application/json` unless a header says otherwise). Returns (status, body).
    pub fn admin_send(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, String)],
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        self.admin_send_to(ADMIN_LISTEN, method, path, auth, headers, body)
    }

    /// [`Lab::admin_send`] to the admin API at `admin` (another agent of the lab).
    pub fn admin_send_to(
        &self,
        admin: &str,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, String)],
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let mut c = in_ns(self.gateway_ns(), "curl");
        c.args(["-sS", "-m", "5", "-X", method, "-w", "\n%{http_code}"]);
        let bearer = match auth {
            Auth::Token => Some(ADMIN_TOKEN),
            Auth::Bearer(t) => Some(t),
            Auth::None => None,
        };
        if let Some(t) = bearer {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            c.args(["-H", "Content-Type: application/json"]);
        }
        for (k, v) in headers {
            c.arg("-H").arg(format!("{k}: {v}"));
        }
        let out = match body {
            Some(body) => {
                c.args(["--data-binary", "@-"]);
                c.arg(format!("http://{admin}{path}"));
                cmd::run_with_stdin(&mut c, body)?
            }
            None => {
                c.arg(format!("http://{admin}{path}"));
                cmd::run(&mut c)?
            }
        };
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }

    /// `GET /deployments/{id}`.
    pub fn deployment(&self, id: &str) -> Result<Deployment> {
        self.admin_get_as(&format!("/deployments/{id}"))
    }

    /// For failure messages about an agent: [`Lab::diagnostics`], then every
    /// deployment's history and `keystone-ctl tenants` (whatever of them answers).
    pub fn agent_diagnostics(&self) -> String {
        let mut s = self.diagnostics();
        if let Ok(list) = self.deployments() {
            for d in list {
                s.push_str(&format!(
                    "--- deployment {}\n{}\n",
                    d.summary(),
                    d.history_table()
                ));
            }
        }
        if let Ok(out) = self.ctl(&["tenants"]) {
            s.push_str(&format!(
                "--- keystone-ctl tenants:\n{}{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s
    }

    /// What a traffic test's failure message carries: processes' output,
    /// `keystone-ctl status` and the non-zero `keystone_*` metrics.
    pub fn traffic_diagnostics(&self) -> String {
        self.diagnostics() + &self.status_and_metrics()
    }

    /// What a lab test's failure message carries: [`Lab::agent_diagnostics`], then
    /// `keystone-ctl status` and the non-zero `keystone_*` metrics.
    pub fn test_diagnostics(&self) -> String {
        self.agent_diagnostics() + &self.status_and_metrics()
    }

    fn status_and_metrics(&self) -> String {
        let mut s = String::new();
        if let Ok(out) = self.ctl(&["status"]) {
            s.push_str(&format!(
                "--- keystone-ctl status:\n{}{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if let Ok((_, metrics)) = self.admin_get("/metrics") {
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("keystone_") && !l.ends_with(" 0"))
                .collect();
            s.push_str(&format!("--- non-zero metrics:\n{}\n", lines.join("\n")));
        }
        s
    }

    /// `GET /deployments` (newest first).
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        self.admin_get_as::<DeploymentList>("/deployments")
            .map(|l| l.deployments)
    }

    /// Polls `GET /deployments/{id}` until `done` holds for it; returns that view.
    /// Fails early if the agent exits.
    pub fn wait_deployment(
        &mut self,
        id: &str,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Deployment) -> bool,
    ) -> Result<Deployment> {
        wait_for(&format!("deployment {id}: {what}"), timeout, || {
            self.ensure_running(AGENT)?;
            let d = self.deployment(id)?;
            Ok(if done(&d) {
                Probe::Ready(d)
            } else {
                Probe::NotYet(d.summary())
            })
        })
    }

    /// Starts `keystone-ctl --api … --token … <args>` in the gateway namespace as the
    /// lab process `name` (e.g. a `wait` that runs while the test drives traffic);
    /// see [`Lab::exited`] and [`Lab::stdout_of`].
    pub fn spawn_ctl(&mut self, name: &str, args: &[&str]) -> Result<u32> {
        let ctl = self.bins().ctl.clone();
        let gw = self.gateway_ns().to_owned();
        let mut all = vec![
            "--api".to_owned(),
            format!("http://{ADMIN_LISTEN}"),
            "--token".to_owned(),
            ADMIN_TOKEN.to_owned(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        self.spawn(name, &gw, &ctl, &all)
    }

    /// Waits up to `timeout` for the lab process `name` to exit; returns its status.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        wait_for(&format!("{name} to exit"), timeout, || {
            Ok(match self.exited(name)? {
                Some(status) => Probe::Ready(status),
                None => Probe::NotYet(tail(&self.stdout_of(name).unwrap_or_default(), 3)),
            })
        })
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

/// Unwraps `r`, or panics with `what`, the error and the lab's test diagnostics
/// (processes, deployments, `keystone-ctl tenants` and `status`, non-zero metrics):
/// the lab tests' one way to fail.
pub fn ok<T, E: std::fmt::Display>(lab: &Lab, what: &str, r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", lab.test_diagnostics()))
}
