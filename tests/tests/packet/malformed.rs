//! Truncated at every header boundary, bad header fields, fragments and IPv6
//! extension headers: dropped and counted when addressed to a VIP, passed
//! untouched otherwise.

use keystone_common::{PROTO_TCP, PROTO_UDP, Reason, checksum};
use keystone_lab::xdp::*;

use crate::table::{Case, Expect::*, run};

/// The frame readdressed to the gateway (198.18.0.1 or 2001:db8::1): no VIP.
fn to_other(base: &[u8], v6: bool) -> Vec<u8> {
    let mut v = base.to_vec();
    if v6 {
        v[14 + 38] = 0; // 2001:db8::1
        v[14 + 39] = 1;
    } else {
        v[14 + 19] = 1;
    }
    v
}

fn mutate(base: &[u8], f: &dyn Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = base.to_vec();
    f(&mut v);
    v
}

/// An IPv4 frame with `bits` as its flags and fragment offset (header checksum fixed).
fn frag(base: &[u8], bits: u16) -> Vec<u8> {
    let mut v = base.to_vec();
    v[14 + 6..14 + 8].copy_from_slice(&bits.to_be_bytes());
    v[14 + 10] = 0;
    v[14 + 11] = 0;
    let c = checksum::finish(checksum::sum(&v[14..34], 0));
    v[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
    v
}

fn cases() -> Vec<Case> {
    let d = Shape::default();
    let mut cases = Vec::new();
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
    for (what, input, reason) in [
        (
            "ethernet only (IPv4 EtherType)",
            &v4[..14],
            Reason::BadIpHeader,
        ),
        ("VLAN tag cut short", &v4_vlan[..16], Reason::NotIp),
        (
            "VLAN tag, no IP header",
            &v4_vlan[..18],
            Reason::BadIpHeader,
        ),
        (
            "IPv4 header cut short before the destination",
            &v4[..14 + 19],
            Reason::BadIpHeader,
        ),
    ] {
        cases.push(Case::new(what, input.to_vec(), XDP_PASS, Same).reason(reason));
    }
    for cut in [14 + 20, 14 + 20 + 4, 14 + 20 + 19, v4.len() - 1] {
        cases.push(
            Case::new(
                "IPv4 to a VIP cut short after the IP header (total length > frame)",
                v4[..cut].to_vec(),
                XDP_DROP,
                Any,
            )
            .reason(Reason::BadIpHeader),
        );
    }
    cases.push(
        Case::new(
            "IPv6 header cut short",
            v6[..14 + 39].to_vec(),
            XDP_PASS,
            Same,
        )
        .reason(Reason::BadIpHeader),
    );
    for cut in [14 + 40, 14 + 40 + 19, v6.len() - 1] {
        cases.push(
            Case::new(
                "IPv6 to a VIP cut short after the IP header (payload length > frame)",
                v6[..cut].to_vec(),
                XDP_DROP,
                Any,
            )
            .reason(Reason::BadIpHeader),
        );
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
        let v4 = f.src.is_ipv4();
        let hl = if v4 { 20 } else { 40 };
        fr.truncate(l3 + hl + l4_len);
        if v4 {
            fr[l3 + 2..l3 + 4].copy_from_slice(&((hl + l4_len) as u16).to_be_bytes());
        } else {
            fr[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        cases.extend([
            Case::new(what, fr.clone(), XDP_DROP, Any).reason(Reason::TruncatedL4),
            // The same to a non-VIP address: not ours.
            Case::new(
                "truncated L4 to a non-VIP address",
                to_other(&fr, !v4),
                XDP_PASS,
                Same,
            ),
        ]);
    }
    // Header fields.
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
        cases.push(Case::new(what, input, XDP_DROP, Any).reason(Reason::BadIpHeader));
    }
    cases.push(
        Case::new(
            "IHL 4 to a non-VIP address -> pass",
            to_other(&mutate(&v4, &|v| v[14] = 0x44), false),
            XDP_PASS,
            Same,
        )
        .reason(Reason::BadIpHeader),
    );
    // Fragments and extension headers.
    for (what, bits) in [
        ("first IPv4 fragment to a VIP", 0x2000),
        ("later IPv4 fragment to a VIP", 0x0010),
        ("last IPv4 fragment to a VIP", 0x0123),
    ] {
        cases.push(Case::new(what, frag(&v4, bits), XDP_DROP, Any).reason(Reason::Unparseable));
    }
    cases.push(Case::new(
        "IPv4 fragment to a non-VIP address",
        to_other(&frag(&v4, 0x2000), false),
        XDP_PASS,
        Same,
    ));
    for nh in [0u8, 43, 44, 60] {
        let mut v = v6.clone();
        v[14 + 6] = nh;
        cases.extend([
            Case::new("IPv6 extension header to a VIP", v.clone(), XDP_DROP, Any)
                .reason(Reason::Unparseable),
            Case::new(
                "IPv6 extension header to a non-VIP address",
                to_other(&v, true),
                XDP_PASS,
                Same,
            ),
        ]);
    }
    let mut icmp6 = v6.clone();
    icmp6[14 + 6] = 58;
    cases.push(Case::new(
        "ICMPv6 to a VIP address passes",
        icmp6,
        XDP_PASS,
        Same,
    ));
    cases
}

#[test]
fn table() {
    run(cases);
}
