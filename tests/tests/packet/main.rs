//! Packet tests: crafted frames through `BPF_PROG_TEST_RUN`, with the maps programmed
//! by the agent's own `AyaDataplane::apply`.
//!
//! Each test runs in a thread that moves into a fresh network namespace it sets up
//! (veth pairs, addresses from 198.18.0.0/15 and 2001:db8::/32, static neighbours),
//! so `bpf_fib_lookup` gives deterministic answers; the program and its maps are
//! pinned in a bpffs mounted for the test. Everything is removed on drop.
//!
//! The frame-in, frame-out cases are tables, one file per group (`nat`, `dsr`,
//! `reply`, `not_ours`, `malformed`, `icmp`), run by `table::run`; the other files
//! test state across packets (choice, connection table, L4 counters, pins, next
//! hops). One directory, one test binary: one link of the agent and aya for all.
//!
//! Needs root: `cargo test -p keystone-tests --test packet`.

mod choice;
mod conns;
mod cpus;
mod dsr;
mod icmp;
mod l4_counters;
mod malformed;
mod nat;
mod next_hop;
mod not_ours;
mod pins;
mod reply;
mod table;
mod table_hash;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_agent::dataplane::{AyaDataplane, Counters, Dataplane, LoadOptions, VipSpec};
use keystone_common::{
    Endpoint, Event, L4Counters, PROTO_TCP, PROTO_UDP, Reason, mode,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
    vip_flags,
};
use keystone_lab::xdp::*;
use table::case_config;

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
