//! The fleet lab: a router running BIRD in front of several gateways, each running
//! BIRD and keystone-agent, the client and the backends behind the router.
//!
//! ```text
//!  client ns                router ns (BIRD: BGP + BFD to every gateway, ECMP)
//!  eth-gw 198.18.1.2 ────── eth-client 198.18.1.1
//!                           br-gw   198.18.2.1 ─┬─ eth-gw<i>   ── gateway ns <i>: eth-up   198.18.2.(10+i)
//!                           br-back 198.18.3.1 ─┴─ eth-back<i> ──                 eth-back 198.18.3.(10+i)
//!                           eth-<b> 198.18.(10+b).1 ──────────── backend ns: eth-gw 198.18.(10+b).2
//! ```
//! (IPv6 alike: `2001:2:0:<third octet>::<last octet>`.)
//!
//! A gateway takes client → VIP on `eth-up` and sends it, translated, out of
//! `eth-back` towards the backends (routed by the router); a backend's reply comes
//! back in on `eth-back` and leaves, translated, out of `eth-up`. Each segment is a
//! bridge on the router (like a switch), so a gateway that dies leaves the router's
//! links up: only BFD notices. (Two links, not one: XDP_TX out of the receiving veth
//! does not wake a peer that runs no XDP program, and the router's ring stalls.)
//!
//! The return path (nat mode): the router looks up what arrives on a backend link in
//! table 100, where the clients' networks go through every gateway whose BFD session
//! is up (`examples/bird/router.conf`); any gateway translates any reply, Keystone's
//! reverse NAT being stateless.
//!
//! Each gateway is a [`Lab`] of its own (its namespace, bpffs, agent and BIRD, its
//! state under `/run/keystone-lab/<fleet>-gw<i>`); the router, the client and the
//! backends are the fleet's base [`Lab`]. Dropping the fleet removes them all, the
//! gateways first.

use std::net::{Ipv4Addr, Ipv6Addr};

mod bird;
mod churn;
mod load;

pub use bird::{BIRD, GATEWAY_CONF, ROUTER_CONF, gateway_conf, router_conf, routes_file_text};
pub use churn::{Churn, Count, HeldFlow};
pub use load::{Hold, Load, LoadReport};

use crate::lab::topology::{client_link, ip_batch, rp_filter_off, sysctl, veth_for_xdp};
use crate::lab::*;
use std::process::Command;

use crate::{
    bins::Bins,
    cmd,
    error::{LabError, Result},
};

/// The router's address on the gateways' client-side segment (BGP, VIP traffic in).
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
/// The router's address on the gateways' backend-side segment.
pub const ROUTER_BACK4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
pub const ROUTER_BACK6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 3, 0, 0, 0, 1);
/// The client network, routed back through the gateways.
pub const CLIENT_NET4: &str = "198.18.1.0/24";
pub const CLIENT_NET6: &str = "2001:2:0:1::/64";
/// The routing table the router uses for what the backends send.
pub const RETURN_TABLE: &str = "100";
/// The gateways' client-side segment on the router.
pub const GATEWAY_BRIDGE: &str = "br-gw";
/// The gateways' backend-side segment on the router.
pub const BACK_BRIDGE: &str = "br-back";
/// A gateway's client-side interface.
pub const UPLINK: &str = "eth-up";
/// A gateway's backend-side interface.
pub const BACKLINK: &str = "eth-back";
/// The most gateways a fleet lab has (their addresses are 198.18.2.11 to .19).
pub const MAX_GATEWAYS: usize = 9;
/// The fleet's note listing its gateways' lab names (for `lab down`).
const GATEWAYS_NOTE: &str = "gateways";

/// Gateway `i`'s (1-based) address on the router's segment.
pub fn gateway4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i as u8)
}

/// Gateway `i`'s (1-based) IPv6 address: `2001:2:0:2::1<i>`.
pub fn gateway6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x10 + i as u16)
}

/// Gateway `i`'s address on the backend-side segment, where replies come in.
pub fn gateway_back4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, 10 + i as u8)
}

/// Gateway `i`'s IPv6 address on the backend-side segment: `2001:2:0:3::1<i>`.
pub fn gateway_back6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 3, 0, 0, 0, 0x10 + i as u16)
}

/// Builds a [`Fleet`].
#[derive(Clone, Debug)]
pub struct FleetBuilder {
    name: Option<String>,
    gateways: usize,
    backends: Vec<String>,
    detach: bool,
    bins: Option<Bins>,
    run: Option<String>,
    bridged: Vec<usize>,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self {
            name: None,
            gateways: 3,
            backends: vec!["blue".into(), "green".into()],
            detach: false,
            bins: None,
            run: std::env::var(RUN_ENV).ok().filter(|r| !r.is_empty()),
            bridged: Vec::new(),
        }
    }
}

impl FleetBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The fleet's name (its base lab's; gateway `i` is `<name>-gw<i>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many gateways (default 3, at most [`MAX_GATEWAYS`]).
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Backend names (default blue, green), as for [`LabBuilder::backends`].
    pub fn backends(mut self, names: &[&str]) -> Self {
        self.backends = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Gateways (1-based) whose backend side is a Linux bridge ([`BRIDGE`]) with
    /// `eth-back` as its port and the gateway's backend-side addresses on the bridge;
    /// their agents are given `eth-up` and the bridge.
    pub fn bridged(mut self, gateways: &[usize]) -> Self {
        self.bridged = gateways.to_vec();
        self
    }

    /// Processes outlive the caller (`lab up`).
    pub fn detach_processes(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }

    pub fn bins(mut self, bins: Bins) -> Self {
        self.bins = Some(bins);
        self
    }

    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Creates the namespaces, links, addresses, routes and rules, and starts BIRD on
    /// the router and every gateway (each gateway with an empty routes file). On
    /// error, whatever was created is removed again.
    pub fn build(self) -> Result<Fleet> {
        if self.gateways == 0 || self.gateways > MAX_GATEWAYS {
            return Err(LabError::BadName {
                name: self.gateways.to_string(),
                reason: "a fleet lab has 1 to 9 gateways",
            });
        }
        if let Some(i) = self.bridged.iter().find(|&&i| i == 0 || i > self.gateways) {
            return Err(LabError::BadName {
                name: i.to_string(),
                reason: "a bridged gateway is one of the fleet's (1-based)",
            });
        }
        if let Some(b) = self
            .backends
            .iter()
            .find(|b| *b == "router" || is_gateway_name(b))
        {
            return Err(LabError::BadName {
                name: b.clone(),
                reason: "a fleet's backends may not be called router or gw<n>",
            });
        }
        let (prefix, name) = checked_names(self.name, &self.backends)?;
        let bins = match self.bins {
            Some(b) => b,
            None => Bins::beside_current_exe()?,
        };
        let owner = Owner::current(self.run);
        let client_ns = format!("{prefix}-client");
        let backends: Vec<Backend> = self
            .backends
            .iter()
            .zip(1..)
            .map(|(b, i)| Backend::new(&prefix, b, i, false))
            .collect();
        let mut base = Lab::open(
            LabState {
                name: name.clone(),
                owner: Some(owner.clone()),
                client_ns: client_ns.clone(),
                gateway_ns: format!("{prefix}-router"),
                backends: backends.clone(),
                ..LabState::default()
            },
            bins.clone(),
            self.detach,
        )?;
        let gateway_names: Vec<String> = (1..=self.gateways)
            .map(|i| format!("{name}-gw{i}"))
            .collect();
        base.note(GATEWAYS_NOTE, gateway_names.join(","))?;
        let mut fleet = Fleet {
            gateways: Vec::new(),
            base,
            announce: Announce::Agent,
            bridged: self.bridged,
        };
        fleet.create_base()?;
        for (i, gw_name) in (1..).zip(gateway_names) {
            let lab = Lab::open(
                LabState {
                    name: gw_name,
                    owner: Some(owner.clone()),
                    client_ns: client_ns.clone(),
                    gateway_ns: format!("{prefix}-gw{i}"),
                    backends: backends.clone(),
                    ..LabState::default()
                },
                bins.clone(),
                self.detach,
            )?;
            fleet.gateways.push(lab);
            fleet.create_gateway(i)?;
        }
        fleet.start_birds()?;
        Ok(fleet)
    }
}

fn is_gateway_name(b: &str) -> bool {
    b.strip_prefix("gw")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// A running fleet lab; dropping it removes everything it created.
pub struct Fleet {
    // Dropped in this order: the gateways (agents, BIRD, bpffs, namespaces), then the
    // router, client and backends.
    gateways: Vec<Lab>,
    base: Lab,
    /// Who writes the gateways' routes files.
    pub(super) announce: Announce,
    /// Gateways whose backend side is a bridge ([`FleetBuilder::bridged`]).
    bridged: Vec<usize>,
}

/// Who announces a gateway's VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// The agent, with its `bgp:` block.
    Agent,
    /// The lab ([`Lab::announce_by_hand`]) once the agent (without `bgp:`) is ready:
    /// for what does not depend on who announces (a dead gateway, the return path).
    ByHand,
}

impl Fleet {
    pub fn name(&self) -> &str {
        self.base.name()
    }

    /// The router, the client and the backends: traffic from the client
    /// ([`Lab::tcp_connections`], [`Lab::client_loop`], …) and the backends'
    /// processes ([`Lab::start_backends`], …) go through it.
    pub fn base(&self) -> &Lab {
        &self.base
    }

    pub fn base_mut(&mut self) -> &mut Lab {
        &mut self.base
    }

    pub fn router_ns(&self) -> &str {
        self.base.gateway_ns()
    }

    /// The gateways, gateway 1 first.
    pub fn gateways(&self) -> &[Lab] {
        &self.gateways
    }

    /// Gateway `i` (1-based): its namespace, agent ([`Lab::start_agent_with`],
    /// [`Lab::admin_get`], [`Lab::ctl`], …) and BIRD.
    pub fn gateway(&self, i: usize) -> &Lab {
        &self.gateways[i - 1]
    }

    pub fn gateway_mut(&mut self, i: usize) -> &mut Lab {
        &mut self.gateways[i - 1]
    }

    /// Gateway `i`'s backend-side device: `eth-back`, or the bridge it is a port of.
    pub fn backend_side(&self, i: usize) -> &'static str {
        if self.bridged.contains(&i) {
            BRIDGE
        } else {
            BACKLINK
        }
    }

    /// Who announces the gateways' VIPs from now on (default: the agent).
    pub fn set_announce(&mut self, announce: Announce) {
        self.announce = announce;
    }

    /// Leaves everything running for `cargo xtask lab down --name <fleet>`.
    pub fn keep(self) -> Result<LabState> {
        let Fleet { gateways, base, .. } = self;
        for g in gateways {
            g.keep()?;
        }
        base.keep()
    }

    /// Lab `name`'s gateways' lab names, if it is a fleet.
    pub fn gateway_labs(name: &str) -> Vec<String> {
        Lab::read_state(name)
            .ok()
            .and_then(|s| s.notes.get(GATEWAYS_NOTE).cloned())
            .map(|g| g.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Tears down fleet `name` (its gateways, then its base), as [`Lab::down`].
    pub fn down(name: &str) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for g in Fleet::gateway_labs(name) {
            match Lab::down(&g) {
                Ok(d) => done.extend(d),
                Err(LabError::NoState { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        done.extend(Lab::down(name)?);
        Ok(done)
    }

    /// Gateway `i`'s links up and its routes (a link going down takes them): the
    /// clients through the client side, the backends through the backend side.
    pub(super) fn gateway_links_up(&mut self, i: usize) -> Result<()> {
        let mut batch = format!(
            "link set {UPLINK} up\n\
             link set {BACKLINK} up\n\
             link set {} up\n\
             route replace default via {ROUTER4}\n\
             route replace ::/0 via {ROUTER6}\n",
            self.backend_side(i)
        );
        for b in self.base.backends() {
            let [a, b4, c, _] = b.ipv4.octets();
            let s6 = b.ipv6.segments();
            batch.push_str(&format!(
                "route replace {}/24 via {ROUTER_BACK4}\nroute replace {}/64 via {ROUTER_BACK6}\n",
                Ipv4Addr::new(a, b4, c, 0),
                Ipv6Addr::new(s6[0], s6[1], s6[2], s6[3], 0, 0, 0, 0)
            ));
        }
        ip_batch(self.gateway(i).gateway_ns(), &batch)
    }

    /// Kills gateway `i` as a host dies: its links down first (so nothing it does
    /// next reaches anyone: no TCP FIN closes its BGP sessions), then SIGKILL to its
    /// agent and BIRD. The router's bridges stay up; only BFD tells.
    pub fn kill_gateway(&mut self, i: usize) -> Result<()> {
        let gw = self.gateway_mut(i);
        let ns = gw.gateway_ns().to_owned();
        ip_batch(
            &ns,
            &format!("link set {UPLINK} down\nlink set {BACKLINK} down\n"),
        )?;
        for p in [crate::agent::AGENT, BIRD] {
            if gw.pid_of(p).is_ok() {
                gw.kill(p)?;
            }
        }
        Ok(())
    }

    /// For failure messages: every lab's processes' output and the router's view.
    pub fn diagnostics(&self) -> String {
        let mut s = self.base.diagnostics();
        s.push_str(&self.router_view());
        for g in &self.gateways {
            s.push_str(&g.test_diagnostics());
        }
        s
    }

    /// Creates the router, client and backend namespaces and their links.
    fn create_base(&mut self) -> Result<()> {
        let (router, client) = (
            self.router_ns().to_owned(),
            self.base.client_ns().to_owned(),
        );
        let backends = self.base.backends().to_vec();
        let mut all = vec![router.clone(), client.clone()];
        all.extend(backends.iter().map(|b| b.ns.clone()));
        for ns in &all {
            self.base.add_namespace(ns)?;
        }
        let mut batch = format!(
            "link add eth-client type veth peer name eth-gw netns {client}\n\
             link add {GATEWAY_BRIDGE} type bridge\n\
             link add {BACK_BRIDGE} type bridge\n"
        );
        for b in &backends {
            batch.push_str(&format!(
                "link add {} type veth peer name eth-gw netns {}\n",
                b.gw_if, b.ns
            ));
        }
        ip_batch(&router, &batch)?;

        let mut router_sys = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            "net.ipv6.conf.all.forwarding=1".to_owned(),
            // ECMP on the five-tuple, so one client's connections spread too.
            "net.ipv4.fib_multipath_hash_policy=1".to_owned(),
            "net.ipv6.fib_multipath_hash_policy=1".to_owned(),
            "net.ipv4.conf.all.send_redirects=0".to_owned(),
        ];
        router_sys.extend(rp_filter_off(
            ["eth-client", GATEWAY_BRIDGE, BACK_BRIDGE]
                .into_iter()
                .chain(backends.iter().map(|b| b.gw_if.as_str())),
        ));
        sysctl(&router, &router_sys)?;
        for ns in std::iter::once(&client).chain(backends.iter().map(|b| &b.ns)) {
            sysctl(ns, &rp_filter_off(["eth-gw"]))?;
        }

        let mut batch = format!(
            "link set lo up\n\
             addr add {GW_CLIENT4}/24 dev eth-client\n\
             addr add {GW_CLIENT6}/64 dev eth-client nodad\n\
             link set eth-client up\n\
             addr add {ROUTER4}/24 dev {GATEWAY_BRIDGE}\n\
             addr add {ROUTER6}/64 dev {GATEWAY_BRIDGE} nodad\n\
             link set {GATEWAY_BRIDGE} up\n\
             addr add {ROUTER_BACK4}/24 dev {BACK_BRIDGE}\n\
             addr add {ROUTER_BACK6}/64 dev {BACK_BRIDGE} nodad\n\
             link set {BACK_BRIDGE} up\n"
        );
        for b in &backends {
            batch.push_str(&format!(
                "addr add {}/24 dev {if_}\naddr add {}/64 dev {if_} nodad\nlink set {if_} up\n\
                 rule add iif {if_} lookup {RETURN_TABLE}\n",
                b.gw_ipv4,
                b.gw_ipv6,
                if_ = b.gw_if
            ));
        }
        ip_batch(&router, &batch)?;
        let rules6: String = backends
            .iter()
            .map(|b| format!("rule add iif {} lookup {RETURN_TABLE}\n", b.gw_if))
            .collect();
        cmd::run_with_stdin(
            Command::new("ip").args(["-6", "-n", &router, "-batch", "-"]),
            &rules6,
        )?;
        ip_batch(
            &client,
            &format!(
                "{}route add default via {GW_CLIENT4}\nroute add ::/0 via {GW_CLIENT6}\n",
                client_link()
            ),
        )?;
        for b in &backends {
            ip_batch(
                &b.ns,
                &format!(
                    "link set lo up\n\
                     addr add {}/24 dev eth-gw\n\
                     addr add {}/64 dev eth-gw nodad\n\
                     link set eth-gw up\n\
                     route add default via {}\n\
                     route add ::/0 via {}\n",
                    b.ipv4, b.ipv6, b.gw_ipv4, b.gw_ipv6
                ),
            )?;
        }
        for ns in std::iter::once(&client).chain(backends.iter().map(|b| &b.ns)) {
            veth_for_xdp(ns, "eth-gw")?;
        }
        Ok(())
    }

    /// Creates gateway `i`'s namespace, its links into the router's two segments,
    /// their addresses and routes, and its bpffs.
    fn create_gateway(&mut self, i: usize) -> Result<()> {
        let router = self.router_ns().to_owned();
        let gw = self.gateway_mut(i);
        let ns = gw.gateway_ns().to_owned();
        gw.add_namespace(&ns)?;
        let ports = [
            (format!("eth-gw{i}"), UPLINK, GATEWAY_BRIDGE),
            (format!("eth-back{i}"), BACKLINK, BACK_BRIDGE),
        ];
        for (port, dev, bridge) in &ports {
            ip_batch(
                &router,
                &format!(
                    "link add {port} type veth peer name {dev} netns {ns}\n\
                     link set {port} master {bridge}\n\
                     link set {port} up\n"
                ),
            )?;
            // The router's ends take the gateway's XDP redirects only with GRO on.
            veth_for_xdp(&router, port)?;
        }
        let back = self.backend_side(i);
        if back == BRIDGE {
            ip_batch(
                &ns,
                &format!("link add {BRIDGE} type bridge\nlink set {BACKLINK} master {BRIDGE}\n"),
            )?;
        }
        let mut sys = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            "net.ipv6.conf.all.forwarding=1".to_owned(),
            // A killed gateway's links go down; it keeps its addresses to come back.
            "net.ipv6.conf.all.keep_addr_on_down=1".to_owned(),
        ];
        sys.extend(rp_filter_off([UPLINK, BACKLINK, back]));
        sysctl(&ns, &sys)?;
        ip_batch(
            &ns,
            &format!(
                "link set lo up\n\
                 addr add {}/24 dev {UPLINK}\n\
                 addr add {}/64 dev {UPLINK} nodad\n\
                 addr add {}/24 dev {back}\n\
                 addr add {}/64 dev {back} nodad\n",
                gateway4(i),
                gateway6(i),
                gateway_back4(i),
                gateway_back6(i)
            ),
        )?;
        self.gateway_links_up(i)?;
        let gw = self.gateway_mut(i);
        for dev in [UPLINK, BACKLINK] {
            veth_for_xdp(&ns, dev)?;
        }
        gw.mount_bpffs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_follow_the_plan() {
        assert_eq!(gateway4(1), Ipv4Addr::new(198, 18, 2, 11));
        assert_eq!(gateway6(1).to_string(), "2001:2:0:2::11");
        assert_eq!(gateway6(9).to_string(), "2001:2:0:2::19");
        assert_eq!(ROUTER6.to_string(), "2001:2:0:2::1");
        assert_eq!(gateway_back4(2), Ipv4Addr::new(198, 18, 3, 12));
        assert_eq!(gateway_back6(2).to_string(), "2001:2:0:3::12");
        assert!(is_gateway_name("gw2") && !is_gateway_name("gw") && !is_gateway_name("gwx"));
    }
}
