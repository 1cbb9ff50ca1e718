//! ICMP path-MTU errors for VIP flows (keystone_common::Event::IcmpToBackend).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_common::{Event, PROTO_TCP, PROTO_UDP, Reason, checksum, mode, tcp_flags::ACK};
use keystone_lab::xdp::*;

use crate::send;
use crate::table::{Case, Expect::*, run};

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

/// A path-MTU error about a VIP flow reaches the flow's backend (nat: rewritten
/// outer destination and quoted source, all checksums right; dsr: MACs only); other
/// ICMP to a VIP address is passed untouched and uncounted.
#[test]
fn icmp_path_mtu_errors_reach_the_flows_backend() {
    run(cases);
}

fn cases() -> Vec<Case> {
    let from = |v4: bool| -> IpAddr { if v4 { ROUTER4.into() } else { ROUTER6.into() } };
    let d = Shape::default();
    let out_shape = |mac| Shape {
        dst_mac: mac,
        src_mac: OUT_MAC,
        ttl: 63,
        ..Shape::default()
    };
    let mut cases = Vec::new();
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
        cases.push(Case::new(what, input, XDP_REDIRECT, Frame(output)).event(Event::IcmpToBackend));
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
    let tcp_error =
        |vip: &str, icmp, len, ttl| v4_error(vip, "198.18.0.2:40010", PROTO_TCP, icmp, len, ttl);
    // Exceptions on the way to the backend, as for the flow's own packets.
    cases.extend([
        Case::new(
            "nat, TTL 1 -> pass untouched",
            tcp_error("198.18.0.100:80", FRAG_NEEDED, 28, 1),
            XDP_PASS,
            Same,
        )
        .reason(Reason::TtlExpired),
        Case::new(
            "VIP without backends -> drop",
            tcp_error("198.18.0.106:80", FRAG_NEEDED, 28, 64),
            XDP_DROP,
            Any,
        )
        .reason(Reason::NoBackend),
        Case::new(
            "nat, backend without neighbour -> rewritten, pass",
            tcp_error("198.18.0.103:80", FRAG_NEEDED, 28, 64),
            XDP_PASS,
            Any,
        )
        .reason(Reason::FibNoNeighbour)
        .event(Event::IcmpToBackend),
    ]);
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
        cases.push(Case::new(what, input, XDP_PASS, Same));
    }
    // The quoted source is a VIP, but the error is sent to another address.
    let reply = flow("198.18.0.100:80", "198.18.0.2:40011", PROTO_TCP);
    let elsewhere = icmp_frame(
        ROUTER4.into(),
        vip4(101).into(),
        FRAG_NEEDED,
        1400,
        &reply_quote(&reply, 28),
        &d,
    );
    // An IPv4 quote with options (the program never forwards such a reply).
    let mut quote = reply_quote(&reply, 28);
    quote[0] = 0x46;
    quote.splice(20..20, [1, 1, 1, 0]);
    let options = icmp_frame(
        ROUTER4.into(),
        vip4(100).into(),
        FRAG_NEEDED,
        1400,
        &quote,
        &d,
    );
    let reply6 = flow("[2001:db8::100]:80", "[2001:db8::2]:40012", PROTO_TCP);
    let unreachable6 = icmp_frame(
        ROUTER6.into(),
        vip6(0x100).into(),
        (1, 0),
        0,
        &reply_quote(&reply6, usize::MAX),
        &d,
    );
    for (what, input) in [
        (
            "fragmentation needed to an address other than the quoted VIP",
            elsewhere,
        ),
        (
            "fragmentation needed quoting an IPv4 header with options",
            options,
        ),
        (
            "ICMPv6 destination unreachable about a VIP flow",
            unreachable6,
        ),
    ] {
        cases.push(Case::new(what, input, XDP_PASS, Same));
    }
    cases
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
