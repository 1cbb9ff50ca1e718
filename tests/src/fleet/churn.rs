//! Which way each held flow goes through a fleet, read from the kernels: the gateway
//! the router's ECMP route sends it to (`ip route get` with its ports) and the
//! backend that holds it (`ss` in the backends' namespaces). With that a test or the
//! bench can say which flows a change moved to another gateway and which broke.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    process::Command,
};

use std::time::Duration;

use super::load::{BACKEND_PORT, FLEET_VIP_PORT};
use super::{Fleet, gateway4};
use crate::cmd::{self, in_ns};
use crate::error::{LabError, Result};
use crate::lab::{CLIENT4, VIP4};
use crate::wait::{Probe, wait_for};

/// Longest a churn's hold runs.
const HOLD_TIME: Duration = Duration::from_secs(180);
/// Bound for reloads and the router to follow.
const FOLLOW: Duration = Duration::from_secs(30);

/// One held TCP flow of the client's to a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldFlow {
    /// The client's port (its address is [`CLIENT4`]).
    pub port: u16,
    /// The gateway (1-based) the router sends it to.
    pub gateway: usize,
    /// The backend (by name) that holds it.
    pub backend: String,
}

/// What changing the backend set and the gateway set at once did to each held flow
/// ([`Fleet::churn`]).
#[derive(Clone, Debug)]
pub struct Churn {
    /// Every held flow before: its gateway and backend.
    pub before: Vec<HeldFlow>,
    /// The backends left in the config.
    pub kept: Vec<String>,
    /// Each flow's gateway after the router withdrew the killed one (by port).
    pub gateway_after: BTreeMap<u16, usize>,
    /// Flows still established after, on the same backend (by port).
    pub survived: BTreeSet<u16>,
    /// The hold's own count: each broken connection's first failure.
    pub held_broken: Vec<String>,
}

/// Held flows of one kind, and how many of them broke.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub flows: usize,
    pub broken: usize,
}

impl Churn {
    /// The flow moved to another gateway (it reached one with no connection-table
    /// entry for it and was re-picked through the new table there).
    pub fn moved(&self, f: &HeldFlow) -> bool {
        self.gateway_after.get(&f.port) != Some(&f.gateway)
    }

    pub fn broken(&self, f: &HeldFlow) -> bool {
        !self.survived.contains(&f.port)
    }

    /// The flow's backend left the config.
    pub fn removed(&self, f: &HeldFlow) -> bool {
        !self.kept.contains(&f.backend)
    }

    /// The flows `which` selects, counted.
    pub fn count(&self, which: impl Fn(&HeldFlow) -> bool) -> Count {
        let flows: Vec<&HeldFlow> = self.before.iter().filter(|f| which(f)).collect();
        Count {
            flows: flows.len(),
            broken: flows.iter().filter(|f| self.broken(f)).count(),
        }
    }

    /// By cause: (kept backend, stayed), (kept backend, moved gateway), (removed backend).
    pub fn by_cause(&self) -> [(&'static str, Count); 3] {
        [
            (
                "kept backend, same gateway",
                self.count(|f| !self.removed(f) && !self.moved(f)),
            ),
            (
                "kept backend, moved gateway",
                self.count(|f| !self.removed(f) && self.moved(f)),
            ),
            ("removed backend", self.count(|f| self.removed(f))),
        ]
    }

    /// One line for logs and the bench.
    pub fn line(&self) -> String {
        let causes: Vec<String> = self
            .by_cause()
            .iter()
            .map(|(what, c)| format!("{what}: {} of {} broken", c.broken, c.flows))
            .collect();
        format!("{} held flows; {}", self.before.len(), causes.join("; "))
    }
}

impl Fleet {
    /// The backend set and the gateway set changing at once, under `held` echo
    /// connections to the standard fleet's VIP (every gateway running
    /// [`Fleet::web_config`] with `weights`): every gateway reloads with only
    /// `kept`'s backends, and as soon as each runs its new table gateway `kill` is
    /// killed hard. Reload first, then kill, is the worse order for moved flows: they
    /// reach the other gateways after the new table is live there.
    pub fn churn(
        &mut self,
        weights: &[(&str, u32)],
        kept: &[&str],
        kill: usize,
        held: u32,
    ) -> Result<Churn> {
        let vip = SocketAddr::new(VIP4.into(), FLEET_VIP_PORT);
        let hold = self.start_hold(vip, held, HOLD_TIME)?;
        let before = self.held_flows(vip, BACKEND_PORT)?;
        if before.len() != held as usize {
            return Err(unreadable(
                "ss: one established flow per held connection",
                &format!(
                    "{} of {held}: {before:?}; the client's ports {:?}, the backends' {:?}",
                    before.len(),
                    self.client_ports(vip),
                    self.backends_of_client_ports(BACKEND_PORT)
                ),
            ));
        }
        let after: Vec<(&str, u32)> = weights
            .iter()
            .filter(|(b, _)| kept.contains(b))
            .copied()
            .collect();
        let all: Vec<usize> = (1..=self.gateways().len()).collect();
        let old: Vec<_> = all
            .iter()
            .map(|&i| self.table_hashes(i))
            .collect::<Result<_>>()?;
        for &i in &all {
            let cfg = self.web_config(i, &after)?;
            let gw = self.gateway(i);
            gw.write_config_text(&cfg)?;
            gw.reload()?;
        }
        wait_for("every gateway to run its new table", FOLLOW, || {
            let now: Vec<_> = all
                .iter()
                .map(|&i| self.table_hashes(i))
                .collect::<Result<_>>()?;
            Ok(if now.iter().zip(&old).all(|(n, o)| n != o) {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("hashes {now:?}, before {old:?}"))
            })
        })?;
        self.kill_gateway(kill)?;
        let survivors: Vec<usize> = all.into_iter().filter(|&i| i != kill).collect();
        self.wait_vip_next_hops(VIP4.into(), &survivors, FOLLOW)?;
        hold.settle(self)?;
        // Still held by the same backend (a broken flow's port, if reused by its
        // reconnection, lands elsewhere).
        let survived = self
            .held_flows(vip, BACKEND_PORT)?
            .into_iter()
            .filter(|now| {
                before
                    .iter()
                    .any(|b| b.port == now.port && b.backend == now.backend)
            })
            .map(|f| f.port)
            .collect();
        let ports: Vec<u16> = before.iter().map(|f| f.port).collect();
        let gateway_after = ports
            .iter()
            .copied()
            .zip(self.gateways_of(vip, &ports)?)
            .collect();
        let held_broken = hold.finish(self)?;
        Ok(Churn {
            before,
            kept: kept.iter().map(|b| (*b).to_owned()).collect(),
            gateway_after,
            survived,
            held_broken,
        })
    }

    /// Gateway `i`'s `tenants[].table_hash` in `/status`: (tenant, hash) in its
    /// order, the hash None while the agent has written no table.
    pub fn table_hashes(&self, i: usize) -> Result<Vec<(String, Option<String>)>> {
        Ok(self
            .status(i)?
            .tenants
            .into_iter()
            .map(|t| (t.about.name, t.table_hash))
            .collect())
    }

    /// The client's established TCP flows to `vip` that a backend holds, with their
    /// gateway and backend; `backend_port` is the backends' port. Only meaningful
    /// while no other connections to `vip` come and go.
    pub fn held_flows(&self, vip: SocketAddr, backend_port: u16) -> Result<Vec<HeldFlow>> {
        let ports = self.client_ports(vip)?;
        let backends = self.backends_of_client_ports(backend_port)?;
        let ports: Vec<u16> = ports
            .into_iter()
            .filter(|p| backends.contains_key(p))
            .collect();
        let gateways = self.gateways_of(vip, &ports)?;
        Ok(ports
            .into_iter()
            .zip(gateways)
            .map(|(port, gateway)| HeldFlow {
                port,
                gateway,
                backend: backends[&port].clone(),
            })
            .collect())
    }

    /// The client's ports of its established TCP connections to `vip`.
    pub fn client_ports(&self, vip: SocketAddr) -> Result<BTreeSet<u16>> {
        let out = ss(self.base().client_ns(), &format!("dst {vip}"))?;
        Ok(ss_ports(&out, |local, _| Some(local.port())))
    }

    /// Client port → backend name, of every backend's established connections from
    /// the client on `backend_port`.
    fn backends_of_client_ports(&self, backend_port: u16) -> Result<BTreeMap<u16, String>> {
        let mut of = BTreeMap::new();
        for b in self.base().backends() {
            let out = ss(&b.ns, &format!("sport = :{backend_port}"))?;
            // The backends listen dual-stack: the client is `[::ffff:198.18.1.2]`.
            let from_client = |_: SocketAddr, peer: SocketAddr| {
                (peer.ip().to_canonical() == IpAddr::from(CLIENT4)).then_some(peer.port())
            };
            for port in ss_ports(&out, from_client) {
                of.insert(port, b.name.clone());
            }
        }
        Ok(of)
    }

    /// The gateway (1-based) the router sends the client's TCP flow from each of
    /// `ports` to `vip` to, as its kernel hashes the five-tuple.
    pub fn gateways_of(&self, vip: SocketAddr, ports: &[u16]) -> Result<Vec<usize>> {
        let batch: String = ports
            .iter()
            .map(|p| {
                format!(
                    "route get {} from {CLIENT4} iif eth-client ipproto tcp sport {p} dport {}\n",
                    vip.ip(),
                    vip.port()
                )
            })
            .collect();
        let out = cmd::run_with_stdin(
            Command::new("ip").args(["-o", "-n", self.router_ns(), "-batch", "-"]),
            &batch,
        )?;
        let n = self.gateways().len();
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != ports.len() {
            return Err(unreadable("ip route get", &out));
        }
        lines
            .iter()
            .map(|l| {
                let via = l.split_whitespace().skip_while(|w| *w != "via").nth(1);
                via.and_then(|v| (1..=n).find(|&i| gateway4(i).to_string() == v))
                    .ok_or_else(|| unreadable("ip route get (no gateway's via)", l))
            })
            .collect()
    }
}

/// `ss -Htn state established <filter>` in `ns`.
fn ss(ns: &str, filter: &str) -> Result<String> {
    let mut c = in_ns(ns, "ss");
    c.args(["-Htn", "state", "established"])
        .args(filter.split_whitespace());
    cmd::run(&mut c)
}

/// What `pick` takes of each `ss -Htn state established` line's (local, peer).
fn ss_ports(out: &str, pick: impl Fn(SocketAddr, SocketAddr) -> Option<u16>) -> BTreeSet<u16> {
    out.lines()
        .filter_map(|l| {
            // Recv-Q Send-Q Local Peer (the state column is left out with `state`).
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(2)?.parse().ok()?;
            let peer = f.get(3)?.parse().ok()?;
            pick(local, peer)
        })
        .collect()
}

fn unreadable(what: &str, out: &str) -> LabError {
    LabError::Command {
        cmd: what.to_owned(),
        status: "unreadable output".into(),
        stderr: out.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_give_their_ports() {
        let out = "0      0      198.18.11.2:8080   198.18.1.2:40312\n\
                   0      0      198.18.11.2:8080   198.18.3.11:51000\n";
        let client =
            |_: SocketAddr, p: SocketAddr| (p.ip() == IpAddr::from(CLIENT4)).then_some(p.port());
        assert_eq!(ss_ports(out, client), BTreeSet::from([40312]));
        assert_eq!(ss_ports(out, |l, _| Some(l.port())), BTreeSet::from([8080]));
    }
}
