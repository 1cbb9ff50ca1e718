//! Packet tests: crafted frames through `BPF_PROG_TEST_RUN`, with the maps programmed
//! by the agent's own `AyaDataplane::apply`.
//!
//! Each test runs in a thread that moves into a fresh network namespace it sets up
//! (veth pairs, addresses from 198.18.0.0/15 and 2001:db8::/32, static neighbours),
//! so `bpf_fib_lookup` gives deterministic answers; the program and its maps are
//! pinned in a bpffs mounted for the test. Everything is removed on drop.
//!
//! Needs root: `cargo test -p keystone-tests --test packet`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_agent::dataplane::{AyaDataplane, Counters, Dataplane, LoadOptions, VipSpec};
use keystone_common::{
    Endpoint, Event, L4Counters, PROTO_TCP, PROTO_UDP, Reason, checksum, mode,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
    vip_flags,
};
use keystone_lab::xdp::*;

// ---------------------------------------------------------------------------
// Table-driven cases.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    /// Output identical to the input.
    Same,
    /// Output exactly this frame.
    Frame(Vec<u8>),
    /// Output not checked (e.g. a dropped frame).
    Any,
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    ingress: u32,
    action: u32,
    output: Expect,
    /// The one reason counter that must go up by one (none: no reason counter moves).
    reason: Option<Reason>,
}

fn run_cases(gw: &Gateway, cases: Vec<Case>) {
    for c in cases {
        let before = gw.counters();
        let (action, out) = gw.run(&c.input, c.ingress);
        let after = gw.counters();
        assert_eq!(
            action,
            c.action,
            "{}: action {} (want {}); reasons moved: {:?}",
            c.what,
            keystone_common::xdp_action_name(action),
            keystone_common::xdp_action_name(c.action),
            reason_deltas(&before, &after)
        );
        match &c.output {
            Expect::Same => assert_eq!(hex(&out), hex(&c.input), "{}: frame changed", c.what),
            Expect::Frame(want) => {
                assert_eq!(hex(&out), hex(want), "{}: output frame", c.what);
                assert_checksums(c.what, &out);
            }
            Expect::Any => {}
        }
        let deltas = reason_deltas(&before, &after);
        let want: Vec<(Reason, u64)> = c.reason.map(|r| vec![(r, 1)]).unwrap_or_default();
        assert_eq!(deltas, want, "{}: reason counters", c.what);
        assert_eq!(
            after.actions[action as usize] - before.actions[action as usize],
            1,
            "{}: ACTION_STATS[{}] must count the packet",
            c.what,
            keystone_common::xdp_action_name(action)
        );
    }
}

/// The standard config for the case table.
fn case_config() -> Vec<VipSpec> {
    let v4 =
        |last, port, proto, mode, backends| vip("v4", ep(vip4(last), port, proto), mode, backends);
    vec![
        // NAT TCP/UDP v4 to one backend each behind OUT_IF.
        v4(
            100,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("b0", ep(backend4(0), 8080, PROTO_TCP), 1)],
        ),
        v4(
            100,
            53,
            PROTO_UDP,
            mode::NAT,
            vec![backend("b1", ep(backend4(1), 5353, PROTO_UDP), 1)],
        ),
        // NAT v6.
        vip(
            "v6t",
            ep(vip6(0x100), 80, PROTO_TCP),
            mode::NAT,
            vec![backend("b6", ep(backend6(0), 8080, PROTO_TCP), 1)],
        ),
        vip(
            "v6u",
            ep(vip6(0x100), 53, PROTO_UDP),
            mode::NAT,
            vec![backend("b6u", ep(backend6(1), 5353, PROTO_UDP), 1)],
        ),
        // DSR v4/v6.
        v4(
            101,
            80,
            PROTO_TCP,
            mode::DSR,
            vec![backend("d0", ep(backend4(2), 80, PROTO_TCP), 1)],
        ),
        vip(
            "d6",
            ep(vip6(0x101), 80, PROTO_TCP),
            mode::DSR,
            vec![backend("d6", ep(backend6(2), 80, PROTO_TCP), 1)],
        ),
        // A backend back out of the ingress interface (XDP_TX).
        v4(
            102,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("tx", ep(TX_BACKEND4, 8080, PROTO_TCP), 1)],
        ),
        // No neighbour / no route.
        v4(
            103,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("nn", ep(NO_NEIGH4, 8080, PROTO_TCP), 1)],
        ),
        v4(
            104,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("nr", ep(NO_ROUTE4, 8080, PROTO_TCP), 1)],
        ),
        v4(
            105,
            80,
            PROTO_TCP,
            mode::DSR,
            vec![backend("dn", ep(NO_NEIGH4, 80, PROTO_TCP), 1)],
        ),
        // No backend with weight > 0.
        v4(
            106,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("w0", ep(backend4(3), 8080, PROTO_TCP), 0)],
        ),
    ]
}

#[test]
fn packet_cases() {
    in_netns(|| {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        let (inn, out) = (gw.in_index, gw.out_index);
        let d = Shape::default();
        let mut cases = Vec::new();

        // --- NAT, client -> VIP -------------------------------------------------
        for (what, f, to, mac, s) in [
            (
                "nat tcp/ipv4 -> redirect",
                flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40000", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                d.clone(),
            ),
            (
                "nat udp/ipv4 -> redirect",
                flow("198.18.0.2:40001", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40001", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                d.clone(),
            ),
            (
                "nat udp/ipv4 without checksum keeps checksum 0",
                flow("198.18.0.2:40002", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40002", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                Shape {
                    udp_no_checksum: true,
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 with IP options",
                flow("198.18.0.2:40003", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40003", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    options: vec![1, 1, 1, 0],
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 with 40 bytes of IP options",
                flow("198.18.0.2:40013", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40013", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    options: [vec![1; 39], vec![0]].concat(),
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 in an 802.1Q tag (tag kept)",
                flow("198.18.0.2:40004", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40004", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    vlan: Some((0x8100, 42)),
                    ..d.clone()
                },
            ),
            (
                "nat udp/ipv4 in an 802.1ad tag (tag kept)",
                flow("198.18.0.2:40005", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40005", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                Shape {
                    vlan: Some((0x88a8, 7)),
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv6 -> redirect",
                flow("[2001:db8::2]:40000", "[2001:db8::100]:80", PROTO_TCP),
                flow("[2001:db8::2]:40000", "[2001:db8:1::10]:8080", PROTO_TCP),
                backend_mac(0),
                d.clone(),
            ),
            (
                "nat udp/ipv6 -> redirect",
                flow("[2001:db8::2]:40001", "[2001:db8::100]:53", PROTO_UDP),
                flow("[2001:db8::2]:40001", "[2001:db8:1::11]:5353", PROTO_UDP),
                backend_mac(1),
                d.clone(),
            ),
            (
                "nat tcp/ipv6 in an 802.1Q tag",
                flow("[2001:db8::2]:40002", "[2001:db8::100]:80", PROTO_TCP),
                flow("[2001:db8::2]:40002", "[2001:db8:1::10]:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    vlan: Some((0x8100, 100)),
                    ..d.clone()
                },
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&f, &s),
                ingress: inn,
                action: XDP_REDIRECT,
                output: Expect::Frame(natted(to, &s, mac, OUT_MAC)),
                reason: None,
            });
        }

        // The UDP checksum that the rewrite turns into 0 must be sent as 0xffff: search
        // a source port for which the rewritten datagram sums to exactly 0.
        let zero_port = (1024..u16::MAX)
            .find(|&p| {
                let to = flow(&format!("198.18.0.2:{p}"), "198.18.1.11:5353", PROTO_UDP);
                let f = frame(&to, &d);
                let l4 = &f[34..];
                u16::from_ne_bytes([l4[6], l4[7]]) == 0xffff
            })
            .expect("some port gives a rewritten UDP checksum of 0");
        let f = flow(
            &format!("198.18.0.2:{zero_port}"),
            "198.18.0.100:53",
            PROTO_UDP,
        );
        let to = flow(
            &format!("198.18.0.2:{zero_port}"),
            "198.18.1.11:5353",
            PROTO_UDP,
        );
        cases.push(Case {
            what: "nat udp/ipv4 whose new checksum is 0 sends 0xffff",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_REDIRECT,
            output: Expect::Frame(natted(to, &d, backend_mac(1), OUT_MAC)),
            reason: None,
        });

        // Back out of the ingress interface: XDP_TX.
        let f = flow("198.18.0.2:40010", "198.18.0.102:80", PROTO_TCP);
        let to = flow("198.18.0.2:40010", "198.18.0.20:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat to a backend out of the ingress interface -> XDP_TX",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_TX,
            output: Expect::Frame(natted(to, &d, TX_BACKEND_MAC, IN_MAC)),
            reason: None,
        });

        // No neighbour: rewritten, MACs untouched, XDP_PASS for the kernel.
        let f = flow("198.18.0.2:40011", "198.18.0.103:80", PROTO_TCP);
        let to = flow("198.18.0.2:40011", "198.18.1.99:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat, backend without neighbour entry -> rewritten, XDP_PASS",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Frame(natted(to, &d, IN_MAC, CLIENT_MAC)),
            reason: Some(Reason::FibNoNeighbour),
        });
        let f = flow("198.18.0.2:40012", "198.18.0.104:80", PROTO_TCP);
        let to = flow("198.18.0.2:40012", "198.19.200.10:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat, no route to backend -> rewritten, XDP_PASS",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Frame(natted(to, &d, IN_MAC, CLIENT_MAC)),
            reason: Some(Reason::FibFailed),
        });

        // TTL.
        let f = flow("198.18.0.2:40020", "198.18.0.100:80", PROTO_TCP);
        cases.push(Case {
            what: "nat, TTL 1 -> XDP_PASS untouched",
            input: frame(
                &f,
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });
        let f6 = flow("[2001:db8::2]:40020", "[2001:db8::100]:80", PROTO_TCP);
        cases.push(Case {
            what: "nat, hop limit 1 -> XDP_PASS untouched",
            input: frame(
                &f6,
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });

        // No backend.
        cases.push(Case {
            what: "VIP whose only backend has weight 0 -> XDP_DROP",
            input: frame(&flow("198.18.0.2:40030", "198.18.0.106:80", PROTO_TCP), &d),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::NoBackend),
        });

        // --- DSR ----------------------------------------------------------------
        for (what, f, mac, s) in [
            (
                "dsr tcp/ipv4: only MACs change",
                flow("198.18.0.2:41000", "198.18.0.101:80", PROTO_TCP),
                backend_mac(2),
                d.clone(),
            ),
            (
                "dsr tcp/ipv4 in a VLAN tag: only MACs change",
                flow("198.18.0.2:41001", "198.18.0.101:80", PROTO_TCP),
                backend_mac(2),
                Shape {
                    vlan: Some((0x8100, 5)),
                    ..d.clone()
                },
            ),
            (
                "dsr tcp/ipv6: only MACs change",
                flow("[2001:db8::2]:41000", "[2001:db8::101]:80", PROTO_TCP),
                backend_mac(2),
                d.clone(),
            ),
        ] {
            let input = frame(&f, &s);
            cases.push(Case {
                what,
                output: Expect::Frame(with_macs(input.clone(), mac, OUT_MAC)),
                input,
                ingress: inn,
                action: XDP_REDIRECT,
                reason: None,
            });
        }
        cases.push(Case {
            what: "dsr, backend without neighbour -> XDP_PASS untouched",
            input: frame(&flow("198.18.0.2:41002", "198.18.0.105:80", PROTO_TCP), &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::FibNoNeighbour),
        });
        cases.push(Case {
            what: "dsr, TTL 1 is forwarded anyway (IP untouched)",
            input: frame(
                &flow("198.18.0.2:41003", "198.18.0.101:80", PROTO_TCP),
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_REDIRECT,
            output: Expect::Any,
            reason: None,
        });

        // --- Reverse NAT of replies ----------------------------------------------
        for (what, reply, want, s) in [
            (
                "reply tcp/ipv4 from a nat backend: source becomes the VIP",
                flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
                flow("198.18.0.100:80", "198.18.0.2:40000", PROTO_TCP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ..d.clone()
                },
            ),
            (
                "reply udp/ipv4 from a nat backend",
                flow("198.18.1.11:5353", "198.18.0.2:40001", PROTO_UDP),
                flow("198.18.0.100:53", "198.18.0.2:40001", PROTO_UDP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(1),
                    ..d.clone()
                },
            ),
            (
                "reply tcp/ipv6 from a nat backend",
                flow("[2001:db8:1::10]:8080", "[2001:db8::2]:40000", PROTO_TCP),
                flow("[2001:db8::100]:80", "[2001:db8::2]:40000", PROTO_TCP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ..d.clone()
                },
            ),
            (
                "reply udp/ipv6 in a VLAN tag",
                flow("[2001:db8:1::11]:5353", "[2001:db8::2]:40001", PROTO_UDP),
                flow("[2001:db8::100]:53", "[2001:db8::2]:40001", PROTO_UDP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(1),
                    vlan: Some((0x8100, 9)),
                    ..d.clone()
                },
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&reply, &s),
                ingress: out,
                action: XDP_REDIRECT,
                output: Expect::Frame(frame(
                    &want,
                    &Shape {
                        dst_mac: CLIENT_MAC,
                        src_mac: IN_MAC,
                        ttl: s.ttl - 1,
                        ..s.clone()
                    },
                )),
                reason: None,
            });
        }
        cases.push(Case {
            what: "reply with TTL 1 -> XDP_PASS untouched",
            input: frame(
                &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
                &Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: out,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });
        // The gateway's own connections to a nat backend's service address (the
        // agent's health checks): the backend's answers are for the gateway, not for
        // a client, so they must reach its stack as they are.
        for (what, f, i) in [
            (
                "tcp/ipv4 from a nat backend to the gateway itself -> pass untouched",
                flow("198.18.1.10:8080", "198.18.1.1:40000", PROTO_TCP),
                0,
            ),
            (
                "udp/ipv4 from a nat backend to the gateway itself -> pass untouched",
                flow("198.18.1.11:5353", "198.18.1.1:40001", PROTO_UDP),
                1,
            ),
            (
                "tcp/ipv6 from a nat backend to the gateway itself -> pass untouched",
                flow("[2001:db8:1::10]:8080", "[2001:db8:1::1]:40000", PROTO_TCP),
                0,
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(
                    &f,
                    &Shape {
                        dst_mac: OUT_MAC,
                        src_mac: backend_mac(i),
                        tcp_flags: SYN | ACK,
                        ..d.clone()
                    },
                ),
                ingress: out,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        cases.push(Case {
            what: "packet from a dsr backend is not reverse-translated",
            input: frame(
                &flow("198.18.1.12:80", "198.18.0.2:40000", PROTO_TCP),
                &Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(2),
                    ..d.clone()
                },
            ),
            ingress: out,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });

        // --- Not for a VIP: pass, byte-identical, not counted --------------------
        for (what, f) in [
            (
                "tcp to the gateway itself",
                flow("198.18.0.2:40000", "198.18.0.1:22", PROTO_TCP),
            ),
            (
                "tcp to a VIP address on another port",
                flow("198.18.0.2:40000", "198.18.0.100:443", PROTO_TCP),
            ),
            (
                "udp to a VIP address with the TCP VIP's port",
                flow("198.18.0.2:40000", "198.18.0.101:80", PROTO_UDP),
            ),
            (
                "ipv6 tcp to the gateway",
                flow("[2001:db8::2]:40000", "[2001:db8::1]:22", PROTO_TCP),
            ),
            (
                "tcp from a backend address but another port",
                flow("198.18.1.10:9999", "198.18.0.2:40000", PROTO_TCP),
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&f, &d),
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        let mut icmp = frame(&flow("198.18.0.2:0", "198.18.0.100:0", PROTO_TCP), &d);
        icmp[14 + 9] = 1; // ICMP; checksums are irrelevant to the program
        cases.push(Case {
            what: "icmp to a VIP address",
            input: icmp,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });
        let mut arp = vec![0xff; 6];
        arp.extend(CLIENT_MAC);
        arp.extend([0x08, 0x06]);
        arp.extend([0u8; 28]);
        cases.push(Case {
            what: "ARP",
            input: arp,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });
        let mut qinq = frame(
            &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                vlan: Some((0x88a8, 1)),
                ..d.clone()
            },
        );
        qinq[16..18].copy_from_slice(&0x8100u16.to_be_bytes()); // a second tag
        cases.push(Case {
            what: "two VLAN tags",
            input: qinq,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });

        // --- Truncated at every header boundary, and malformed --------------------
        let v4 = frame(&flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP), &d);
        let v6 = frame(
            &flow("[2001:db8::2]:42000", "[2001:db8::100]:80", PROTO_TCP),
            &d,
        );
        // 40 bytes of IP + TCP: an IHL of 15 (60 bytes) reaches past the total length.
        let v4_bare = frame(
            &flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                payload: 0,
                ..d.clone()
            },
        );
        let v4_vlan = frame(
            &flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                vlan: Some((0x8100, 3)),
                ..d.clone()
            },
        );
        // (The kernel refuses frames shorter than an Ethernet header.)
        cases.push(Case {
            what: "ethernet only (IPv4 EtherType)",
            input: v4[..14].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        cases.push(Case {
            what: "VLAN tag cut short",
            input: v4_vlan[..16].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });
        cases.push(Case {
            what: "VLAN tag, no IP header",
            input: v4_vlan[..18].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        cases.push(Case {
            what: "IPv4 header cut short before the destination",
            input: v4[..14 + 19].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        for cut in [14 + 20, 14 + 20 + 4, 14 + 20 + 19, v4.len() - 1] {
            cases.push(Case {
                what: "IPv4 to a VIP cut short after the IP header (total length > frame)",
                input: v4[..cut].to_vec(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        cases.push(Case {
            what: "IPv6 header cut short",
            input: v6[..14 + 39].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        for cut in [14 + 40, 14 + 40 + 19, v6.len() - 1] {
            cases.push(Case {
                what: "IPv6 to a VIP cut short after the IP header (payload length > frame)",
                input: v6[..cut].to_vec(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        // Consistent IP lengths, but the L4 header is cut short.
        for (what, f, l4_len) in [
            (
                "tcp/ipv4 header cut to 19 bytes",
                flow("198.18.0.2:42001", "198.18.0.100:80", PROTO_TCP),
                19usize,
            ),
            (
                "udp/ipv4 header cut to 7 bytes",
                flow("198.18.0.2:42001", "198.18.0.100:53", PROTO_UDP),
                7,
            ),
            (
                "tcp/ipv4 with no L4 header",
                flow("198.18.0.2:42001", "198.18.0.100:80", PROTO_TCP),
                0,
            ),
            (
                "tcp/ipv6 header cut to 10 bytes",
                flow("[2001:db8::2]:42001", "[2001:db8::100]:80", PROTO_TCP),
                10,
            ),
            (
                "udp/ipv6 header cut to 4 bytes",
                flow("[2001:db8::2]:42001", "[2001:db8::100]:53", PROTO_UDP),
                4,
            ),
        ] {
            let mut fr = frame(
                &f,
                &Shape {
                    payload: 0,
                    ..d.clone()
                },
            );
            let l3 = 14;
            let hl = if f.src.is_ipv4() { 20 } else { 40 };
            fr.truncate(l3 + hl + l4_len);
            if f.src.is_ipv4() {
                fr[l3 + 2..l3 + 4].copy_from_slice(&((hl + l4_len) as u16).to_be_bytes());
            } else {
                fr[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            }
            cases.push(Case {
                what,
                input: fr.clone(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::TruncatedL4),
            });
            // The same to a non-VIP address: not ours.
            let mut other = fr;
            if f.src.is_ipv4() {
                other[l3 + 19] = 1; // 198.18.0.1
            } else {
                other[l3 + 38] = 0; // 2001:db8::1
                other[l3 + 39] = 1;
            }
            cases.push(Case {
                what: "truncated L4 to a non-VIP address",
                input: other,
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        // Header fields.
        let mutate = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = base.to_vec();
            f(&mut v);
            v
        };
        for (what, input) in [
            ("IHL 4", mutate(&v4, &|v| v[14] = 0x44)),
            ("IHL 0", mutate(&v4, &|v| v[14] = 0x40)),
            ("IPv4 EtherType, version 6", mutate(&v4, &|v| v[14] = 0x65)),
            ("IPv4 EtherType, version 0", mutate(&v4, &|v| v[14] = 0x05)),
            (
                "IPv4 total length > frame",
                mutate(&v4, &|v| {
                    let n = v.len();
                    v[16..18].copy_from_slice(&((n - 14 + 1) as u16).to_be_bytes())
                }),
            ),
            (
                "IPv4 total length < header",
                mutate(&v4, &|v| v[16..18].copy_from_slice(&19u16.to_be_bytes())),
            ),
            (
                "IHL beyond total length",
                mutate(&v4_bare, &|v| v[14] = 0x4f),
            ),
            ("IPv6 EtherType, version 4", mutate(&v6, &|v| v[14] = 0x40)),
            (
                "IPv6 payload length > frame",
                mutate(&v6, &|v| {
                    let n = v.len();
                    v[18..20].copy_from_slice(&((n - 54 + 1) as u16).to_be_bytes())
                }),
            ),
        ] {
            cases.push(Case {
                what,
                input,
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        let to_other = |base: &[u8], v6: bool| {
            let mut v = base.to_vec();
            if v6 {
                v[14 + 38] = 0; // 2001:db8::1
                v[14 + 39] = 1;
            } else {
                v[14 + 19] = 1;
            }
            v
        };
        cases.push(Case {
            what: "IHL 4 to a non-VIP address -> pass",
            input: to_other(&mutate(&v4, &|v| v[14] = 0x44), false),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        // Fragments and extension headers.
        let frag = |base: &[u8], bits: u16| {
            let mut v = base.to_vec();
            v[14 + 6..14 + 8].copy_from_slice(&bits.to_be_bytes());
            v[14 + 10] = 0;
            v[14 + 11] = 0;
            let c = checksum::finish(checksum::sum(&v[14..34], 0));
            v[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
            v
        };
        cases.push(Case {
            what: "first IPv4 fragment to a VIP",
            input: frag(&v4, 0x2000),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "later IPv4 fragment to a VIP",
            input: frag(&v4, 0x0010),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "last IPv4 fragment to a VIP",
            input: frag(&v4, 0x0123),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "IPv4 fragment to a non-VIP address",
            input: to_other(&frag(&v4, 0x2000), false),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });
        for nh in [0u8, 43, 44, 60] {
            let mut v = v6.clone();
            v[14 + 6] = nh;
            cases.push(Case {
                what: "IPv6 extension header to a VIP",
                input: v.clone(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::Unparseable),
            });
            cases.push(Case {
                what: "IPv6 extension header to a non-VIP address",
                input: to_other(&v, true),
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        let mut icmp6 = v6.clone();
        icmp6[14 + 6] = 58;
        cases.push(Case {
            what: "ICMPv6 to a VIP address passes",
            input: icmp6,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });

        run_cases(&gw, cases);
    });
}

// ---------------------------------------------------------------------------
// The kernel's choice against the agent's prediction; flow stickiness.
// ---------------------------------------------------------------------------

fn random_flow(rng: &mut Rng, vip: SocketAddr, proto: u8) -> Flow {
    let r = rng.next_u64();
    let src: IpAddr = if vip.is_ipv4() {
        // Clients anywhere in 198.18.0.0/15, except the gateway's own /24s.
        Ipv4Addr::new(
            198,
            18 + (r & 1) as u8,
            2 + ((r >> 8) % 250) as u8,
            ((r >> 16) % 254) as u8 + 1,
        )
        .into()
    } else {
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100,
            0,
            0,
            0,
            (r >> 8) as u16,
            (r >> 24) as u16,
        )
        .into()
    };
    Flow {
        src: SocketAddr::new(src, 1024 + ((r >> 40) % 60_000) as u16),
        dst: vip,
        proto,
    }
}

/// Sends the flow's first packet (a SYN for TCP); returns where it went (from the
/// output frame).
fn send(gw: &Gateway, f: &Flow) -> SocketAddr {
    send_flags(gw, f, SYN)
}

/// Sends a packet of an established TCP flow (ACK, no SYN).
fn send_established(gw: &Gateway, f: &Flow) -> SocketAddr {
    send_flags(gw, f, ACK | PSH)
}

/// Sends one packet of `f` with TCP flags `tcp_flags`; returns where it went.
fn send_flags(gw: &Gateway, f: &Flow, tcp_flags: u8) -> SocketAddr {
    let input = frame(
        f,
        &Shape {
            tcp_flags,
            ..Shape::default()
        },
    );
    let (action, out) = gw.run(&input, gw.in_index);
    assert_eq!(
        action,
        XDP_REDIRECT,
        "flow {f:?}: action {}",
        keystone_common::xdp_action_name(action)
    );
    assert_checksums("random flow", &out);
    parse_flow(&out).dst
}

#[test]
fn kernel_choice_matches_prediction_for_random_flows() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v4 = ep(vip4(100), 80, PROTO_TCP);
        let v6 = ep(vip6(0x100), 53, PROTO_UDP);
        let mut sticky = vip(
            "sticky",
            ep(vip4(110), 443, PROTO_TCP),
            mode::NAT,
            (0..3)
                .map(|i| backend("s", ep(backend4(5 + i), 8443, PROTO_TCP), 1))
                .collect(),
        );
        sticky.flags = vip_flags::SOURCE_STICKY;
        sticky.ring_size = 1009;
        gw.apply(&[
            vip(
                "v4",
                v4,
                mode::NAT,
                (0..4)
                    .map(|i| {
                        backend(
                            "b",
                            ep(backend4(i), 8080, PROTO_TCP),
                            [50, 30, 15, 5][i as usize],
                        )
                    })
                    .collect(),
            ),
            vip(
                "v6",
                v6,
                mode::NAT,
                (0..3)
                    .map(|i| backend("b", ep(backend6(i), 5353, PROTO_UDP), 1))
                    .collect(),
            ),
            sticky.clone(),
        ]);
        let mut rng = Rng(0x6b65_7973_746f_6e65);
        let mut hits = std::collections::HashMap::new();
        for i in 0..10_000 {
            let (vip, proto) = match i % 3 {
                0 | 1 => (v4, PROTO_TCP),
                _ => (v6, PROTO_UDP),
            };
            let f = random_flow(&mut rng, vip.socket_addr(), proto);
            let got = send(&gw, &f);
            let want = gw
                .dp
                .predict(&vip, &f.key())
                .unwrap_or_else(|| panic!("no prediction for {f:?}"));
            assert_eq!(
                got,
                want.socket_addr(),
                "flow #{i} {f:?}: kernel picked {got}, agent predicts {}",
                want.socket_addr()
            );
            *hits.entry(got).or_insert(0u32) += 1;
        }
        // Weights 50/30/15/5 over ~6,667 IPv4 flows: each backend gets its share.
        for (i, w) in [50.0, 30.0, 15.0, 5.0].iter().enumerate() {
            let got = hits
                .get(&SocketAddr::new(backend4(i as u8).into(), 8080))
                .copied()
                .unwrap_or(0) as f64
                / 6667.0;
            assert!(
                (got - w / 100.0).abs() < 0.03,
                "backend {i} got {got:.3} of flows, weight share {}",
                w / 100.0
            );
        }
        // Source stickiness: one client, many ports, one backend (as predicted).
        let client: IpAddr = Ipv4Addr::new(198, 19, 7, 7).into();
        let first = send(
            &gw,
            &Flow {
                src: SocketAddr::new(client, 1000),
                dst: sticky.vip.socket_addr(),
                proto: PROTO_TCP,
            },
        );
        for port in 1001..1100 {
            let f = Flow {
                src: SocketAddr::new(client, port),
                dst: sticky.vip.socket_addr(),
                proto: PROTO_TCP,
            };
            assert_eq!(send(&gw, &f), first, "sticky VIP moved client port {port}");
            assert_eq!(
                gw.dp
                    .predict(&sticky.vip, &f.key())
                    .map(|e| e.socket_addr()),
                Some(first)
            );
        }
        let c = gw.counters();
        let new_flows: u64 = c.vips.iter().map(|(_, t)| t.new_flows).sum();
        assert_eq!(
            new_flows, 10_100,
            "every random flow is a new flow: {:?}",
            c.vips
        );
    });
}

#[test]
fn weight_changes_keep_established_flows_and_removal_repicks() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let spec = |weights: &[u32]| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        backend(&format!("b{i}"), ep(backend4(i as u8), 8080, PROTO_TCP), w)
                    })
                    .collect(),
            )]
        };
        let b0: SocketAddr = SocketAddr::new(backend4(0).into(), 8080);
        gw.apply(&spec(&[1, 1, 1, 1]));
        let mut rng = Rng(42);
        let flows: Vec<Flow> = (0..400)
            .map(|_| random_flow(&mut rng, v.socket_addr(), PROTO_TCP))
            .collect();
        let first: Vec<SocketAddr> = flows.iter().map(|f| send(&gw, f)).collect();
        assert!(first.contains(&b0), "some flow lands on b0");
        // The connection table pins each flow to the slot of the backend it went to.
        for (f, to) in flows.iter().zip(&first).take(20) {
            let state = gw
                .dp
                .conn(&f.key())
                .expect("read CONNS")
                .expect("flow is in CONNS");
            let slot = gw.dp.backend_slot(&v, &Endpoint::new(*to, PROTO_TCP));
            assert_eq!(Some(state.backend), slot, "CONNS entry of {f:?}");
        }

        // Canary-style step: b0 drops to weight 0, b1 doubles. Established flows stay.
        gw.apply(&spec(&[0, 2, 1, 1]));
        for (f, want) in flows.iter().zip(&first) {
            assert_eq!(
                send_established(&gw, f),
                *want,
                "established flow {f:?} moved after a weight change"
            );
        }
        // New flows follow the new weights (never b0) and the prediction.
        for _ in 0..400 {
            let f = random_flow(&mut rng, v.socket_addr(), PROTO_TCP);
            let got = send(&gw, &f);
            assert_ne!(got, b0, "new flow {f:?} went to a weight-0 backend");
            assert_eq!(
                Some(got),
                gw.dp.predict(&v, &f.key()).map(|e| e.socket_addr())
            );
        }

        // Removing b0 re-picks exactly its flows.
        let mut specs = spec(&[0, 2, 1, 1]);
        specs[0].backends.remove(0);
        gw.apply(&specs);
        for (f, was) in flows.iter().zip(&first) {
            let got = send_established(&gw, f);
            if *was == b0 {
                assert_ne!(got, b0, "flow {f:?} still goes to removed b0");
                assert_eq!(
                    Some(got),
                    gw.dp.predict(&v, &f.key()).map(|e| e.socket_addr()),
                    "re-picked flow {f:?}"
                );
            } else {
                assert_eq!(
                    got, *was,
                    "flow {f:?} of a remaining backend moved when b0 was removed"
                );
            }
        }

        // Marking b1 down re-picks its flows too; it keeps its slot.
        let b1: SocketAddr = SocketAddr::new(backend4(1).into(), 8080);
        let slot = gw.dp.backend_slot(&v, &ep(backend4(1), 8080, PROTO_TCP));
        specs[0].backends[0].up = false;
        gw.apply(&specs);
        assert_eq!(
            gw.dp.backend_slot(&v, &ep(backend4(1), 8080, PROTO_TCP)),
            slot
        );
        for f in &flows {
            assert_ne!(
                send_established(&gw, f),
                b1,
                "flow {f:?} still goes to down b1"
            );
        }

        // All backends gone: new flows are dropped and counted.
        specs[0].backends.clear();
        gw.apply(&specs);
        let before = gw.counters();
        let (action, _) = gw.run(&frame(&flows[0], &Shape::default()), gw.in_index);
        assert_eq!(action, XDP_DROP);
        let after = gw.counters();
        assert_eq!(reason_deltas(&before, &after), vec![(Reason::NoBackend, 1)]);
    });
}

/// A TCP SYN without ACK is a new connection even when its 4-tuple is still in the
/// connection table (a client reusing the source port of a closed connection): it is
/// picked through the live table, like IPVS's `conn_reuse_mode`, while the tuple's
/// established packets keep their backend.
/// One nat VIP (`vip4(100)`:80) over b0 and b1 (`backend4(0|1)`:8080), for the
/// connection-reuse tests.
struct Pair {
    v: Endpoint,
    b0: Endpoint,
    b1: Endpoint,
}

impl Pair {
    fn new() -> Self {
        Pair {
            v: ep(vip4(100), 80, PROTO_TCP),
            b0: ep(backend4(0), 8080, PROTO_TCP),
            b1: ep(backend4(1), 8080, PROTO_TCP),
        }
    }

    fn spec(&self, w0: u32, w1: u32) -> Vec<VipSpec> {
        vec![vip(
            "v",
            self.v,
            mode::NAT,
            vec![backend("b0", self.b0, w0), backend("b1", self.b1, w1)],
        )]
    }

    /// The backend (b0 or b1) at `addr`, and its MAC index.
    fn which(&self, addr: SocketAddr) -> (Endpoint, u8) {
        if addr == self.b0.socket_addr() {
            (self.b0, 0)
        } else {
            assert_eq!(addr, self.b1.socket_addr(), "not a backend of the pair");
            (self.b1, 1)
        }
    }
}

fn new_flows(gw: &Gateway, b: &Endpoint) -> u64 {
    gw.counters()
        .backends
        .iter()
        .find(|(_, e, _)| e == b)
        .map(|(_, _, t)| t.new_flows)
        .expect("backend counters")
}

fn l4_of(gw: &Gateway, b: &Endpoint) -> L4Counters {
    gw.counters()
        .backend_l4
        .iter()
        .find(|(_, e, _)| e == b)
        .map(|(_, _, c)| *c)
        .expect("backend L4 counters")
}

fn pinned_slot(gw: &Gateway, f: &Flow) -> Option<u32> {
    gw.dp
        .conn(&f.key())
        .expect("read CONNS")
        .map(|state| state.backend)
}

/// Backend `b` (MAC index `i`) answers client flow `f` with `tcp_flags`; returns the
/// action (the reply is translated back to the client).
fn reply(gw: &Gateway, f: &Flow, b: &Endpoint, i: u8, tcp_flags: u8) -> u32 {
    let from = Flow {
        src: b.socket_addr(),
        dst: f.src,
        proto: f.proto,
    };
    let shape = Shape {
        dst_mac: OUT_MAC,
        src_mac: backend_mac(i),
        tcp_flags,
        ..Shape::default()
    };
    gw.run(&frame(&from, &shape), gw.out_index).0
}

/// A full handshake of `f` (client SYN, the backend's SYN-ACK, client ACK); returns
/// the backend it went to.
fn establish(gw: &Gateway, pair: &Pair, f: &Flow) -> SocketAddr {
    let to = send(gw, f);
    let (b, i) = pair.which(to);
    assert_eq!(reply(gw, f, &b, i, SYN | ACK), XDP_REDIRECT, "SYN-ACK");
    assert_eq!(send_established(gw, f), to, "the handshake's ACK");
    to
}

#[test]
fn a_syn_on_a_tracked_tuple_is_picked_through_the_live_table() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let pair = Pair::new();
        let Pair { v, b0, b1 } = pair;
        let spec = |w0, w1| pair.spec(w0, w1);
        let (to0, to1) = (b0.socket_addr(), b1.socket_addr());
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);

        gw.apply(&spec(100, 0));
        assert_eq!(send(&gw, &f), to0, "first connection's SYN");
        assert_eq!(send_established(&gw, &f), to0);
        assert_eq!(new_flows(&gw, &b0), 1);

        // Canary step to 0/100: the first connection's remaining packets (before the
        // port is reused) stay on b0.
        gw.apply(&spec(0, 100));
        assert_eq!(
            send_established(&gw, &f),
            to0,
            "established packet moved after a weight change"
        );
        assert_eq!(
            send_flags(&gw, &f, FIN | ACK),
            to0,
            "the old connection's FIN"
        );
        assert_eq!(pinned_slot(&gw, &f), gw.dp.backend_slot(&v, &b0));

        // The client reuses the 4-tuple for a new connection: its SYN follows the
        // live table (b1), re-pins the tuple and counts as a new flow.
        assert_eq!(
            send(&gw, &f),
            to1,
            "a new connection on a reused 4-tuple went to the weight-0 backend"
        );
        assert_eq!(pinned_slot(&gw, &f), gw.dp.backend_slot(&v, &b1));
        assert_eq!((new_flows(&gw, &b0), new_flows(&gw, &b1)), (1, 1));
        // Its retransmit picks the same backend: nothing rewritten, no new flow.
        assert_eq!(send(&gw, &f), to1, "SYN retransmit");
        assert_eq!(new_flows(&gw, &b1), 1, "a SYN retransmit is not a new flow");
        // The new connection is established on b1 and keeps it across a weight change.
        gw.apply(&spec(100, 0));
        assert_eq!(send_established(&gw, &f), to1);
        // SYN+ACK is not a new connection: it follows the pinned entry.
        assert_eq!(send_flags(&gw, &f, SYN | ACK), to1);

        // No backend takes new connections: once the connection ended (the client's
        // RST), a SYN on its tuple is dropped (NoBackend); the tuple's other packets
        // still reach their backend.
        gw.apply(&spec(0, 0));
        assert_eq!(send_flags(&gw, &f, RST), to1, "the connection's RST");
        let before = gw.counters();
        let (action, _) = gw.run(&frame(&f, &Shape::default()), gw.in_index);
        assert_eq!(action, XDP_DROP, "SYN with no backend for new connections");
        assert_eq!(
            reason_deltas(&before, &gw.counters()),
            vec![(Reason::NoBackend, 1)]
        );
        assert_eq!(send_established(&gw, &f), to1);
    });
}

/// Flows for the reuse tests: 40 ports of the client (the one whose neighbour entry
/// the topology has) towards `vip4(100)`:80.
fn reuse_flows() -> Vec<Flow> {
    (0..40u16)
        .map(|i| {
            flow(
                &format!("198.18.0.2:{}", 40_000 + i),
                "198.18.0.100:80",
                PROTO_TCP,
            )
        })
        .collect()
}

/// A SYN on the 4-tuple of an established connection (retransmitted, reused too
/// early, or forged) does not move it, whatever the weights say: the SYN, and every
/// later packet, goes to the connection's backend; nothing is re-pinned or counted
/// as a new connection. A tuple whose handshake is still under way (no client ACK
/// yet) keeps the reuse rule: its SYN follows the live table.
#[test]
fn a_syn_on_an_established_tuple_keeps_its_backend_after_a_weight_change() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let pair = Pair::new();
        let flows = reuse_flows();
        gw.apply(&pair.spec(1, 1));
        let first: Vec<SocketAddr> = flows.iter().map(|f| establish(&gw, &pair, f)).collect();
        let on_b0 = first
            .iter()
            .filter(|b| **b == pair.b0.socket_addr())
            .count();
        assert!(on_b0 > 0 && on_b0 < flows.len(), "both backends have flows");
        let half_open = flow("198.18.0.2:45000", "198.18.0.100:80", PROTO_TCP);
        let half_open_to = send(&gw, &half_open);

        // New connections all go to the backend the half-open flow is not on.
        let (w0, w1, live) = if half_open_to == pair.b0.socket_addr() {
            (0, 1, pair.b1)
        } else {
            (1, 0, pair.b0)
        };
        gw.apply(&pair.spec(w0, w1));
        let before = gw.counters();
        for (f, was) in flows.iter().zip(&first) {
            let entry = gw.dp.conn(&f.key()).expect("read CONNS");
            assert_eq!(send(&gw, f), *was, "a SYN moved established flow {f:?}");
            assert_eq!(
                gw.dp.conn(&f.key()).expect("read CONNS"),
                entry,
                "a SYN on an established flow rewrote its entry"
            );
            assert_eq!(send_established(&gw, f), *was, "flow {f:?} moved");
        }
        let after = gw.counters();
        assert_eq!(
            l4_deltas(&before, &after),
            vec![],
            "SYNs on established flows are no connection attempts"
        );
        let new_flows = |c: &Counters| {
            c.backends
                .iter()
                .map(|(_, _, t)| t.new_flows)
                .collect::<Vec<_>>()
        };
        assert_eq!(new_flows(&after), new_flows(&before), "no new flows");
        assert_eq!(
            send(&gw, &half_open),
            live.socket_addr(),
            "the retransmitted SYN of an unfinished handshake follows the live table"
        );
    });
}

/// A connection that ended (FIN or RST from the client, FIN or RST from a nat
/// backend) or that sat idle longer than `limits::conn::REUSE_IDLE_S` leaves a stale
/// entry: a SYN on its tuple is a new connection, picked through the live table.
#[test]
fn after_a_fin_or_rst_or_a_long_idle_a_syn_repicks() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use keystone_common::{FlowKey, FlowState, limits::conn::REUSE_IDLE_TICKS, names};

    in_netns(|| {
        let mut gw = Gateway::new();
        let pair = Pair::new();
        let flows = reuse_flows();
        gw.apply(&pair.spec(1, 0));
        for f in &flows {
            assert_eq!(establish(&gw, &pair, f), pair.b0.socket_addr());
        }
        gw.apply(&pair.spec(0, 1));
        let (to0, to1) = (pair.b0.socket_addr(), pair.b1.socket_addr());
        let conns = || -> BpfHashMap<MapData, FlowKey, FlowState> {
            let pin = gw.dp.pin_dir().join(names::CONNS);
            Map::from_map_data(MapData::from_pin(pin).unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        };
        type Close<'a> = (&'a str, Box<dyn Fn(&Flow) + 'a>);
        let ends: [Close; 5] = [
            (
                "client FIN",
                Box::new(|f| assert_eq!(send_flags(&gw, f, FIN | ACK), to0)),
            ),
            (
                "client RST",
                Box::new(|f| assert_eq!(send_flags(&gw, f, RST), to0)),
            ),
            (
                "backend FIN",
                Box::new(|f| assert_eq!(reply(&gw, f, &pair.b0, 0, FIN | ACK), XDP_REDIRECT)),
            ),
            (
                "backend RST",
                Box::new(|f| assert_eq!(reply(&gw, f, &pair.b0, 0, RST | ACK), XDP_REDIRECT)),
            ),
            (
                "idle too long",
                Box::new(|f| {
                    let mut map = conns();
                    let mut state = map.get(&f.key(), 0).expect("entry");
                    state.seen = state.seen.wrapping_sub(REUSE_IDLE_TICKS + 2);
                    map.insert(f.key(), state, 0).expect("age the entry");
                }),
            ),
        ];
        for (i, (what, end)) in ends.iter().enumerate() {
            let f = &flows[i];
            // Still live: a SYN stays.
            assert_eq!(send(&gw, f), to0, "{what}: SYN before the end");
            end(f);
            assert_eq!(send(&gw, f), to1, "{what}: a SYN after it re-picks");
            assert_eq!(
                send_established(&gw, f),
                to1,
                "{what}: and the tuple follows"
            );
        }
        // An entry idle just under the bound is still live.
        let f = &flows[ends.len()];
        let mut map = conns();
        let mut state = map.get(&f.key(), 0).expect("entry");
        state.seen = state.seen.wrapping_sub(REUSE_IDLE_TICKS - 2);
        map.insert(f.key(), state, 0).expect("age the entry");
        assert_eq!(send(&gw, f), to0, "idle under the bound: the SYN stays");
    });
}

/// `L4Counters::established`, the passive success signal: in nat mode a handshake
/// counts only when the client's ACK follows the backend's SYN-ACK, once per
/// connection. SYN-ACKs the client never acknowledges (dropped for a bad checksum:
/// it retransmits its SYN instead) count nothing; neither does an ACK without a
/// SYN-ACK seen.
#[test]
fn a_handshake_counts_as_established_only_with_the_clients_ack_once() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let pair = Pair::new();
        gw.apply(&pair.spec(1, 0));
        let b0 = pair.b0;
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let start = gw.counters();
        let moved = |before: &Counters| l4_deltas(before, &gw.counters());
        let b = b0.socket_addr();

        // The client drops every SYN-ACK: SYN, SYN-ACK, SYN again, SYN-ACK again.
        for _ in 0..3 {
            assert_eq!(send(&gw, &f), b);
            assert_eq!(reply(&gw, &f, &b0, 0, SYN | ACK), XDP_REDIRECT);
        }
        assert_eq!(
            moved(&start),
            vec![(b, l4(3, 3, 0, 0, 0))],
            "SYN-ACKs without the client's ACK are no success"
        );
        // The client's ACK completes it: one success; later packets add nothing.
        let before = gw.counters();
        assert_eq!(send_flags(&gw, &f, ACK), b);
        assert_eq!(moved(&before), vec![(b, l4(0, 0, 0, 0, 1))], "the ACK");
        let before = gw.counters();
        for _ in 0..3 {
            assert_eq!(send_established(&gw, &f), b);
        }
        assert_eq!(
            reply(&gw, &f, &b0, 0, SYN | ACK),
            XDP_REDIRECT,
            "late SYN-ACK"
        );
        assert_eq!(send_flags(&gw, &f, ACK), b);
        assert_eq!(moved(&before), vec![(b, l4(0, 1, 0, 0, 0))], "counted once");

        // A client ACK after a SYN that no SYN-ACK answered (through this gateway).
        let g = flow("198.18.0.2:40001", "198.18.0.100:80", PROTO_TCP);
        let before = gw.counters();
        assert_eq!(send(&gw, &g), b);
        assert_eq!(send_established(&gw, &g), b);
        assert_eq!(
            moved(&before),
            vec![(b, l4(1, 0, 0, 0, 0))],
            "ACK without SYN-ACK"
        );
        assert_eq!(l4_of(&gw, &b0).established, 1);
    });
}

fn l4(syn: u64, syn_ack: u64, rst: u64, fin: u64, established: u64) -> L4Counters {
    L4Counters {
        syn,
        syn_ack,
        rst,
        fin,
        established,
    }
}

/// Per backend, the L4 counters that moved between two readings.
fn l4_deltas(before: &Counters, after: &Counters) -> Vec<(SocketAddr, L4Counters)> {
    let mut deltas: Vec<(SocketAddr, L4Counters)> = after
        .backend_l4
        .iter()
        .filter_map(|(vip, b, a)| {
            let z = L4Counters::default();
            let old = before
                .backend_l4
                .iter()
                .find(|(v, e, _)| v == vip && e == b)
                .map_or(z, |(_, _, c)| *c);
            let d = l4(
                a.syn - old.syn,
                a.syn_ack - old.syn_ack,
                a.rst - old.rst,
                a.fin - old.fin,
                a.established - old.established,
            );
            (d != z).then_some((b.socket_addr(), d))
        })
        .collect();
    deltas.sort_by_key(|(b, _)| *b);
    deltas
}

/// (what, flow, frame shape, TCP flags, ingress, action, L4 counters that move).
type L4Step = (
    &'static str,
    Flow,
    Shape,
    u8,
    u32,
    u32,
    Vec<(SocketAddr, L4Counters)>,
);

/// Passive TCP signals per backend: client SYNs (ACK clear) count `syn` for the
/// backend they go to, a nat backend's SYN+ACK/RST/FIN replies count for it, the
/// client's ACK that completes the handshake counts `established`; UDP and other
/// segments count nothing; dsr backends only get `syn` and `established`.
#[test]
fn l4_counters_count_syns_and_the_backends_answers() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let config = case_config();
        gw.apply(&config);
        let (inn, out) = (gw.in_index, gw.out_index);
        let start = gw.counters();
        let programmed: usize = config.iter().map(|v| v.backends.len()).sum();
        assert_eq!(start.backend_l4.len(), programmed, "one entry per backend");
        assert!(
            start
                .backend_l4
                .iter()
                .all(|(_, _, c)| *c == L4Counters::default())
        );

        let client = |s: &str, proto| flow("198.18.0.2:41000", s, proto);
        let from_backend = |b: &str, proto| flow(b, "198.18.0.2:41000", proto);
        let from_client = Shape::default();
        let from = |i: u8| Shape {
            dst_mac: OUT_MAC,
            src_mac: backend_mac(i),
            ..Shape::default()
        };
        let b0: SocketAddr = "198.18.1.10:8080".parse().unwrap();
        let b6: SocketAddr = "[2001:db8:1::10]:8080".parse().unwrap();
        let d0: SocketAddr = "198.18.1.12:80".parse().unwrap();
        #[rustfmt::skip]
        let steps: Vec<L4Step> = vec![
            ("nat SYN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0, 0))]),
            ("nat SYN retransmit", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0, 0))]),
            ("nat SYN+ACK reply", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 1, 0, 0, 0))]),
            ("client ACK", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![(b0, l4(0, 0, 0, 0, 1))]),
            ("client data", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK | PSH, inn, XDP_REDIRECT, vec![]),
            ("backend data", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), ACK | PSH, out, XDP_REDIRECT, vec![]),
            ("client FIN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), FIN | ACK, inn, XDP_REDIRECT, vec![]),
            ("backend FIN", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), FIN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 0, 1, 0))]),
            ("backend RST+ACK (refused)", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0, 0))]),
            ("backend RST", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0, 0))]),
            // The agent's own health check of b0: not a client's connection.
            ("backend SYN+ACK to the gateway itself", flow("198.18.1.10:8080", "198.18.1.1:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_PASS, vec![]),
            ("nat ipv6 SYN", flow("[2001:db8::2]:41000", "[2001:db8::100]:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b6, l4(1, 0, 0, 0, 0))]),
            ("nat ipv6 SYN+ACK", flow("[2001:db8:1::10]:8080", "[2001:db8::2]:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b6, l4(0, 1, 0, 0, 0))]),
            ("udp to a nat VIP", client("198.18.0.100:53", PROTO_UDP), from_client.clone(), 0, inn, XDP_REDIRECT, vec![]),
            ("udp reply", from_backend("198.18.1.11:5353", PROTO_UDP), from(1), 0, out, XDP_REDIRECT, vec![]),
            ("dsr SYN", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(d0, l4(1, 0, 0, 0, 0))]),
            ("dsr ACK", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![(d0, l4(0, 0, 0, 0, 1))]),
            // A dsr backend answers the client directly; a packet from it that does
            // cross the gateway is not a reply the gateway translates or counts.
            ("dsr backend SYN+ACK", from_backend("198.18.1.12:80", PROTO_TCP), from(2), SYN | ACK, out, XDP_PASS, vec![]),
            ("SYN with no backend", client("198.18.0.106:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_DROP, vec![]),
        ];
        for (what, f, shape, tcp_flags, ingress, action, want) in steps {
            let before = gw.counters();
            let (got, _) = gw.run(&frame(&f, &Shape { tcp_flags, ..shape }), ingress);
            assert_eq!(
                got,
                action,
                "{what}: action {}",
                keystone_common::xdp_action_name(got)
            );
            assert_eq!(
                l4_deltas(&before, &gw.counters()),
                want,
                "{what}: L4 counters"
            );
        }
        let total: Vec<_> = l4_deltas(&start, &gw.counters());
        assert_eq!(
            total,
            vec![
                (b0, l4(2, 1, 2, 1, 1)),
                (d0, l4(1, 0, 0, 0, 1)),
                (b6, l4(1, 1, 0, 0, 0)),
            ],
            "totals"
        );
    });
}

#[test]
fn pinned_maps_are_reused_and_removed_on_detach() {
    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let v = ep(vip4(100), 80, PROTO_TCP);
        let spec = vec![vip(
            "v",
            v,
            mode::NAT,
            (0..3)
                .map(|i| backend("b", ep(backend4(i), 8080, PROTO_TCP), 1))
                .collect(),
        )];
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let opts = LoadOptions {
            interfaces: vec![IN_IF.into()],
            ..LoadOptions::new(&pin_dir)
        };

        let mut dp = AyaDataplane::load(opts.clone()).unwrap_or_else(|e| panic!("first load: {e}"));
        assert!(!dp.reused_maps());
        dp.apply(&spec).unwrap();
        let slots: Vec<_> = spec[0]
            .backends
            .iter()
            .map(|b| dp.backend_slot(&v, &b.endpoint))
            .collect();
        assert!(
            pin_dir.join(format!("link_{IN_IF}")).exists(),
            "link pinned"
        );
        dp.shutdown(true).unwrap();
        drop(dp);

        // A second agent picks up the pins (and the pinned link) and the same slots.
        let mut dp = AyaDataplane::load(opts).unwrap_or_else(|e| panic!("second load: {e}"));
        assert!(dp.reused_maps(), "maps from the first run are reused");
        dp.apply(&spec).unwrap();
        let again: Vec<_> = spec[0]
            .backends
            .iter()
            .map(|b| dp.backend_slot(&v, &b.endpoint))
            .collect();
        assert_eq!(slots, again, "backend slots survive an agent restart");
        assert!(dp.predict(&v, &f.key()).is_some());
        dp.detach().unwrap_or_else(|e| panic!("detach: {e}"));
        let left: Vec<_> = std::fs::read_dir(&pin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "pins left after detach: {left:?}");
    });
}

/// The pinned objects' kernel ids by pin name (a link: the program it runs), and the
/// XDP program `IN_IF` runs: equal snapshots mean nothing was replaced.
fn pinned_state(
    pin_dir: &std::path::Path,
) -> (std::collections::BTreeMap<String, u32>, Option<u64>) {
    use aya::{
        maps::MapInfo,
        programs::{
            ProgramInfo,
            links::{FdLink, PinnedLink},
        },
    };
    let mut ids = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(pin_dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let id = if name.starts_with("link_") {
            FdLink::from(PinnedLink::from_pin(&path).unwrap())
                .info()
                .unwrap()
                .program_id()
        } else if name == keystone_common::names::PROGRAM {
            ProgramInfo::from_pin(&path).unwrap().id()
        } else {
            MapInfo::from_pin(&path).unwrap().id()
        };
        ids.insert(name, id);
    }
    let out = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", IN_IF])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (ids, json[0]["xdp"]["prog"]["id"].as_u64())
}

/// A load that fails part-way (attaching to an interface another data plane holds)
/// undoes itself: into a fresh pin directory it leaves no pin and no program on the
/// interface it had already attached to; over a data plane an earlier agent left
/// pinned it leaves every pin on the same object and the links on the old program.
#[test]
fn a_load_that_fails_part_way_undoes_itself() {
    use keystone_agent::dataplane::LoadError;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let blocker = AyaDataplane::load(LoadOptions {
            interfaces: vec![OUT_IF.into()],
            ..LoadOptions::new(bpffs.dir.join("other"))
        })
        .unwrap_or_else(|e| panic!("the other data plane: {e}"));
        let both = LoadOptions {
            interfaces: vec![IN_IF.into(), OUT_IF.into()],
            ..LoadOptions::new(&pin_dir)
        };
        let refused = |what: &str| {
            let err = AyaDataplane::load(both.clone()).expect_err(what);
            assert!(
                matches!(&err, LoadError::Attach { interface, .. } if interface == OUT_IF),
                "{what}: {err}"
            );
        };

        refused("a fresh load onto an interface another data plane holds");
        assert_eq!(pinned_state(&pin_dir), (Default::default(), None));
        assert!(!pin_dir.exists(), "the pin directory it created stays");

        let mut dp = AyaDataplane::load(LoadOptions {
            interfaces: vec![IN_IF.into()],
            ..LoadOptions::new(&pin_dir)
        })
        .unwrap_or_else(|e| panic!("the first agent's load: {e}"));
        // Only nat: a dsr backend behind OUT_IF, where this plane is not attached, is
        // refused (it could not be redirected there).
        let nat: Vec<_> = case_config()
            .into_iter()
            .filter(|v| v.mode == mode::NAT)
            .collect();
        dp.apply(&nat).unwrap();
        dp.shutdown(true).unwrap();
        drop(dp);
        let before = pinned_state(&pin_dir);
        assert!(before.1.is_some(), "the first agent left {IN_IF} attached");

        refused("a load over a pinned data plane");
        assert_eq!(
            pinned_state(&pin_dir),
            before,
            "the pinned data plane changed"
        );
        drop(blocker);
    });
}

/// The connection table has the configured size; a restart with the same size keeps
/// its entries, one with another size replaces it (the pinned map would otherwise
/// silently keep the old size).
#[test]
fn the_connection_table_takes_the_configured_size() {
    use keystone_agent::dataplane::Limits;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let conns = pin_dir.join(keystone_common::names::CONNS);
        let size = || {
            aya::maps::MapData::from_pin(&conns)
                .and_then(|m| m.info())
                .unwrap_or_else(|e| panic!("pinned {}: {e}", conns.display()))
                .max_entries()
        };
        let spec = case_config();
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let load = |entries| {
            let mut dp = AyaDataplane::load(LoadOptions {
                limits: Limits {
                    conn_table_entries: entries,
                    ..Limits::default()
                },
                ..LoadOptions::new(&pin_dir)
            })
            .unwrap_or_else(|e| panic!("load with {entries} entries: {e}"));
            dp.apply(&spec).unwrap();
            dp
        };
        let pinned = |dp: &AyaDataplane| dp.conn(&f.key()).expect("read CONNS").is_some();

        let dp = load(1024);
        assert_eq!(size(), 1024);
        run_frame(&dp, &frame(&f, &Shape::default()), 0);
        assert!(pinned(&dp), "the flow is tracked");
        drop(dp);

        let dp = load(1024);
        assert!(pinned(&dp), "same size: the table and its entries are kept");
        drop(dp);

        let dp = load(4096);
        assert_eq!(size(), 4096, "a new size replaces the pinned table");
        assert!(!pinned(&dp), "the replaced table starts empty");
        dp.detach().unwrap_or_else(|e| panic!("detach: {e}"));
    });
}

/// Upgrading from an agent that pinned the reverse-NAT map as `KS_REVERSE_V1` (no
/// backend slot): `load` fills `KS_REVERSE_V2` from it, with each backend's slot from
/// the reused BACKENDS map, before the new program runs, so replies are translated
/// (and counted for the right backend) before the first `apply`; V1 is unpinned.
#[test]
fn a_pinned_v1_reverse_map_is_migrated_on_load() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use keystone_common::{
        ReverseNat, legacy::ReverseNatV1, limits::ring::DEFAULT_MAX_BACKENDS, names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let v = ep(vip4(100), 80, PROTO_TCP);
        let b0 = ep(backend4(0), 8080, PROTO_TCP);
        let spec = vec![vip("v", v, mode::NAT, vec![backend("b0", b0, 1)])];
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&spec).unwrap();
        let slot = dp.backend_slot(&v, &b0).expect("b0 has a slot");
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(pin_dir.join(name)).unwrap()).unwrap()
        };
        let v2: BpfHashMap<MapData, Endpoint, ReverseNat> =
            open(names::REVERSE).try_into().unwrap();
        let vip_index = v2.get(&b0, 0).expect("b0's reverse entry").vip_index;
        drop(v2);
        dp.shutdown(true).unwrap();
        drop(dp);

        // What an older agent leaves behind: REVERSE as V1, and no V2.
        std::fs::remove_file(pin_dir.join(names::REVERSE)).unwrap();
        let mut v1 = BpfHashMap::<MapData, Endpoint, ReverseNatV1>::create(DEFAULT_MAX_BACKENDS, 0)
            .expect("create a V1 map");
        v1.insert(b0, ReverseNatV1 { vip: v, vip_index }, 0)
            .unwrap();
        // `pin` consumes the map; the pin keeps it alive.
        v1.pin(pin_dir.join(names::REVERSE_V1)).unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over a V1 map: {e}"));
        assert!(
            !pin_dir.join(names::REVERSE_V1).exists(),
            "the V1 map stays pinned after the migration"
        );
        let v2: BpfHashMap<MapData, Endpoint, ReverseNat> =
            open(names::REVERSE).try_into().unwrap();
        assert_eq!(
            v2.get(&b0, 0).expect("migrated entry"),
            ReverseNat {
                vip: v,
                vip_index,
                backend_slot: slot
            }
        );
        let gw = Gateway::with(dp, bpffs);
        // No apply yet: the reply is translated from the migrated entry alone.
        let reply = frame(
            &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
            &Shape {
                dst_mac: OUT_MAC,
                src_mac: backend_mac(0),
                tcp_flags: SYN | ACK,
                ..Shape::default()
            },
        );
        let before = gw.counters();
        let (action, out) = gw.run(&reply, gw.out_index);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse_flow(&out).src, v.socket_addr());
        assert_eq!(
            l4_deltas(&before, &gw.counters()),
            vec![(b0.socket_addr(), l4(0, 1, 0, 0, 0))]
        );
    });
}

/// Upgrading from an agent whose connection table was `KS_CONNS_V1` (backend and
/// generation only): `load` copies its entries into `KS_CONNS_V2` with an unknown
/// state before the new program runs, so established flows keep their backend across
/// the upgrade and a weight change; their next client packet shows them established,
/// from then on a SYN does not move them either. The old L4 counters
/// (`KS_BACKEND_L4_V1`) are replaced; both V1 maps are unpinned.
#[test]
fn a_pinned_v1_connection_table_is_migrated_on_load() {
    use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
    use keystone_common::{
        FlowKey, FlowState,
        legacy::{FlowStateV1, L4CountersV1},
        limits::ring::DEFAULT_MAX_BACKENDS,
        names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let pair = Pair::new();
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&pair.spec(1, 0)).unwrap();
        run_frame(&dp, &frame(&f, &Shape::default()), 0);
        let pinned = dp.conn(&f.key()).unwrap().expect("the flow is tracked");
        assert_eq!(Some(pinned.backend), dp.backend_slot(&pair.v, &pair.b0));
        dp.shutdown(true).unwrap();
        drop(dp);

        // What an older agent leaves behind: V1 maps, and no V2.
        for name in [names::CONNS, names::BACKEND_L4] {
            std::fs::remove_file(pin_dir.join(name)).unwrap();
        }
        let mut v1 = BpfHashMap::<MapData, FlowKey, FlowStateV1>::create(1024, 0).unwrap();
        let old = FlowStateV1 {
            backend: pinned.backend,
            generation: pinned.generation,
        };
        v1.insert(f.key(), old, 0).unwrap();
        v1.pin(pin_dir.join(names::CONNS_V1)).unwrap();
        PerCpuArray::<MapData, L4CountersV1>::create(DEFAULT_MAX_BACKENDS, 0)
            .unwrap()
            .pin(pin_dir.join(names::BACKEND_L4_V1))
            .unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over V1 maps: {e}"));
        for name in [names::CONNS_V1, names::BACKEND_L4_V1] {
            assert!(!pin_dir.join(name).exists(), "{name} is still pinned");
        }
        assert_eq!(
            dp.conn(&f.key()).unwrap(),
            Some(FlowState::pinned(pinned.backend, pinned.generation)),
            "migrated entry, state unknown"
        );
        let mut gw = Gateway::with(dp, bpffs);
        gw.apply(&pair.spec(0, 1));
        let to0 = pair.b0.socket_addr();
        assert_eq!(send_established(&gw, &f), to0, "moved by the upgrade");
        assert_eq!(send(&gw, &f), to0, "a SYN moved the migrated flow");
    });
}

/// Three VIPs on `backend4(0..)` with small tables, so the later ones sit at non-zero
/// places in the ring array.
fn three_small_vips() -> Vec<VipSpec> {
    (0..3u8)
        .map(|v| {
            let mut spec = vip(
                "small",
                ep(vip4(120 + v), 80, PROTO_TCP),
                mode::NAT,
                (0..2)
                    .map(|b| backend("b", ep(backend4(b), 9000 + u16::from(v), PROTO_TCP), 1))
                    .collect(),
            );
            spec.ring_size = 1009;
            spec
        })
        .collect()
}

/// `limits` size the maps at load; tables are placed in the ring array by the agent
/// (the kernel follows `VipInfo::ring_base`); a pinned data plane of other sizes is
/// refused with the field named, and reused at the same sizes.
#[test]
fn configured_limits_size_the_maps_and_pinned_sizes_must_match() {
    use aya::{maps::MapInfo, programs::ProgramInfo};
    use keystone_agent::dataplane::{ApplyError, Limits, aya_dataplane::sized_maps};
    use keystone_common::names;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let limits = Limits {
            max_vips: 3,
            max_backends: 6,
            ring_entries: 6 * 1009,
            conn_table_entries: 1000,
        };
        let opts = LoadOptions {
            limits,
            ..LoadOptions::new(&pin_dir)
        };
        let mut dp = AyaDataplane::load(opts.clone()).unwrap_or_else(|e| panic!("load: {e}"));
        // The program's own maps, for those not pinned (the next-hop cache); the
        // kernel keeps 15 characters of a name.
        let program_maps: Vec<MapInfo> = ProgramInfo::from_pin(pin_dir.join(names::PROGRAM))
            .and_then(|p| p.map_ids())
            .unwrap_or_else(|e| panic!("the pinned program's maps: {e}"))
            .expect("map ids readable as root")
            .into_iter()
            .map(|id| MapInfo::from_id(id).unwrap_or_else(|e| panic!("map {id}: {e}")))
            .collect();
        for (map, field, entries) in sized_maps(&limits) {
            let pin = pin_dir.join(map);
            let max_entries = if pin.exists() {
                MapInfo::from_pin(pin).unwrap().max_entries()
            } else {
                let kernel_name = &map[..map.len().min(15)];
                program_maps
                    .iter()
                    .find(|m| m.name_as_str() == Some(kernel_name))
                    .unwrap_or_else(|| panic!("{map} is neither pinned nor used by the program"))
                    .max_entries()
            };
            assert_eq!(max_entries, entries, "{map} (limits.{field})");
        }
        let specs = three_small_vips();
        dp.apply(&specs).unwrap_or_else(|e| panic!("apply: {e}"));
        let mut gw = Gateway::with(dp, bpffs);
        // After a weight change every VIP's live table is its second one.
        let mut changed = specs.clone();
        for spec in &mut changed {
            spec.backends[0].weight = 3;
        }
        gw.apply(&changed);
        let mut rng = Rng(0x7363_616c_6500_0001);
        for i in 0..600 {
            let spec = &changed[i % 3];
            let f = random_flow(&mut rng, spec.vip.socket_addr(), PROTO_TCP);
            let want = gw.dp.predict(&spec.vip, &f.key()).expect("prediction");
            assert_eq!(send(&gw, &f), want.socket_addr(), "flow #{i} {f:?}");
        }
        // More than fits is refused before any write.
        let mut four = changed.clone();
        four.push(vip(
            "fourth",
            ep(vip4(130), 80, PROTO_TCP),
            mode::NAT,
            vec![],
        ));
        let err = gw.dp.apply(&four).expect_err("a 4th VIP");
        assert!(
            matches!(err, ApplyError::TooManyVips { max: 3, .. }),
            "{err}"
        );

        gw.dp.shutdown(true).unwrap();
        let Gateway { dp, _bpffs, .. } = gw;
        drop(dp);
        let err = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .expect_err("default limits over pins of other sizes");
        assert!(err.to_string().contains("limits.max_vips is 32"), "{err}");
        let dp = AyaDataplane::load(opts).unwrap_or_else(|e| panic!("reload same limits: {e}"));
        assert!(dp.reused_maps());
        dp.detach().unwrap();
        drop(_bpffs);
    });
}

/// Upgrading from an agent whose VIP map was `KS_VIPS_V1` (tables at fixed stripes of
/// 65,537): `load` fills `KS_VIPS_V2` with each live table's place made explicit,
/// before the new program runs, so new flows keep their picks before the first
/// `apply`; V1 is unpinned, and the first apply does not write over the live table.
#[test]
fn a_pinned_v1_vip_map_is_migrated_on_load() {
    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use keystone_common::{
        VipInfo,
        legacy::{VipInfoV1, v1_ring_base},
        limits::vip::DEFAULT_MAX_VIPS,
        names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let specs = three_small_vips();
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&specs).unwrap();
        let mut rng = Rng(0x7363_616c_6500_0002);
        let flows: Vec<(usize, Flow, Endpoint)> = (0..300)
            .map(|i| {
                let spec = &specs[i % 3];
                let f = random_flow(&mut rng, spec.vip.socket_addr(), PROTO_TCP);
                (
                    i % 3,
                    f,
                    dp.predict(&spec.vip, &f.key()).expect("prediction"),
                )
            })
            .collect();
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(pin_dir.join(name)).unwrap()).unwrap()
        };
        // What an older agent leaves behind: VIPS as V1, each live table at its
        // fixed stripe, and no V2.
        let v2: BpfHashMap<MapData, Endpoint, VipInfo> = open(names::VIPS).try_into().unwrap();
        let infos: Vec<VipInfo> = specs.iter().map(|s| v2.get(&s.vip, 0).unwrap()).collect();
        drop(v2);
        dp.shutdown(true).unwrap();
        drop(dp);
        std::fs::remove_file(pin_dir.join(names::VIPS)).unwrap();
        let mut rings: Array<MapData, u32> = open(names::RINGS).try_into().unwrap();
        let mut v1 = BpfHashMap::<MapData, Endpoint, VipInfoV1>::create(DEFAULT_MAX_VIPS, 0)
            .expect("create a V1 map");
        for (spec, info) in specs.iter().zip(&infos) {
            let table: Vec<u32> = (0..info.ring_size)
                .map(|i| rings.get(&(info.ring_base + i), 0).unwrap())
                .collect();
            // Scrub the V2 place so only the V1 stripe can give the right answer.
            for i in 0..info.ring_size {
                rings.set(info.ring_base + i, u32::MAX, 0).unwrap();
            }
            let base = v1_ring_base(info.index, info.ring_slot);
            for (i, slot) in table.into_iter().enumerate() {
                rings.set(base + i as u32, slot, 0).unwrap();
            }
            let old = VipInfoV1 {
                index: info.index,
                mode: info.mode,
                flags: info.flags,
                ring_slot: info.ring_slot,
                ring_size: info.ring_size,
            };
            v1.insert(spec.vip, old, 0).unwrap();
        }
        drop(rings);
        v1.pin(pin_dir.join(names::VIPS_V1)).unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over a V1 map: {e}"));
        assert!(!pin_dir.join(names::VIPS_V1).exists(), "V1 still pinned");
        let mut gw = Gateway::with(dp, bpffs);
        for (_, f, want) in &flows {
            assert_eq!(send(&gw, f), want.socket_addr(), "before apply: {f:?}");
        }
        gw.apply(&specs);
        for (v, f, want) in &flows {
            assert_eq!(send(&gw, f), want.socket_addr(), "after apply: {f:?}");
            assert_eq!(gw.dp.predict(&specs[*v].vip, &f.key()), Some(*want));
        }
    });
}

#[test]
fn load_refuses_a_pin_dir_outside_bpffs() {
    let dir = std::env::temp_dir().join(format!("keystone-not-bpffs-{}", std::process::id()));
    let err = AyaDataplane::load(LoadOptions::new(&dir)).expect_err("a tmpfs dir is not a bpffs");
    let _ = std::fs::remove_dir(&dir);
    let msg = err.to_string();
    assert!(
        msg.contains("mount -t bpf bpf"),
        "error should say how to fix it: {msg}"
    );
}

// ---------------------------------------------------------------------------
// The next-hop cache (`keystone_common::NextHopCache`).
// ---------------------------------------------------------------------------

/// Where one established packet of `f` goes: (action, destination MAC).
fn hop_of(gw: &Gateway, f: &Flow) -> (u32, [u8; 6]) {
    let input = frame(
        f,
        &Shape {
            tcp_flags: ACK,
            ..Shape::default()
        },
    );
    let (action, out) = gw.run(&input, gw.in_index);
    (action, out[0..6].try_into().unwrap())
}

/// Polls (sending one packet per look) until `f`'s packets go to `want`; panics
/// after a deadline far beyond `limits::forward::NEXT_HOP_TTL_NS`.
fn wait_for_hop(gw: &Gateway, f: &Flow, what: &str, want: (u32, [u8; 6])) {
    keystone_lab::wait_for(what, std::time::Duration::from_secs(5), || {
        let got = hop_of(gw, f);
        Ok(if got == want {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(format!(
                "{} to {}",
                keystone_common::xdp_action_name(got.0),
                mac_str(got.1)
            ))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cached_next_hops_follow_neighbour_changes_and_backend_replacement() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let only = |i: u8| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                vec![backend("b", ep(backend4(i), 8080, PROTO_TCP), 1)],
            )]
        };
        gw.apply(&only(0));
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(0)));

        // The backend now answers at another MAC: its packets follow.
        let moved = [0x02, 0, 0, 0, 2, 0x10];
        let neigh = |mac: [u8; 6]| {
            sh(&[
                "ip",
                "neigh",
                "replace",
                &backend4(0).to_string(),
                "lladdr",
                &mac_str(mac),
                "dev",
                OUT_IF,
                "nud",
                "permanent",
            ])
        };
        neigh(moved);
        wait_for_hop(&gw, &f, "the new neighbour MAC", (XDP_REDIRECT, moved));

        // The neighbour is gone: the rewritten packet goes to the kernel to resolve
        // it (its MACs untouched).
        sh(&[
            "ip",
            "neigh",
            "del",
            &backend4(0).to_string(),
            "dev",
            OUT_IF,
        ]);
        let before = gw.counters();
        wait_for_hop(&gw, &f, "no neighbour: XDP_PASS", (XDP_PASS, IN_MAC));
        assert!(
            gw.counters().reasons[Reason::FibNoNeighbour as usize]
                > before.reasons[Reason::FibNoNeighbour as usize]
        );
        neigh(backend_mac(0));
        wait_for_hop(
            &gw,
            &f,
            "the neighbour back",
            (XDP_REDIRECT, backend_mac(0)),
        );

        // The route to the backend changes to another interface (IN_IF, where the
        // packet came from): XDP_TX with that interface's next hop.
        sh(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", backend4(0)),
            "dev",
            IN_IF,
        ]);
        sh(&[
            "ip",
            "neigh",
            "replace",
            &backend4(0).to_string(),
            "lladdr",
            &mac_str(moved),
            "dev",
            IN_IF,
            "nud",
            "permanent",
        ]);
        wait_for_hop(&gw, &f, "the route via IN_IF", (XDP_TX, moved));
        sh(&[
            "ip",
            "route",
            "del",
            &format!("{}/32", backend4(0)),
            "dev",
            IN_IF,
        ]);
        wait_for_hop(&gw, &f, "the route back", (XDP_REDIRECT, backend_mac(0)));

        // Another backend in the flow's place takes effect with the very next
        // packet, well within the cache's lifetime: a new slot has no entry, and a
        // slot given to another backend has a new generation, which the entry of its
        // previous owner does not match.
        let slot_of =
            |gw: &Gateway, i: u8| gw.dp.backend_slot(&v, &ep(backend4(i), 8080, PROTO_TCP));
        let first_slot = slot_of(&gw, 0);
        gw.apply(&only(1));
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(1)));
        gw.apply(&only(2));
        assert_eq!(
            slot_of(&gw, 2),
            first_slot,
            "the third backend should reuse the first one's slot (what this step tests)"
        );
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(2)));
    });
}

// ---------------------------------------------------------------------------
// ICMP path-MTU errors for VIP flows (keystone_common::Event::IcmpToBackend).
// ---------------------------------------------------------------------------

/// Routers on the client side that report a smaller MTU towards the client.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const FRAG_NEEDED: (u8, u8) = (3, 4);
const PACKET_TOO_BIG: (u8, u8) = (2, 0);

/// The start of a VIP flow's reply packet (IP header onwards), cut to `len` bytes,
/// as a router quotes it in an ICMP error.
fn reply_quote(reply: &Flow, len: usize) -> Vec<u8> {
    let f = frame(
        reply,
        &Shape {
            tcp_flags: ACK,
            payload: 64,
            ..Shape::default()
        },
    );
    f[14..14 + len.min(f.len() - 14)].to_vec()
}

/// A quote as the program leaves it in `nat` mode: the source is the backend's
/// address and port, the IPv4 header checksum is valid again, and the L4 checksum
/// is left as quoted.
fn natted_quote(quote: &[u8], to: SocketAddr) -> Vec<u8> {
    let mut q = quote.to_vec();
    let port = to.port().to_be_bytes();
    if q[0] >> 4 == 4 {
        q[12..16].copy_from_slice(&octets(to.ip()));
        q[20..22].copy_from_slice(&port);
        q[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&q[..20], 0));
        q[10..12].copy_from_slice(&c.to_ne_bytes());
    } else {
        q[8..24].copy_from_slice(&octets(to.ip()));
        q[40..42].copy_from_slice(&port);
    }
    q
}

/// (what, input, action, output, reason counted, counts `Event::IcmpToBackend`).
type IcmpCase = (String, Vec<u8>, u32, Expect, Option<Reason>, bool);

fn event_deltas(before: &Counters, after: &Counters) -> Vec<(Event, u64)> {
    Event::ALL
        .iter()
        .filter_map(|&e| {
            let d = after.events[e as usize] - before.events[e as usize];
            (d != 0).then_some((e, d))
        })
        .collect()
}

/// A path-MTU error about a VIP flow reaches the flow's backend (nat: rewritten
/// outer destination and quoted source, all checksums right; dsr: MACs only); other
/// ICMP to a VIP address is passed untouched and uncounted.
#[test]
fn icmp_path_mtu_errors_reach_the_flows_backend() {
    in_netns(|| {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        let inn = gw.in_index;
        let from = |v4: bool| -> IpAddr { if v4 { ROUTER4.into() } else { ROUTER6.into() } };
        let d = Shape::default();
        let out_shape = |mac| Shape {
            dst_mac: mac,
            src_mac: OUT_MAC,
            ttl: 63,
            ..Shape::default()
        };
        let mut cases: Vec<IcmpCase> = Vec::new();
        // (what, reply flow of the VIP, quote length, backend, its MAC, mode nat?)
        for (what, reply, len, to, mac, nat) in [
            (
                "nat tcp/ipv4, quote of IP header + 8 bytes",
                flow("198.18.0.100:80", "198.18.0.2:40000", PROTO_TCP),
                28,
                "198.18.1.10:8080",
                backend_mac(0),
                true,
            ),
            (
                "nat tcp/ipv4, whole packet quoted",
                flow("198.18.0.100:80", "198.18.0.2:40001", PROTO_TCP),
                usize::MAX,
                "198.18.1.10:8080",
                backend_mac(0),
                true,
            ),
            (
                "nat udp/ipv4, quoted UDP checksum left as is",
                flow("198.18.0.100:53", "198.18.0.2:40002", PROTO_UDP),
                usize::MAX,
                "198.18.1.11:5353",
                backend_mac(1),
                true,
            ),
            (
                "nat tcp/ipv6 packet too big",
                flow("[2001:db8::100]:80", "[2001:db8::2]:40000", PROTO_TCP),
                usize::MAX,
                "[2001:db8:1::10]:8080",
                backend_mac(0),
                true,
            ),
            (
                "nat udp/ipv6 packet too big, quote of IP header + 8 bytes",
                flow("[2001:db8::100]:53", "[2001:db8::2]:40001", PROTO_UDP),
                48,
                "[2001:db8:1::11]:5353",
                backend_mac(1),
                true,
            ),
            (
                "dsr tcp/ipv4: MACs only",
                flow("198.18.0.101:80", "198.18.0.2:40003", PROTO_TCP),
                usize::MAX,
                "198.18.1.12:80",
                backend_mac(2),
                false,
            ),
            (
                "dsr tcp/ipv6: MACs only",
                flow("[2001:db8::101]:80", "[2001:db8::2]:40003", PROTO_TCP),
                usize::MAX,
                "[2001:db8:1::12]:80",
                backend_mac(2),
                false,
            ),
        ] {
            let v4 = reply.src.is_ipv4();
            let (icmp, vip) = (
                if v4 { FRAG_NEEDED } else { PACKET_TOO_BIG },
                reply.src.ip(),
            );
            let quote = reply_quote(&reply, len);
            let input = icmp_frame(from(v4), vip, icmp, 1400, &quote, &d);
            let to: SocketAddr = to.parse().unwrap();
            let output = if nat {
                icmp_frame(
                    from(v4),
                    to.ip(),
                    icmp,
                    1400,
                    &natted_quote(&quote, to),
                    &out_shape(mac),
                )
            } else {
                with_macs(input.clone(), mac, OUT_MAC)
            };
            cases.push((
                what.into(),
                input,
                XDP_REDIRECT,
                Expect::Frame(output),
                None,
                true,
            ));
        }

        let v4_error = |reply: &str, client: &str, proto, icmp, len, ttl| {
            let reply = flow(reply, client, proto);
            let s = Shape {
                ttl,
                ..Shape::default()
            };
            icmp_frame(
                ROUTER4.into(),
                reply.src.ip(),
                icmp,
                1400,
                &reply_quote(&reply, len),
                &s,
            )
        };
        let tcp_error = |vip: &str, icmp, len, ttl| {
            v4_error(vip, "198.18.0.2:40010", PROTO_TCP, icmp, len, ttl)
        };
        // Exceptions on the way to the backend, as for the flow's own packets.
        cases.push((
            "nat, TTL 1 -> pass untouched".into(),
            tcp_error("198.18.0.100:80", FRAG_NEEDED, 28, 1),
            XDP_PASS,
            Expect::Same,
            Some(Reason::TtlExpired),
            false,
        ));
        cases.push((
            "VIP without backends -> drop".into(),
            tcp_error("198.18.0.106:80", FRAG_NEEDED, 28, 64),
            XDP_DROP,
            Expect::Any,
            Some(Reason::NoBackend),
            false,
        ));
        cases.push((
            "nat, backend without neighbour -> rewritten, pass".into(),
            tcp_error("198.18.0.103:80", FRAG_NEEDED, 28, 64),
            XDP_PASS,
            Expect::Any,
            Some(Reason::FibNoNeighbour),
            true,
        ));
        // Not ours: pass untouched, nothing counted.
        for (what, input) in [
            (
                "fragmentation needed quoting a VIP address on a port that is no VIP",
                tcp_error("198.18.0.100:81", FRAG_NEEDED, 28, 64),
            ),
            (
                "fragmentation needed quoting the TCP VIP's port over UDP",
                v4_error(
                    "198.18.0.101:80",
                    "198.18.0.2:40010",
                    PROTO_UDP,
                    FRAG_NEEDED,
                    28,
                    64,
                ),
            ),
            (
                "host unreachable (3/1) about a VIP flow",
                tcp_error("198.18.0.100:80", (3, 1), 28, 64),
            ),
            (
                "time exceeded about a VIP flow",
                tcp_error("198.18.0.100:80", (11, 0), 28, 64),
            ),
            (
                "fragmentation needed quoting only 4 bytes of TCP",
                tcp_error("198.18.0.100:80", FRAG_NEEDED, 24, 64),
            ),
            (
                "fragmentation needed quoting an IP header only",
                tcp_error("198.18.0.100:80", FRAG_NEEDED, 20, 64),
            ),
        ] {
            cases.push((what.into(), input, XDP_PASS, Expect::Same, None, false));
        }
        // The quoted source is a VIP, but the error is sent to another address.
        let reply = flow("198.18.0.100:80", "198.18.0.2:40011", PROTO_TCP);
        cases.push((
            "fragmentation needed to an address other than the quoted VIP".into(),
            icmp_frame(
                ROUTER4.into(),
                vip4(101).into(),
                FRAG_NEEDED,
                1400,
                &reply_quote(&reply, 28),
                &d,
            ),
            XDP_PASS,
            Expect::Same,
            None,
            false,
        ));
        // An IPv4 quote with options (the program never forwards such a reply).
        let mut quote = reply_quote(&reply, 28);
        quote[0] = 0x46;
        quote.splice(20..20, [1, 1, 1, 0]);
        cases.push((
            "fragmentation needed quoting an IPv4 header with options".into(),
            icmp_frame(
                ROUTER4.into(),
                vip4(100).into(),
                FRAG_NEEDED,
                1400,
                &quote,
                &d,
            ),
            XDP_PASS,
            Expect::Same,
            None,
            false,
        ));
        let reply6 = flow("[2001:db8::100]:80", "[2001:db8::2]:40012", PROTO_TCP);
        cases.push((
            "ICMPv6 destination unreachable about a VIP flow".into(),
            icmp_frame(
                ROUTER6.into(),
                vip6(0x100).into(),
                (1, 0),
                0,
                &reply_quote(&reply6, usize::MAX),
                &d,
            ),
            XDP_PASS,
            Expect::Same,
            None,
            false,
        ));

        for (what, input, want_action, output, reason, event) in cases {
            let before = gw.counters();
            let (action, out) = gw.run(&input, inn);
            let after = gw.counters();
            assert_eq!(
                action,
                want_action,
                "{what}: action {}; reasons moved: {:?}",
                keystone_common::xdp_action_name(action),
                reason_deltas(&before, &after)
            );
            match output {
                Expect::Same => assert_eq!(hex(&out), hex(&input), "{what}: frame changed"),
                Expect::Frame(want) => assert_eq!(hex(&out), hex(&want), "{what}: output frame"),
                Expect::Any => {}
            }
            let want: Vec<(Reason, u64)> = reason.map(|r| vec![(r, 1)]).unwrap_or_default();
            assert_eq!(reason_deltas(&before, &after), want, "{what}: reasons");
            let want: Vec<(Event, u64)> = if event {
                vec![(Event::IcmpToBackend, 1)]
            } else {
                Vec::new()
            };
            assert_eq!(event_deltas(&before, &after), want, "{what}: events");
        }
    });
}

/// The backend that owns the flow is the pinned one, not today's Maglev pick; an
/// untracked flow's error goes to the live pick and pins nothing.
#[test]
fn icmp_errors_follow_the_pinned_backend() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let (b0, b1) = (
            ep(backend4(0), 8080, PROTO_TCP),
            ep(backend4(1), 8080, PROTO_TCP),
        );
        let spec = |w0, w1| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                vec![backend("b0", b0, w0), backend("b1", b1, w1)],
            )]
        };
        let error_goes_to = |gw: &Gateway, f: &Flow| {
            let reply = flow(&f.dst.to_string(), &f.src.to_string(), f.proto);
            let input = icmp_frame(
                ROUTER4.into(),
                vip4(100).into(),
                FRAG_NEEDED,
                1400,
                &reply_quote(&reply, 28),
                &Shape::default(),
            );
            let (action, out) = gw.run(&input, gw.in_index);
            assert_eq!(action, XDP_REDIRECT, "ICMP error about {f:?}");
            let l3 = l3_offset(&out);
            let quoted_src = &out[l3 + 20 + 8 + 12..l3 + 20 + 8 + 16];
            let quoted_port = u16::from_be_bytes([out[l3 + 48], out[l3 + 49]]);
            let outer_dst = &out[l3 + 16..l3 + 20];
            assert_eq!(outer_dst, quoted_src, "outer destination = quoted source");
            SocketAddr::new(
                Ipv4Addr::from(<[u8; 4]>::try_from(quoted_src).unwrap()).into(),
                quoted_port,
            )
        };
        gw.apply(&spec(1, 0));
        let pinned = flow("198.18.0.2:41000", "198.18.0.100:80", PROTO_TCP);
        assert_eq!(send(&gw, &pinned), b0.socket_addr());
        gw.apply(&spec(0, 1));
        assert_eq!(
            error_goes_to(&gw, &pinned),
            b0.socket_addr(),
            "pinned flow's error"
        );
        let untracked = flow("198.18.0.2:41001", "198.18.0.100:80", PROTO_TCP);
        assert_eq!(error_goes_to(&gw, &untracked), b1.socket_addr());
        assert_eq!(
            gw.dp.conn(&untracked.key()).expect("read CONNS"),
            None,
            "an ICMP error must not pin a flow"
        );
    });
}

/// A TCP packet without SYN that finds no connection-table entry (evicted, or
/// tracked elsewhere) is re-picked and counted as `Event::UntrackedMidFlow`; a SYN,
/// a tracked packet and UDP are not.
#[test]
fn untracked_mid_flow_packets_are_counted() {
    in_netns(|| {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        let untracked = |gw: &Gateway| gw.counters().events[Event::UntrackedMidFlow as usize];
        let tcp = flow("198.18.0.2:43000", "198.18.0.100:80", PROTO_TCP);
        let udp = flow("198.18.0.2:43000", "198.18.0.100:53", PROTO_UDP);
        let before = untracked(&gw);
        send(&gw, &tcp);
        send_established(&gw, &tcp);
        send(&gw, &udp);
        send(&gw, &udp);
        assert_eq!(untracked(&gw), before, "SYN, tracked ACK and UDP");
        for (i, flags) in [ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK]
            .into_iter()
            .enumerate()
        {
            let f = flow(
                &format!("198.18.0.2:{}", 43001 + i),
                "198.18.0.100:80",
                PROTO_TCP,
            );
            assert_eq!(
                send_flags(&gw, &f, flags),
                "198.18.1.10:8080".parse().unwrap()
            );
            assert_eq!(untracked(&gw), before + 1 + i as u64, "flags {flags:#x}");
            assert!(
                gw.dp.conn(&f.key()).expect("read CONNS").is_some(),
                "re-pinned"
            );
            send_flags(&gw, &f, ACK);
            assert_eq!(untracked(&gw), before + 1 + i as u64, "now tracked");
        }
    });
}
