//! Replies arriving from the backends' side: a nat backend's answer to a client is
//! reverse-translated (source becomes the VIP); answers to the gateway itself and
//! packets from dsr backends pass untouched.

use keystone_common::{
    PROTO_TCP, PROTO_UDP, Reason,
    tcp_flags::{ACK, SYN},
};
use keystone_lab::xdp::*;

use crate::table::{Case, Expect::*, run};

fn cases() -> Vec<Case> {
    let d = Shape::default();
    let from_backend = |i| Shape {
        dst_mac: OUT_MAC,
        src_mac: backend_mac(i),
        ..d.clone()
    };
    let mut cases = Vec::new();
    // (what, reply, the reply as the client gets it, frame shape).
    for (what, reply, want, s) in [
        (
            "reply tcp/ipv4 from a nat backend: source becomes the VIP",
            flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
            flow("198.18.0.100:80", "198.18.0.2:40000", PROTO_TCP),
            from_backend(0),
        ),
        (
            "reply udp/ipv4 from a nat backend",
            flow("198.18.1.11:5353", "198.18.0.2:40001", PROTO_UDP),
            flow("198.18.0.100:53", "198.18.0.2:40001", PROTO_UDP),
            from_backend(1),
        ),
        (
            "reply tcp/ipv6 from a nat backend",
            flow("[2001:db8:1::10]:8080", "[2001:db8::2]:40000", PROTO_TCP),
            flow("[2001:db8::100]:80", "[2001:db8::2]:40000", PROTO_TCP),
            from_backend(0),
        ),
        (
            "reply udp/ipv6 in a VLAN tag",
            flow("[2001:db8:1::11]:5353", "[2001:db8::2]:40001", PROTO_UDP),
            flow("[2001:db8::100]:53", "[2001:db8::2]:40001", PROTO_UDP),
            Shape {
                vlan: Some((0x8100, 9)),
                ..from_backend(1)
            },
        ),
    ] {
        let output = Frame(frame(
            &want,
            &Shape {
                dst_mac: CLIENT_MAC,
                src_mac: IN_MAC,
                ttl: s.ttl - 1,
                ..s.clone()
            },
        ));
        cases.push(
            Case::new(what, frame(&reply, &s), XDP_REDIRECT, output).arriving_from_backends(),
        );
    }
    cases.push(
        Case::new(
            "reply with TTL 1 -> XDP_PASS untouched",
            frame(
                &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
                &Shape {
                    ttl: 1,
                    ..from_backend(0)
                },
            ),
            XDP_PASS,
            Same,
        )
        .arriving_from_backends()
        .reason(Reason::TtlExpired),
    );
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
        let s = Shape {
            tcp_flags: SYN | ACK,
            ..from_backend(i)
        };
        cases.push(Case::new(what, frame(&f, &s), XDP_PASS, Same).arriving_from_backends());
    }
    cases.push(
        Case::new(
            "packet from a dsr backend is not reverse-translated",
            frame(
                &flow("198.18.1.12:80", "198.18.0.2:40000", PROTO_TCP),
                &from_backend(2),
            ),
            XDP_PASS,
            Same,
        )
        .arriving_from_backends(),
    );
    cases
}

#[test]
fn table() {
    run(cases);
}
