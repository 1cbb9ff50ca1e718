//! Creating the topology: namespaces, links, sysctls, addresses, routes, the
//! lab's bpffs, and the gateway's neighbour entries.

use super::*;

impl Lab {
    /// The gateway device that holds backend `b`'s neighbour entry: its link, or the
    /// bridge.
    fn neighbour_dev<'a>(&'a self, b: &'a Backend) -> &'a str {
        self.bridge().unwrap_or(&b.gw_if)
    }

    /// Creates network namespace `ns`, recorded for teardown.
    pub(crate) fn add_namespace(&mut self, ns: &str) -> Result<()> {
        cmd::run(Command::new("ip").args(["netns", "add", ns]))?;
        self.state.namespaces.push(ns.to_owned());
        self.save()
    }

    pub(super) fn create(&mut self) -> Result<()> {
        let (gw, client) = (self.state.gateway_ns.clone(), self.state.client_ns.clone());
        let backends = self.state.backends.clone();
        let dsr = self.state.mode == Mode::Dsr;

        let mut all = vec![gw.clone(), client.clone()];
        all.extend(backends.iter().map(|b| b.ns.clone()));
        for ns in &all {
            self.add_namespace(ns)?;
        }

        // Links: created in the gateway namespace, the peer placed into the other one.
        cmd::run(Command::new("ip").args([
            "-n",
            &gw,
            "link",
            "add",
            "eth-client",
            "type",
            "veth",
            "peer",
            "name",
            "eth-gw",
            "netns",
            &client,
        ]))?;
        for b in &backends {
            cmd::run(Command::new("ip").args([
                "-n", &gw, "link", "add", &b.gw_if, "type", "veth", "peer", "name", "eth-gw",
                "netns", &b.ns,
            ]))?;
        }
        let bridge = self.state.bridge.clone();
        if let Some(br) = &bridge {
            let mut batch = format!("link add {br} type bridge\n");
            for b in &backends {
                batch.push_str(&format!("link set {} master {br}\n", b.gw_if));
            }
            ip_batch(&gw, &batch)?;
        }

        // Sysctls: forwarding on the gateway, no reverse-path filtering anywhere,
        // and for DSR backends no ARP answers for the VIP held on lo.
        let mut gw_sys = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            "net.ipv6.conf.all.forwarding=1".to_owned(),
        ];
        gw_sys.extend(rp_filter_off(
            std::iter::once("eth-client")
                .chain(bridge.as_deref())
                .chain(backends.iter().map(|b| b.gw_if.as_str())),
        ));
        sysctl(&gw, &gw_sys)?;
        sysctl(&client, &rp_filter_off(["eth-gw"]))?;
        for b in &backends {
            let mut s = rp_filter_off(["eth-gw"]);
            if dsr {
                s.extend(
                    [
                        "net.ipv4.conf.all.arp_ignore=1",
                        "net.ipv4.conf.all.arp_announce=2",
                        "net.ipv4.conf.eth-gw.arp_ignore=1",
                        "net.ipv4.conf.eth-gw.arp_announce=2",
                    ]
                    .map(String::from),
                );
            }
            sysctl(&b.ns, &s)?;
        }

        // Addresses and links up, then routes (once every link has its carrier).
        let mut gw_batch = format!(
            "link set lo up\n\
             addr add {GW_CLIENT4}/24 dev eth-client\n\
             addr add {GW_CLIENT6}/64 dev eth-client nodad\n\
             link set eth-client up\n"
        );
        match (&bridge, backends.first()) {
            (Some(br), Some(first)) => {
                gw_batch.push_str(&format!(
                    "addr add {}/24 dev {br}\naddr add {}/64 dev {br} nodad\nlink set {br} up\n",
                    first.gw_ipv4, first.gw_ipv6
                ));
                for b in &backends {
                    gw_batch.push_str(&format!("link set {} up\n", b.gw_if));
                }
            }
            _ => {
                for b in &backends {
                    gw_batch.push_str(&format!(
                        "addr add {}/24 dev {if_}\naddr add {}/64 dev {if_} nodad\nlink set {if_} up\n",
                        b.gw_ipv4,
                        b.gw_ipv6,
                        if_ = b.gw_if
                    ));
                }
            }
        }
        ip_batch(&gw, &gw_batch)?;
        ip_batch(&client, &client_link())?;
        for b in &backends {
            let mut batch = format!(
                "link set lo up\n\
                 addr add {}/24 dev eth-gw\n\
                 addr add {}/64 dev eth-gw nodad\n\
                 link set eth-gw up\n",
                b.ipv4, b.ipv6
            );
            if dsr {
                batch.push_str(&format!(
                    "addr add {VIP4}/32 dev lo\naddr add {VIP6}/128 dev lo nodad\n"
                ));
            }
            ip_batch(&b.ns, &batch)?;
        }
        ip_batch(
            &client,
            &format!("route add default via {GW_CLIENT4}\nroute add ::/0 via {GW_CLIENT6}\n"),
        )?;
        for b in &backends {
            ip_batch(
                &b.ns,
                &format!(
                    "route add default via {}\nroute add ::/0 via {}\n",
                    b.gw_ipv4, b.gw_ipv6
                ),
            )?;
        }

        for ns in std::iter::once(&client).chain(backends.iter().map(|b| &b.ns)) {
            veth_for_xdp(ns, "eth-gw")?;
        }

        self.mount_bpffs()
    }

    /// A bpffs of its own: `ip netns exec` hides /sys/fs/bpf, and pins must not
    /// collide between labs.
    pub(crate) fn mount_bpffs(&mut self) -> Result<()> {
        let pin_dir = self.pin_dir();
        fs::create_dir_all(&pin_dir).map_err(io_err(format!("creating {}", pin_dir.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &pin_dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| LabError::Sys {
            what: format!("mounting bpffs on {}", pin_dir.display()),
            source,
        })?;
        self.state.mounts.push(pin_dir);
        self.save()
    }

    /// Makes the gateway know the MAC of the client and of every backend (v4 and v6),
    /// by sending one UDP datagram from the gateway to port 9 of each (answered by an
    /// ICMP port-unreachable, which also teaches the peer the gateway's MAC), until
    /// each shows up in the gateway's neighbour table.
    ///
    /// The XDP program needs the next hop's MAC to redirect; without it, it hands the
    /// packet to the kernel, which works for NAT over IPv4 but not for DSR (the
    /// kernel has no route for the VIP) and costs IPv6 a retransmission.
    pub fn warm_neighbours(&self) -> Result<()> {
        let client = Bins::require(&self.bins.client)?.to_path_buf();
        let gw = self.state.gateway_ns.clone();
        let mut peers: Vec<(String, &str)> = vec![
            (CLIENT4.to_string(), "eth-client"),
            (CLIENT6.to_string(), "eth-client"),
        ];
        for b in &self.state.backends {
            peers.push((b.ipv4.to_string(), self.neighbour_dev(b)));
            peers.push((b.ipv6.to_string(), self.neighbour_dev(b)));
        }
        for (addr, dev) in peers {
            let target = if addr.contains(':') {
                format!("[{addr}]:9")
            } else {
                format!("{addr}:9")
            };
            wait_for(
                &format!("the gateway to learn the MAC of {addr}"),
                Duration::from_secs(10),
                || {
                    let neigh = cmd::run(
                        Command::new("ip")
                            .args(["-n", &gw, "neigh", "show", "to", &addr, "dev", dev]),
                    )?;
                    if neigh.contains("lladdr") {
                        return Ok(Probe::Ready(()));
                    }
                    cmd::run(in_ns(&gw, &client).args([
                        "--target",
                        &target,
                        "--udp",
                        "1",
                        "--timeout-ms",
                        "200",
                    ]))?;
                    Ok(Probe::NotYet(neigh))
                },
            )?;
        }
        Ok(())
    }
}

pub(crate) fn rp_filter_off<'a>(ifaces: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = ["all", "default"]
        .iter()
        .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0"))
        .collect();
    v.extend(
        ifaces
            .into_iter()
            .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0")),
    );
    v
}

/// The client's link (`eth-gw`) addressed and up, as an `ip -batch`.
pub(crate) fn client_link() -> String {
    format!(
        "link set lo up\n\
         addr add {CLIENT4}/24 dev eth-gw\n\
         addr add {CLIENT6}/64 dev eth-gw nodad\n\
         link set eth-gw up\n"
    )
}

/// The veth facts (DESIGN.md): XDP_REDIRECT into a veth needs GRO on the receiving
/// peer, and TX checksum offload leaves partial checksums XDP cannot fix up.
pub(crate) fn veth_for_xdp(ns: &str, dev: &str) -> Result<()> {
    cmd::run(in_ns(ns, "ethtool").args(["-K", dev, "gro", "on", "tx", "off"])).map(drop)
}

pub(crate) fn sysctl(ns: &str, settings: &[String]) -> Result<()> {
    cmd::run(in_ns(ns, "sysctl").arg("-qw").args(settings)).map(drop)
}

pub(crate) fn ip_batch(ns: &str, batch: &str) -> Result<()> {
    cmd::run_with_stdin(Command::new("ip").args(["-n", ns, "-batch", "-"]), batch).map(drop)
}
