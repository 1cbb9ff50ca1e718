//! BIRD in the fleet lab: the router's and the gateways' configs rendered from
//! `examples/bird/` (the files the README documents), the daemons, and what the
//! router's routing tables say.

use std::net::IpAddr;

use super::{
    Announce, CLIENT_NET4, CLIENT_NET6, Fleet, GATEWAY_BRIDGE, RETURN_TABLE, UPLINK, gateway_back4,
    gateway_back6, gateway4, gateway6,
};
use crate::lab::*;
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{AgentConfig, Tenant};
use crate::{
    bins::Bins,
    cmd::{self, in_ns},
    error::{LabError, Result, io_err},
    wait::{Probe, wait_for},
};

/// The documented gateway config: gateway 1 of a 3-gateway fleet lab.
pub const GATEWAY_CONF: &str = include_str!("../../../examples/bird/gateway.conf");
/// The documented router config, for 3 gateways.
pub const ROUTER_CONF: &str = include_str!("../../../examples/bird/router.conf");
/// The routes file path [`GATEWAY_CONF`] includes.
const DOC_ROUTES_FILE: &str = "/run/keystone/bird-routes.conf";
/// Lines of [`ROUTER_CONF`] that exist once per gateway end in this, then the number.
const PER_GATEWAY: &str = "# gateway ";

/// BIRD's process name in every lab of a fleet.
pub const BIRD: &str = "bird";
const BIRD_PROGRAM: &str = "/usr/sbin/bird";
const BIRDC_PROGRAM: &str = "/usr/sbin/birdc";
/// How long BIRD gets to answer on its control socket.
const BIRD_READY: Duration = Duration::from_secs(10);

/// Gateway `i`'s BIRD config: [`GATEWAY_CONF`] with gateway `i`'s addresses and
/// `routes_file` included.
pub fn gateway_conf(i: usize, routes_file: &Path) -> String {
    GATEWAY_CONF
        .replace(&gateway4(1).to_string(), &gateway4(i).to_string())
        .replace(&gateway6(1).to_string(), &gateway6(i).to_string())
        .replace(DOC_ROUTES_FILE, &routes_file.display().to_string())
}

/// The router's BIRD config for `n` gateways: [`ROUTER_CONF`] with each run of
/// per-gateway lines (ending `# gateway <number>`) rendered again for every gateway
/// from its gateway-1 lines.
pub fn router_conf(n: usize) -> String {
    let mut out = String::new();
    let mut templates: Vec<&str> = Vec::new();
    let flush = |templates: &mut Vec<&str>, out: &mut String| {
        for i in 1..=n {
            for line in templates.iter() {
                out.push_str(&for_gateway(line, i));
                out.push('\n');
            }
        }
        templates.clear();
    };
    for line in ROUTER_CONF.lines() {
        match gateway_tag(line) {
            Some(1) => templates.push(line),
            Some(_) => {}
            None => {
                flush(&mut templates, &mut out);
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    flush(&mut templates, &mut out);
    out
}

/// The gateway number a line of [`ROUTER_CONF`] is for, if it is a per-gateway line.
fn gateway_tag(line: &str) -> Option<usize> {
    let (_, n) = line.rsplit_once(PER_GATEWAY)?;
    n.parse().ok()
}

/// A gateway-1 line of [`ROUTER_CONF`] for gateway `i`.
fn for_gateway(line: &str, i: usize) -> String {
    line.replace(&gateway4(1).to_string(), &gateway4(i).to_string())
        .replace(&gateway6(1).to_string(), &gateway6(i).to_string())
        .replace(&gateway_back4(1).to_string(), &gateway_back4(i).to_string())
        .replace(&gateway_back6(1).to_string(), &gateway_back6(i).to_string())
        .replace("gw1v", &format!("gw{i}v"))
        .replace(&format!("{PER_GATEWAY}1"), &format!("{PER_GATEWAY}{i}"))
}

/// The routes file of the contract with keystone-agent: both static protocols, one
/// blackhole route per VIP in `vips`.
pub fn routes_file_text(vips: &[IpAddr]) -> String {
    let routes = |v6: bool| -> String {
        vips.iter()
            .filter(|v| v.is_ipv6() == v6)
            .map(|v| format!(" route {v}/{} blackhole;", if v6 { 128 } else { 32 }))
            .collect()
    };
    format!(
        "protocol static keystone4 {{ ipv4;{} }}\nprotocol static keystone6 {{ ipv6;{} }}\n",
        routes(false),
        routes(true)
    )
}

impl Lab {
    /// This lab's BIRD control socket.
    pub fn bird_socket(&self) -> PathBuf {
        self.state_dir().join("bird.ctl")
    }

    /// The routes file this lab's BIRD includes (a gateway's `bgp.routes_file`).
    pub fn bird_routes_file(&self) -> PathBuf {
        self.state_dir().join("bird-routes.conf")
    }

    /// `birdc -s <socket> <args>` in this lab's BIRD namespace; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let socket = self.bird_socket();
        let mut c = in_ns(self.gateway_ns(), Bins::require(Path::new(BIRDC_PROGRAM))?);
        c.arg("-s").arg(&socket).args(args);
        cmd::run(&mut c)
    }

    /// Writes `conf` and starts BIRD in the lab's gateway namespace on it; waits
    /// until it answers on its control socket.
    pub fn start_bird(&mut self, conf: &str) -> Result<()> {
        let path = self.state_dir().join("bird.conf");
        fs::write(&path, conf).map_err(io_err(format!("writing {}", path.display())))?;
        let (ns, socket) = (self.gateway_ns().to_owned(), self.bird_socket());
        self.spawn(
            BIRD,
            &ns,
            Path::new(BIRD_PROGRAM),
            &[
                "-f".as_ref(),
                "-c".as_ref(),
                path.as_os_str(),
                "-s".as_ref(),
                socket.as_os_str(),
            ],
        )?;
        wait_for("BIRD to answer on its control socket", BIRD_READY, || {
            self.ensure_running(BIRD)?;
            Ok(match self.birdc(&["show", "status"]) {
                Ok(out) if out.contains("Daemon is up and running") => Probe::Ready(()),
                Ok(out) => Probe::NotYet(out),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })
    }

    /// Writes the routes file by hand with `vips` and reconfigures BIRD (what the
    /// agent does with `bgp:`), for checking the lab without the agent.
    pub fn announce_by_hand(&self, vips: &[IpAddr]) -> Result<()> {
        let path = self.bird_routes_file();
        fs::write(&path, routes_file_text(vips))
            .map_err(io_err(format!("writing {}", path.display())))?;
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(LabError::Command {
                cmd: "birdc configure".into(),
                status: "refused".into(),
                stderr: out,
            })
        }
    }

    /// `(name, state, info)` of every protocol of this lab's BIRD (`show protocols`).
    pub fn bird_protocols(&self) -> Result<Vec<(String, String, String)>> {
        let out = self.birdc(&["show", "protocols"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // name proto table state since [since time] info…
                (f.len() >= 5 && (f[3] == "up" || f[3] == "down" || f[3] == "start"))
                    .then(|| (f[0].to_owned(), f[3].to_owned(), f[5..].join(" ")))
            })
            .collect())
    }
}

impl Fleet {
    /// Starts BIRD on the router and on every gateway (with an empty routes file).
    pub(super) fn start_birds(&mut self) -> Result<()> {
        let n = self.gateways().len();
        self.base_mut().start_bird(&router_conf(n))?;
        for i in 1..=n {
            self.start_gateway_bird(i)?;
        }
        Ok(())
    }

    /// Brings killed gateway `i` back ([`Fleet::kill_gateway`]): its links up and its
    /// BIRD started (with an empty routes file), peering again and every BFD session
    /// to it up ([`Fleet::wait_bfd_up`]); its agent is the caller's to start.
    pub fn revive_gateway(&mut self, i: usize) -> Result<()> {
        self.gateway_links_up(i)?;
        self.start_gateway_bird(i)?;
        let timeout = Duration::from_secs(60);
        self.wait_sessions(&[i], timeout)?;
        self.wait_bfd_up(i, timeout)
    }

    fn start_gateway_bird(&mut self, i: usize) -> Result<()> {
        let gw = self.gateway_mut(i);
        let routes = gw.bird_routes_file();
        fs::write(&routes, routes_file_text(&[]))
            .map_err(io_err(format!("writing {}", routes.display())))?;
        gw.start_bird(&gateway_conf(i, &routes))
    }

    /// Waits until the router's BGP sessions to the `gateways` (1-based) are established.
    pub fn wait_sessions(&self, gateways: &[usize], timeout: Duration) -> Result<()> {
        wait_for("the router's BGP sessions to the gateways", timeout, || {
            let protocols = self.base().bird_protocols()?;
            let down: Vec<String> = gateways
                .iter()
                .flat_map(|i| [format!("gw{i}v4"), format!("gw{i}v6")])
                .filter(|name| {
                    !protocols
                        .iter()
                        .any(|(n, _, info)| n == name && info.starts_with("Established"))
                })
                .collect();
            Ok(if down.is_empty() {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("not established: {down:?}; {protocols:?}"))
            })
        })
    }

    /// Gateway `i`'s agent config: both its links, `tenants`, and (when the agent
    /// announces) the `bgp:` block on its BIRD.
    pub fn agent_config_text(&self, i: usize, tenants: Vec<Tenant>) -> String {
        let gw = self.gateway(i);
        let cfg = AgentConfig {
            interfaces: vec![UPLINK.to_owned(), self.backend_side(i).to_owned()],
            ..gw.agent_config(tenants)
        };
        match self.announce {
            Announce::ByHand => cfg.to_yaml(),
            Announce::Agent => format!(
                "{}bgp:\n  control_socket: \"{}\"\n  routes_file: \"{}\"\n  drain_timeout: 10s\n",
                cfg.to_yaml(),
                gw.bird_socket().display(),
                gw.bird_routes_file().display()
            ),
        }
    }

    /// Starts gateway `i`'s agent on `config` (see [`Fleet::agent_config_text`]) with
    /// `extra` arguments; waits until it answers `/health`.
    pub fn start_agent(&mut self, i: usize, config: &str, extra: &[&str]) -> Result<()> {
        let gw = self.gateway_mut(i);
        gw.write_config_text(config)?;
        gw.start_agent_with(extra)
    }

    /// The gateways (by their address on the router's segment) the router's kernel
    /// sends `to` to: the next hops of its route in `table`.
    pub fn next_hops(&self, table: &str, to: &str) -> Result<Vec<IpAddr>> {
        let family = if to.contains(':') { "-6" } else { "-4" };
        let out = self.router_routes(&[family, "-j"], table, &["exact", to])?;
        let routes: serde_json::Value =
            serde_json::from_str(&out).map_err(|source| LabError::Parse {
                what: format!("ip route show table {table} exact {to}"),
                output: out.clone(),
                source,
            })?;
        let hops = routes
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| match r.get("nexthops").and_then(|n| n.as_array()) {
                Some(list) => list.iter().filter_map(|h| h.get("gateway")).collect(),
                None => r.get("gateway").into_iter().collect::<Vec<_>>(),
            })
            .filter_map(|g| g.as_str()?.parse().ok());
        Ok(sorted(hops))
    }

    /// The gateways the router sends `vip` to (its main table's route).
    pub fn vip_next_hops(&self, vip: IpAddr) -> Result<Vec<IpAddr>> {
        let len = if vip.is_ipv6() { 128 } else { 32 };
        self.next_hops("main", &format!("{vip}/{len}"))
    }

    /// The `gateways`' client-side addresses in the family of `like`, sorted (the
    /// next hops of a VIP).
    pub fn gateway_addrs(gateways: &[usize], like: IpAddr) -> Vec<IpAddr> {
        sorted(gateways.iter().map(|&i| match like {
            IpAddr::V4(_) => gateway4(i).into(),
            IpAddr::V6(_) => gateway6(i).into(),
        }))
    }

    /// The `gateways`' backend-side addresses in the family of `like`, sorted (the
    /// next hops of the return path).
    pub fn gateway_back_addrs(gateways: &[usize], like: IpAddr) -> Vec<IpAddr> {
        sorted(gateways.iter().map(|&i| match like {
            IpAddr::V4(_) => gateway_back4(i).into(),
            IpAddr::V6(_) => gateway_back6(i).into(),
        }))
    }

    /// Waits until the router sends `vip` to exactly `gateways` (1-based); returns
    /// when it saw that.
    pub fn wait_vip_next_hops(
        &self,
        vip: IpAddr,
        gateways: &[usize],
        timeout: Duration,
    ) -> Result<Instant> {
        let want = Fleet::gateway_addrs(gateways, vip);
        wait_for(
            &format!("the router to send {vip} to gateways {gateways:?}"),
            timeout,
            || {
                let hops = self.vip_next_hops(vip)?;
                Ok(if hops == want {
                    Probe::Ready(Instant::now())
                } else {
                    Probe::NotYet(format!("next hops {hops:?}"))
                })
            },
        )
    }

    /// Waits until the router's return path (table 100, both client networks) goes
    /// through every one of `gateways` (others may be there too: a gateway whose BIRD
    /// runs without an agent). Its BFD sessions are not BGP's, so a VIP can reach a
    /// gateway before the replies can come back through it.
    pub fn wait_return_path(&self, gateways: &[usize], timeout: Duration) -> Result<()> {
        wait_for(
            &format!("the router's return path to go through gateways {gateways:?}"),
            timeout,
            || {
                let mut missing = Vec::new();
                for (net, like) in [(CLIENT_NET4, VIP4.into()), (CLIENT_NET6, VIP6.into())] {
                    let hops = self.next_hops(RETURN_TABLE, net)?;
                    let want = Fleet::gateway_back_addrs(gateways, like);
                    if want.iter().any(|h| !hops.contains(h)) {
                        missing.push(format!("{net} via {hops:?}"));
                    }
                }
                Ok(if missing.is_empty() {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(missing.join(", "))
                })
            },
        )
    }

    /// `ip <options> route show table <table> <selector>` in the router's namespace.
    fn router_routes(&self, options: &[&str], table: &str, selector: &[&str]) -> Result<String> {
        cmd::run(
            Command::new("ip")
                .args(options)
                .args(["-n", self.router_ns(), "route", "show", "table", table])
                .args(selector),
        )
    }

    /// The router's BFD sessions (`show bfd sessions`): each neighbour's address and
    /// state.
    pub fn router_bfd_sessions(&self) -> Result<Vec<(String, String)>> {
        let out = self.base().birdc(&["show", "bfd", "sessions"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[0].parse::<IpAddr>().is_ok())
                    .then(|| (f[0].to_owned(), f[2].to_owned()))
            })
            .collect())
    }

    /// Waits until the router's BIRD reports its BFD session to gateway `i`'s
    /// client-side address as not up (`show bfd sessions`); returns when it saw that.
    pub fn wait_bfd_down(&self, i: usize, timeout: Duration) -> Result<Instant> {
        let addr = gateway4(i).to_string();
        wait_for(
            &format!("the router's BFD session to {addr} to go down"),
            timeout,
            || {
                let sessions = self.router_bfd_sessions()?;
                Ok(match sessions.iter().find(|(a, _)| *a == addr) {
                    Some((_, s)) if s != "Up" => Probe::Ready(Instant::now()),
                    _ => Probe::NotYet(format!("{sessions:?}")),
                })
            },
        )
    }

    /// Waits until every BFD session the router has to gateway `i` is up: BGP's on
    /// the client side and the return routes' on the backend side (both families).
    /// Before that, BIRD has nothing to tell BGP or the return route when the gateway
    /// dies (a session that never came up cannot go down), and the router keeps
    /// sending it traffic until BGP's hold timer runs out.
    pub fn wait_bfd_up(&self, i: usize, timeout: Duration) -> Result<()> {
        let want = [
            gateway4(i).to_string(),
            gateway6(i).to_string(),
            gateway_back4(i).to_string(),
            gateway_back6(i).to_string(),
        ];
        wait_for(
            &format!("the router's BFD sessions to gateway {i} to be up"),
            timeout,
            || {
                let sessions = self.router_bfd_sessions()?;
                let up = |addr: &String| sessions.iter().any(|(a, s)| a == addr && s == "Up");
                Ok(if want.iter().all(up) {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("want {want:?} up; {sessions:?}"))
                })
            },
        )
    }

    /// The router's BIRD protocols, BFD sessions and both routing tables.
    pub fn router_view(&self) -> String {
        let mut s = String::from("--- router:\n");
        for args in [&["show", "protocols"][..], &["show", "bfd", "sessions"]] {
            s.push_str(&self.base().birdc(args).unwrap_or_else(|e| e.to_string()));
        }
        for args in [
            &["neigh", "show", "dev", GATEWAY_BRIDGE][..],
            &["-s", "link", "show"],
        ] {
            let out = cmd::run(Command::new("ip").args(["-n", self.router_ns()]).args(args));
            s.push_str(&format!(
                "ip {}:\n{}\n",
                args.join(" "),
                out.unwrap_or_else(|e| e.to_string())
            ));
        }
        for table in ["main", RETURN_TABLE] {
            for family in ["-4", "-6"] {
                let out = self.router_routes(&[family], table, &[]);
                s.push_str(&format!(
                    "ip {family} route table {table}:\n{}\n",
                    out.unwrap_or_else(|e| e.to_string())
                ));
            }
        }
        s
    }
}

fn sorted(addrs: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = addrs.collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_renders_the_documented_configs() {
        assert_eq!(
            router_conf(3),
            ROUTER_CONF,
            "3 gateways: the file as documented"
        );
        let two = router_conf(2);
        assert!(two.contains("gw2v6") && !two.contains("gw3v4") && !two.contains("198.18.2.13"));
        let routes = Path::new(DOC_ROUTES_FILE);
        assert_eq!(gateway_conf(1, routes), GATEWAY_CONF);
        let g3 = gateway_conf(3, Path::new("/x/routes.conf"));
        assert!(g3.contains("router id 198.18.2.13;") && g3.contains("local 2001:2:0:2::13;"));
        assert!(g3.contains("include \"/x/routes.conf\";"));
        assert!(!g3.contains("198.18.2.11"));
    }

    #[test]
    fn the_readme_shows_the_example_files_as_they_are() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(GATEWAY_CONF) && readme.contains(ROUTER_CONF),
            "README's \"Running a fleet\" shows examples/bird/gateway.conf and router.conf verbatim"
        );
    }

    #[test]
    fn routes_file_holds_both_protocols() {
        assert_eq!(
            routes_file_text(&[]),
            "protocol static keystone4 { ipv4; }\nprotocol static keystone6 { ipv6; }\n"
        );
        let vips: Vec<IpAddr> = vec![
            "198.18.0.10".parse().unwrap(),
            "2001:2::10".parse().unwrap(),
        ];
        assert_eq!(
            routes_file_text(&vips),
            "protocol static keystone4 { ipv4; route 198.18.0.10/32 blackhole; }\n\
             protocol static keystone6 { ipv6; route 2001:2::10/128 blackhole; }\n"
        );
    }
}
