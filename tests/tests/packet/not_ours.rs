//! Not for a VIP: passed byte-identical, and counted only when not IP at all.

use keystone_common::{PROTO_TCP, PROTO_UDP, Reason};
use keystone_lab::xdp::*;

use crate::table::{Case, Expect::*, run};

fn cases() -> Vec<Case> {
    let d = Shape::default();
    let mut cases = Vec::new();
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
        cases.push(Case::new(what, frame(&f, &d), XDP_PASS, Same));
    }
    let mut icmp = frame(&flow("198.18.0.2:0", "198.18.0.100:0", PROTO_TCP), &d);
    icmp[14 + 9] = 1; // ICMP; checksums are irrelevant to the program
    let mut arp = vec![0xff; 6];
    arp.extend(CLIENT_MAC);
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    let mut qinq = frame(
        &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
        &Shape {
            vlan: Some((0x88a8, 1)),
            ..d.clone()
        },
    );
    qinq[16..18].copy_from_slice(&0x8100u16.to_be_bytes()); // a second tag
    cases.extend([
        Case::new("icmp to a VIP address", icmp, XDP_PASS, Same),
        Case::new("ARP", arp, XDP_PASS, Same).reason(Reason::NotIp),
        Case::new("two VLAN tags", qinq, XDP_PASS, Same).reason(Reason::NotIp),
    ]);
    cases
}

#[test]
fn table() {
    run(cases);
}
