//! The connection table: reused tuples, FIN/RST/idle, the handshake, and
//! untracked mid-flow packets.
//!
//! A TCP SYN without ACK is a new connection even when its 4-tuple is still in the
//! connection table (a client reusing the source port of a closed connection): it is
//! picked through the live table, like IPVS's `conn_reuse_mode`, while the tuple's
//! established packets keep their backend.

use super::*;
use crate::l4_counters::{l4, l4_deltas};

/// One nat VIP (`vip4(100)`:80) over b0 and b1 (`backend4(0|1)`:8080), for the
/// connection-reuse tests.
pub(crate) struct Pair {
    pub(crate) v: Endpoint,
    pub(crate) b0: Endpoint,
    pub(crate) b1: Endpoint,
}

impl Pair {
    pub(crate) fn new() -> Self {
        Pair {
            v: ep(vip4(100), 80, PROTO_TCP),
            b0: ep(backend4(0), 8080, PROTO_TCP),
            b1: ep(backend4(1), 8080, PROTO_TCP),
        }
    }

    pub(crate) fn spec(&self, w0: u32, w1: u32) -> Vec<VipSpec> {
        vec![vip(
            "v",
            self.v,
            mode::NAT,
            vec![backend("b0", self.b0, w0), backend("b1", self.b1, w1)],
        )]
    }

    /// The backend (b0 or b1) at `addr`, and its MAC index.
    pub(crate) fn which(&self, addr: SocketAddr) -> (Endpoint, u8) {
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

pub(crate) fn pinned_slot(gw: &Gateway, f: &Flow) -> Option<u32> {
    gw.dp
        .conn(&f.key())
        .expect("read CONNS")
        .map(|state| state.backend)
}

/// Backend `b` (MAC index `i`) answers client flow `f` with `tcp_flags`; returns the
/// action (the reply is translated back to the client).
pub(crate) fn reply(gw: &Gateway, f: &Flow, b: &Endpoint, i: u8, tcp_flags: u8) -> u32 {
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
pub(crate) fn establish(gw: &Gateway, pair: &Pair, f: &Flow) -> SocketAddr {
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
pub(crate) fn reuse_flows() -> Vec<Flow> {
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
        // An entry idle just under the bound is still live. `seen` is when the flow
        // was established, earlier in this test: the margin (30 ticks, ~32 s) covers
        // the test's own run time on a busy machine.
        let f = &flows[ends.len()];
        let mut map = conns();
        let mut state = map.get(&f.key(), 0).expect("entry");
        state.seen = state.seen.wrapping_sub(REUSE_IDLE_TICKS - 30);
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
