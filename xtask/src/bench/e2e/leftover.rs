//! What one case of `bench e2e` leaves for the next, measured in the lab's namespaces:
//! TCP sockets by state (TIME-WAIT above all: a client that opened tens of thousands
//! of connections keeps each for 60 s), the gateway's conntrack entries, and the
//! settings every case must share (the client's and the gateway's TCP sysctls, TX
//! offload on every sending link).

use std::collections::BTreeMap;

use anyhow::Result;
use keystone_lab::Lab;

/// The sysctls `prepare` sets in the client and the gateway for every case: only
/// locally opened connections use them (the client's; in the gateway only HAProxy's
/// to the backends), and they are what anyone benchmarking either would set.
pub const SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.ip_local_port_range", "1024 65535"),
];

/// One namespace's TCP sockets by state (`ss` names), listeners left out.
#[derive(Debug, Default, PartialEq)]
pub struct Sockets(BTreeMap<String, u64>);

impl Sockets {
    /// From `ss -Htan` lines: the state is the first column.
    pub fn parse(ss: &str) -> Sockets {
        let mut by_state = BTreeMap::new();
        for state in ss.lines().filter_map(|l| l.split_whitespace().next()) {
            if state != "LISTEN" {
                *by_state.entry(state.to_owned()).or_insert(0) += 1;
            }
        }
        Sockets(by_state)
    }

    pub fn time_wait(&self) -> u64 {
        self.0.get("TIME-WAIT").copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no TCP sockets");
        }
        let parts: Vec<String> = self.0.iter().map(|(s, n)| format!("{n} {s}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// The state of a lab between two cases.
pub struct Leftover {
    /// (namespace role, its sockets): client, gateway, each backend.
    sockets: Vec<(String, Sockets)>,
    /// Entries in the gateway's conntrack table (`None`: conntrack not loaded).
    conntrack: Option<u64>,
    /// Settings that differ from what every case must have, as "ns: what = value".
    drift: Vec<String>,
}

impl Leftover {
    pub fn measure(lab: &Lab) -> Result<Leftover> {
        let mut namespaces = vec![
            ("client".to_owned(), lab.client_ns().to_owned()),
            ("gateway".to_owned(), lab.gateway_ns().to_owned()),
        ];
        namespaces.extend(
            lab.backends()
                .iter()
                .map(|b| (b.name.clone(), b.ns.clone())),
        );
        let sockets = namespaces
            .iter()
            .map(|(role, ns)| {
                Ok((
                    role.clone(),
                    Sockets::parse(&lab.exec(ns, "ss", &["-Htan"])?),
                ))
            })
            .collect::<Result<_>>()?;
        let conntrack = lab
            .exec(
                lab.gateway_ns(),
                "cat",
                &["/proc/sys/net/netfilter/nf_conntrack_count"],
            )
            .ok()
            .and_then(|n| n.trim().parse().ok());
        let mut drift = Vec::new();
        for (role, ns) in &namespaces[..2] {
            for (name, want) in SYSCTLS {
                let have = lab.exec(ns, "sysctl", &["-n", name])?;
                let have = have.split_whitespace().collect::<Vec<_>>().join(" ");
                if have != want {
                    drift.push(format!("{role}: {name} = {have:?}"));
                }
            }
        }
        for (ns, dev) in sending_links(lab) {
            let features = lab.exec(&ns, "ethtool", &["-k", &dev])?;
            if let Some(on) = tx_offload_on(&features) {
                drift.push(format!("{ns} {dev}: {on} on"));
            }
        }
        Ok(Leftover {
            sockets,
            conntrack,
            drift,
        })
    }

    /// TIME-WAIT sockets in the client: what slows the next case's `connect()`s.
    pub fn client_time_wait(&self) -> u64 {
        self.sockets.first().map_or(0, |(_, s)| s.time_wait())
    }
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .map(|(r, s)| format!("{r}: {s}"))
            .collect();
        write!(f, "{}", sockets.join("; "))?;
        if let Some(n) = self.conntrack {
            write!(f, "; gateway conntrack: {n} entries")?;
        }
        if !self.drift.is_empty() {
            write!(f, "; settings off: {}", self.drift.join(", "))?;
        }
        Ok(())
    }
}

/// Every link a packet of the bench is sent from: the client's and each backend's
/// `eth-gw`, and the gateway's end of each and its bridge, if any (HAProxy's own
/// sockets send there).
pub fn sending_links(lab: &Lab) -> Vec<(String, String)> {
    let mut links = vec![(lab.client_ns().to_owned(), super::LINK.to_owned())];
    links.extend(
        lab.backends()
            .iter()
            .map(|b| (b.ns.clone(), super::LINK.to_owned())),
    );
    links.extend(
        lab.gateway_interfaces()
            .into_iter()
            .chain(lab.bridge().map(str::to_owned))
            .map(|dev| (lab.gateway_ns().to_owned(), dev)),
    );
    links
}

/// The first TX offload `ethtool -k` shows on (checksumming or segmentation), if any.
fn tx_offload_on(features: &str) -> Option<&'static str> {
    // `tx off` turns both off; ethtool's summary line for TSO can still say on.
    const TX: [&str; 2] = ["tx-checksumming", "tx-tcp-segmentation"];
    TX.into_iter().find(|name| {
        features
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{name}: on")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_counted_by_state_without_listeners() {
        let ss = "LISTEN 0 511 0.0.0.0:8080 0.0.0.0:*\n\
                  TIME-WAIT 0 0 198.18.1.2:40000 198.18.0.10:8080\n\
                  TIME-WAIT 0 0 198.18.1.2:40001 198.18.0.10:8080\n\
                  ESTAB 0 0 198.18.1.2:40002 198.18.0.10:8080\n";
        let s = Sockets::parse(ss);
        assert_eq!(s.time_wait(), 2);
        assert_eq!(s.to_string(), "1 ESTAB, 2 TIME-WAIT");
        assert_eq!(Sockets::parse("").to_string(), "no TCP sockets");
    }

    #[test]
    fn tx_offload_is_found_on_or_off() {
        let off = "Features for eth-gw:\ntx-checksumming: off\n\ttx-checksum-ip-generic: off\n\
                   tcp-segmentation-offload: on\n\ttx-tcp-segmentation: off [not requested]\n";
        assert_eq!(tx_offload_on(off), None);
        let on = "tx-checksumming: on\ntcp-segmentation-offload: on\n\ttx-tcp-segmentation: on\n";
        assert_eq!(tx_offload_on(on), Some("tx-checksumming"));
    }
}
