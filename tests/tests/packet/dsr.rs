//! DSR, client -> VIP: only the MACs change.

use keystone_common::{PROTO_TCP, Reason};
use keystone_lab::xdp::*;

use crate::table::{Case, Expect::*, run};

fn cases() -> Vec<Case> {
    let d = Shape::default();
    let mut cases = Vec::new();
    // (what, flow, backend MAC, frame shape): redirected with new MACs only.
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
        let output = Frame(with_macs(input.clone(), mac, OUT_MAC));
        cases.push(Case::new(what, input, XDP_REDIRECT, output));
    }
    cases.extend([
        Case::new(
            "dsr, backend without neighbour -> XDP_PASS untouched",
            frame(&flow("198.18.0.2:41002", "198.18.0.105:80", PROTO_TCP), &d),
            XDP_PASS,
            Same,
        )
        .reason(Reason::FibNoNeighbour),
        Case::new(
            "dsr, TTL 1 is forwarded anyway (IP untouched)",
            frame(
                &flow("198.18.0.2:41003", "198.18.0.101:80", PROTO_TCP),
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            XDP_REDIRECT,
            Any,
        ),
    ]);
    cases
}

#[test]
fn table() {
    run(cases);
}
