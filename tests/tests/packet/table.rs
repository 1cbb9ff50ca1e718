//! The case tables' one shape and one runner, after Katran's `PacketAttributes`
//! fixtures: a row is a description, an input frame built with the `xdp` forge
//! helpers, the interface it arrives on, the expected XDP action and output frame,
//! and the one reason and event counter that must move.

use keystone_agent::dataplane::VipSpec;
use keystone_common::{Event, PROTO_TCP, PROTO_UDP, Reason, mode};
use keystone_lab::xdp::*;

#[derive(Debug)]
pub enum Expect {
    /// Output identical to the input.
    Same,
    /// Output exactly this frame.
    Frame(Vec<u8>),
    /// Output not checked (e.g. a dropped frame).
    Any,
}

/// The gateway interface a case's frame arrives on.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// From the client (the interface that holds the VIPs' route).
    Client,
    /// From the backends' side.
    Backends,
}

/// One row of a case table.
pub struct Case {
    pub what: String,
    pub input: Vec<u8>,
    pub ingress: Side,
    pub action: u32,
    pub output: Expect,
    /// The one reason counter that must go up by one (none: no reason counter moves).
    pub reason: Option<Reason>,
    /// The one event counter that must go up by one (none: no event counter moves).
    pub event: Option<Event>,
}

impl Case {
    /// `input` from the client side must give `action` and `output`, moving no
    /// reason or event counter unless [`Case::reason`] or [`Case::event`] say so.
    pub fn new(what: impl Into<String>, input: Vec<u8>, action: u32, output: Expect) -> Self {
        Case {
            what: what.into(),
            input,
            ingress: Side::Client,
            action,
            output,
            reason: None,
            event: None,
        }
    }

    /// Arrives from the backends' side.
    pub fn arriving_from_backends(self) -> Self {
        Case {
            ingress: Side::Backends,
            ..self
        }
    }

    pub fn reason(self, reason: Reason) -> Self {
        Case {
            reason: Some(reason),
            ..self
        }
    }

    pub fn event(self, event: Event) -> Self {
        Case {
            event: Some(event),
            ..self
        }
    }
}

/// The standard config for the case table.
pub fn case_config() -> Vec<VipSpec> {
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

/// Runs every case of `table` through a gateway programmed with [`case_config`],
/// each against the counters as the case before left them.
pub fn run(table: fn() -> Vec<Case>) {
    in_netns(move || {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        for c in table() {
            check(&gw, &c);
        }
    });
}

fn check(gw: &Gateway, c: &Case) {
    let what = &c.what;
    if gw.hook == Hook::Tc && !skb_buildable(&c.input) {
        return;
    }
    let ingress = match c.ingress {
        Side::Client => gw.in_index,
        Side::Backends => gw.out_index,
    };
    let before = gw.counters();
    let (action, out) = gw.run(&c.input, ingress);
    let after = gw.counters();
    assert_eq!(
        action,
        c.action,
        "{what}: action {} (want {}); reasons moved: {:?}",
        keystone_common::xdp_action_name(action),
        keystone_common::xdp_action_name(c.action),
        reason_deltas(&before, &after)
    );
    match &c.output {
        Expect::Same => assert_eq!(hex(&out), hex(&c.input), "{what}: frame changed"),
        Expect::Frame(want) => {
            assert_eq!(hex(&out), hex(want), "{what}: output frame");
            // (An ICMP error's checksums are those of the exact frame compared above.)
            if matches!(parse_flow(&out).proto, PROTO_TCP | PROTO_UDP) {
                assert_checksums(what, &out);
            }
        }
        Expect::Any => {}
    }
    let want: Vec<(Reason, u64)> = c.reason.map(|r| vec![(r, 1)]).unwrap_or_default();
    assert_eq!(
        reason_deltas(&before, &after),
        want,
        "{what}: reason counters"
    );
    let want: Vec<(Event, u64)> = c.event.map(|e| vec![(e, 1)]).unwrap_or_default();
    assert_eq!(
        event_deltas(&before, &after),
        want,
        "{what}: event counters"
    );
    assert_eq!(
        after.actions[action as usize] - before.actions[action as usize],
        1,
        "{what}: ACTION_STATS[{}] must count the packet",
        keystone_common::xdp_action_name(action)
    );
}
