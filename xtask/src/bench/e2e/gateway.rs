//! Preparing the lab for `bench e2e`, and starting and stopping each case on a plain
//! gateway.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::{Context, Result, bail};
use keystone_lab::{
    Mode, Probe, Protocol, Tenant, VIP4,
    cmd::{self, in_ns},
    wait_for,
};

use super::{Bench, Case, LINK, NFT_TABLE, PORTS, READY, SINK_TABLE, configs, leftover};

impl Bench {
    /// Backends (nginx, iperf3 server, a sink for the generator's UDP), TCP settings
    /// for a client that opens tens of thousands of connections, TX offload off on
    /// every sending link, and warm neighbours.
    pub(super) fn prepare(&mut self) -> Result<()> {
        let sysctls: Vec<String> = leftover::SYSCTLS
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        for ns in [
            self.lab.client_ns().to_owned(),
            self.lab.gateway_ns().to_owned(),
        ] {
            let mut args = vec!["-qw"];
            args.extend(sysctls.iter().map(String::as_str));
            self.lab.exec(&ns, "sysctl", &args)?;
        }
        // The lab turns TX offload off where the client and the backends send; the
        // gateway's own sends (HAProxy's) get the same, so no peer segments in "hardware".
        for (ns, dev) in leftover::sending_links(&self.lab) {
            self.lab.exec(&ns, "ethtool", &["-K", &dev, "tx", "off"])?;
        }
        for b in self.lab.backends().to_vec() {
            let dir = self.lab.state_dir().join(format!("nginx-{}", b.name));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir_s = dir.to_str().context("the lab's state dir is not UTF-8")?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, configs::nginx_config(&b.name, dir_s, PORTS.http))
                .with_context(|| format!("writing {}", conf.display()))?;
            let nginx = self.programs.nginx.clone();
            self.lab.spawn(
                &format!("nginx-{}", b.name),
                &b.ns,
                &nginx,
                &[
                    "-e".as_ref(),
                    dir.join("error.log").as_os_str(),
                    "-p".as_ref(),
                    dir.as_os_str(),
                    "-c".as_ref(),
                    conf.as_os_str(),
                ],
            )?;
            let iperf3 = self.programs.iperf3.clone();
            self.lab.spawn(
                &format!("iperf3-{}", b.name),
                &b.ns,
                &iperf3,
                &["--server", "--port", &PORTS.iperf.to_string()],
            )?;
            self.nft(
                &b.ns,
                &configs::udp_sink_ruleset(SINK_TABLE, LINK, PORTS.udp),
            )?;
        }
        for b in self.lab.backends().to_vec() {
            let url = format!("http://{}:{}/", b.ipv4, PORTS.http);
            let gw = self.lab.gateway_ns().to_owned();
            let nginx = format!("nginx-{}", b.name);
            wait_for(&format!("nginx in {} to answer", b.ns), READY, || {
                self.lab.ensure_running(&nginx)?;
                Ok(match http_get(&gw, &url) {
                    Ok(body) if body == b.name => Probe::Ready(()),
                    Ok(body) => Probe::NotYet(format!("answered {body:?}")),
                    Err(e) => Probe::NotYet(e.to_string()),
                })
            })?;
            let iperf = format!("iperf3-{}", b.name);
            let filter = format!("sport = :{}", PORTS.iperf);
            wait_for(&format!("iperf3 in {} to listen", b.ns), READY, || {
                self.lab.ensure_running(&iperf)?;
                let out = self.lab.exec(&b.ns, "ss", &["-Hltn", &filter])?;
                Ok(if out.trim().is_empty() {
                    Probe::NotYet("not listening".into())
                } else {
                    Probe::Ready(())
                })
            })?;
        }
        self.lab.warm_neighbours()?;
        Ok(())
    }

    /// `nft -f -` with `ruleset` inside `ns`.
    fn nft(&self, ns: &str, ruleset: &str) -> Result<()> {
        cmd::run_with_stdin(in_ns(ns, &self.programs.nft).args(["-f", "-"]), ruleset)
            .with_context(|| format!("loading into nftables in {ns}:\n{ruleset}"))?;
        Ok(())
    }

    /// No XDP program, no nftables ruleset and no VIP address in the gateway: what
    /// every case starts from, so none is helped or hurt by the one before.
    pub(super) fn check_plain_gateway(&self) -> Result<()> {
        let gw = self.lab.gateway_ns();
        let xdp = self.xdp_interfaces()?;
        if !xdp.is_empty() {
            bail!(
                "an XDP program is still attached in the gateway on {}",
                xdp.join(", ")
            );
        }
        let rules = self
            .lab
            .exec(gw, &self.programs.nft, &["list", "ruleset"])?;
        if !rules.trim().is_empty() {
            bail!("the gateway still has nftables rules:\n{rules}");
        }
        let addrs = self.lab.exec(gw, "ip", &["-4", "-o", "addr", "show"])?;
        if addrs.contains(&format!(" {VIP4}/")) {
            bail!("the gateway still holds the VIP {VIP4}:\n{addrs}");
        }
        Ok(())
    }

    /// Gateway interfaces with an XDP program attached.
    fn xdp_interfaces(&self) -> Result<Vec<String>> {
        let out = cmd::run(std::process::Command::new("ip").args([
            "-j",
            "-n",
            self.lab.gateway_ns(),
            "link",
            "show",
        ]))?;
        let links: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("`ip -j link show`: {out}"))?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l.get("xdp").is_some())
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Where the client sends: the VIP, or for `direct` the first backend itself.
    pub(super) fn target(&self, case: Case) -> Ipv4Addr {
        match case {
            Case::Direct => self.pool[0].addr,
            _ => VIP4,
        }
    }

    /// The agent's tenants, from the same backend list as the peers' configs.
    fn tenants(&self, mode: Mode) -> Result<Vec<Tenant>> {
        let weights: Vec<(&str, u32)> = self
            .pool
            .iter()
            .map(|m| (m.name.as_str(), m.weight))
            .collect();
        let first = [(self.pool[0].name.as_str(), 1)];
        let vip = |port| SocketAddr::new(IpAddr::V4(VIP4), port);
        Ok(vec![
            self.lab.tenant(
                "http",
                vip(PORTS.http),
                Protocol::Tcp,
                mode,
                PORTS.http,
                &weights,
            )?,
            self.lab.tenant(
                "iperf",
                vip(PORTS.iperf),
                Protocol::Tcp,
                mode,
                PORTS.iperf,
                &first,
            )?,
            self.lab.tenant(
                "udp",
                vip(PORTS.udp),
                Protocol::Udp,
                mode,
                PORTS.udp,
                &weights,
            )?,
        ])
    }

    pub(super) fn start_case(&mut self, case: Case) -> Result<()> {
        let gw = self.lab.gateway_ns().to_owned();
        match case {
            Case::Direct => {}
            Case::Nat | Case::Dsr => {
                let mode = case.keystone_mode().expect("a Keystone case");
                let cfg = keystone_lab::AgentConfig {
                    attach: Some(self.hook.attach.to_owned()),
                    interfaces: self.keystone_interfaces(),
                    ..self.lab.agent_config(self.tenants(mode)?)
                };
                self.lab.write_config(&cfg)?;
                self.lab.start_agent()?;
                // (At tc the agent's start is the check: it refuses one it cannot attach.)
                if self.hook.attach != "tc" {
                    let want = self.keystone_interfaces();
                    let xdp = self.xdp_interfaces()?;
                    if let Some(missing) = want.iter().find(|i| !xdp.contains(i)) {
                        bail!("keystone-agent is up but {missing} has no XDP program");
                    }
                }
            }
            Case::Nftables => {
                let rules = configs::nft_ruleset(NFT_TABLE, VIP4, PORTS, &self.pool)?;
                self.nft(&gw, &rules)?;
            }
            Case::Haproxy => {
                self.lab.exec(
                    &gw,
                    "ip",
                    &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"],
                )?;
                let conf = self.lab.state_dir().join("haproxy.cfg");
                fs::write(&conf, configs::haproxy_config(VIP4, PORTS, &self.pool)?)
                    .with_context(|| format!("writing {}", conf.display()))?;
                let haproxy = self.programs.haproxy.clone();
                self.lab.exec(
                    &gw,
                    &haproxy,
                    &["-c".as_ref(), "-f".as_ref(), conf.as_os_str()],
                )?;
                self.lab.spawn(
                    "haproxy",
                    &gw,
                    &haproxy,
                    &["-db".as_ref(), "-f".as_ref(), conf.as_os_str()],
                )?;
            }
        }
        // The path works before anything is timed.
        let client = self.lab.client_ns().to_owned();
        let url = format!("http://{}:{}/", self.target(case), PORTS.http);
        let names: Vec<String> = self.pool.iter().map(|m| m.name.clone()).collect();
        wait_for(&format!("{url} to answer from the client"), READY, || {
            if case == Case::Haproxy {
                self.lab.ensure_running("haproxy")?;
            }
            Ok(match http_get(&client, &url) {
                Ok(body) if names.contains(&body) => Probe::Ready(()),
                Ok(body) => Probe::NotYet(format!("answered {body:?}")),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })?;
        Ok(())
    }

    pub(super) fn end_case(&mut self, case: Case) -> Result<()> {
        let gw = self.lab.gateway_ns().to_owned();
        match case {
            Case::Direct => {}
            Case::Nat | Case::Dsr => {
                self.lab.stop_agent()?;
                wait_for("the agent's XDP program to be detached", READY, || {
                    Ok(match self.xdp_interfaces() {
                        Ok(xdp) if xdp.is_empty() => Probe::Ready(()),
                        Ok(xdp) => Probe::NotYet(format!("attached on {}", xdp.join(", "))),
                        Err(e) => Probe::NotYet(format!("{e:#}")),
                    })
                })?;
            }
            Case::Nftables => {
                self.lab.exec(
                    &gw,
                    &self.programs.nft,
                    &["delete", "table", "ip", NFT_TABLE],
                )?;
            }
            Case::Haproxy => {
                self.lab.stop("haproxy")?;
                self.lab.exec(
                    &gw,
                    "ip",
                    &["addr", "del", &format!("{VIP4}/32"), "dev", "lo"],
                )?;
            }
        }
        Ok(())
    }
}

/// `curl` from `ns`; the body, trimmed.
fn http_get(ns: &str, url: &str) -> Result<String> {
    let out = cmd::run(in_ns(ns, "curl").args(["-sS", "-m", "2", url]))?;
    Ok(out.trim().to_owned())
}
