//! NAT, client -> VIP: the destination becomes the backend, the frame leaves by
//! redirect or `XDP_TX`, or with a counted reason for the kernel.

use keystone_common::{PROTO_TCP, PROTO_UDP, Reason};
use keystone_lab::xdp::*;

use crate::table::{Case, Expect::*, run};

fn cases() -> Vec<Case> {
    let d = Shape::default();
    let mut cases = Vec::new();
    // (what, flow, flow after the rewrite, backend MAC, frame shape): redirected.
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
        let output = Frame(natted(to, &s, mac, OUT_MAC));
        cases.push(Case::new(what, frame(&f, &s), XDP_REDIRECT, output));
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
    let client = format!("198.18.0.2:{zero_port}");
    let (f, to) = (
        flow(&client, "198.18.0.100:53", PROTO_UDP),
        flow(&client, "198.18.1.11:5353", PROTO_UDP),
    );
    cases.push(Case::new(
        "nat udp/ipv4 whose new checksum is 0 sends 0xffff",
        frame(&f, &d),
        XDP_REDIRECT,
        Frame(natted(to, &d, backend_mac(1), OUT_MAC)),
    ));

    // (what, flow, flow after the rewrite, action, MACs after, reason counted).
    for (what, f, to, action, (dst_mac, src_mac), reason) in [
        (
            "nat to a backend out of the ingress interface -> XDP_TX",
            flow("198.18.0.2:40010", "198.18.0.102:80", PROTO_TCP),
            flow("198.18.0.2:40010", "198.18.0.20:8080", PROTO_TCP),
            XDP_TX,
            (TX_BACKEND_MAC, IN_MAC),
            None,
        ),
        // No neighbour or no route: rewritten, MACs untouched, XDP_PASS for the kernel.
        (
            "nat, backend without neighbour entry -> rewritten, XDP_PASS",
            flow("198.18.0.2:40011", "198.18.0.103:80", PROTO_TCP),
            flow("198.18.0.2:40011", "198.18.1.99:8080", PROTO_TCP),
            XDP_PASS,
            (IN_MAC, CLIENT_MAC),
            Some(Reason::FibNoNeighbour),
        ),
        (
            "nat, no route to backend -> rewritten, XDP_PASS",
            flow("198.18.0.2:40012", "198.18.0.104:80", PROTO_TCP),
            flow("198.18.0.2:40012", "198.19.200.10:8080", PROTO_TCP),
            XDP_PASS,
            (IN_MAC, CLIENT_MAC),
            Some(Reason::FibFailed),
        ),
    ] {
        let mut c = Case::new(
            what,
            frame(&f, &d),
            action,
            Frame(natted(to, &d, dst_mac, src_mac)),
        );
        c.reason = reason;
        cases.push(c);
    }

    let ttl1 = Shape {
        ttl: 1,
        ..d.clone()
    };
    cases.extend([
        Case::new(
            "nat, TTL 1 -> XDP_PASS untouched",
            frame(
                &flow("198.18.0.2:40020", "198.18.0.100:80", PROTO_TCP),
                &ttl1,
            ),
            XDP_PASS,
            Same,
        )
        .reason(Reason::TtlExpired),
        Case::new(
            "nat, hop limit 1 -> XDP_PASS untouched",
            frame(
                &flow("[2001:db8::2]:40020", "[2001:db8::100]:80", PROTO_TCP),
                &ttl1,
            ),
            XDP_PASS,
            Same,
        )
        .reason(Reason::TtlExpired),
        Case::new(
            "VIP whose only backend has weight 0 -> XDP_DROP",
            frame(&flow("198.18.0.2:40030", "198.18.0.106:80", PROTO_TCP), &d),
            XDP_DROP,
            Any,
        )
        .reason(Reason::NoBackend),
    ]);
    cases
}

#[test]
fn table() {
    run(cases);
}
