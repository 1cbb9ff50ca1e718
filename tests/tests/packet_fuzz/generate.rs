//! The generator: well-formed frames of every kind the program handles, then
//! structure-aware mutations of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_common::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    tcp_flags::{ACK, FIN, RST, SYN},
};
use keystone_lab::xdp::*;

use crate::classify::be16;

fn client(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        Ipv4Addr::new(198, 18, 0, 2 + rng.below(200) as u8).into()
    } else {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, rng.next_u64() as u16).into()
    }
}

/// Destinations: the VIP addresses most of the time, the gateway, others.
fn destination(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        let last = rng.pick(&[100, 100, 100, 101, 101, 103, 105, 106, 1, 50]);
        vip4(last).into()
    } else {
        let last = rng.pick(&[0x100, 0x100, 0x100, 0x101, 0x101, 1, 0x50]);
        vip6(last).into()
    }
}

/// Mostly the VIP port of `proto`, else another one.
fn port(rng: &mut Rng, proto: u8) -> u16 {
    if rng.chance(70) {
        if proto == PROTO_TCP { 80 } else { 53 }
    } else {
        let any = rng.next_u64() as u16;
        rng.pick(&[80, 53, 8080, 443, 0, any])
    }
}

fn shape(rng: &mut Rng, v4: bool) -> Shape {
    let any_flags = rng.next_u64() as u8;
    let mut s = Shape {
        ttl: rng.pick(&[64, 64, 64, 64, 64, 64, 1, 2, 255, 0]),
        payload: rng.below(80) as usize,
        tcp_flags: rng.pick(&[SYN, SYN, ACK, ACK, ACK | FIN, RST, SYN | ACK, any_flags]),
        udp_no_checksum: rng.chance(10),
        ..Shape::default()
    };
    if rng.chance(15) {
        s.vlan = Some((rng.pick(&[0x8100, 0x88a8]), rng.next_u64() as u16 & 0x0fff));
    }
    if v4 && rng.chance(15) {
        let words = 1 + rng.below(10) as usize;
        s.options = rng.bytes(words * 4);
    }
    s
}

/// A well-formed frame of one of the kinds the program handles.
fn base_frame(rng: &mut Rng) -> Vec<u8> {
    let v4 = rng.chance(60);
    let s = shape(rng, v4);
    let proto = rng.pick(&[PROTO_TCP, PROTO_TCP, PROTO_UDP]);
    match rng.below(10) {
        // An ICMP error (mostly path-MTU) about a flow of (mostly) a VIP.
        0 | 1 => {
            let vip = SocketAddr::new(destination(rng, v4), port(rng, proto));
            let reply = Flow {
                src: vip,
                dst: SocketAddr::new(client(rng, v4), rng.next_u64() as u16),
                proto,
            };
            let quoted = frame(&reply, &shape(rng, v4));
            let l3 = l3_offset(&quoted);
            let cut = rng.pick(&[28, 48, 60, usize::MAX]).min(quoted.len() - l3);
            let icmp = if v4 {
                rng.pick(&[(3, 4), (3, 4), (3, 4), (3, 1), (11, 0), (0, 0)])
            } else {
                rng.pick(&[(2, 0), (2, 0), (2, 0), (1, 4), (3, 0), (129, 0)])
            };
            // The error mostly goes to the quoted source, as routers send it.
            let to = if rng.chance(90) {
                vip.ip()
            } else {
                destination(rng, v4)
            };
            icmp_frame(client(rng, v4), to, icmp, 1280, &quoted[l3..l3 + cut], &s)
        }
        // A nat backend's reply to a client.
        2 => {
            let (from, to): (IpAddr, IpAddr) = if v4 {
                (backend4(rng.below(3) as u8).into(), CLIENT4.into())
            } else {
                (backend6(rng.below(3) as u8).into(), CLIENT6.into())
            };
            let sport = rng.pick(&[8080, 5353, 80]);
            frame(
                &Flow {
                    src: SocketAddr::new(from, sport),
                    dst: SocketAddr::new(to, rng.next_u64() as u16),
                    proto,
                },
                &s,
            )
        }
        // Client to (mostly) a VIP.
        _ => frame(
            &Flow {
                src: SocketAddr::new(client(rng, v4), rng.next_u64() as u16),
                dst: SocketAddr::new(destination(rng, v4), port(rng, proto)),
                proto,
            },
            &s,
        ),
    }
}

/// Header boundaries of `f` (as built, before other mutations), to cut at.
fn boundaries(f: &[u8]) -> Vec<usize> {
    let l3 = l3_offset(f);
    let mut b = vec![12, 13, 14, 16, 17, 18, l3 + 1, l3 + 9, l3 + 19, l3 + 20];
    if f.len() > l3 + 20 {
        let v4 = f[l3] >> 4 == 4;
        let hl = if v4 {
            usize::from(f[l3] & 0x0f) * 4
        } else {
            40
        };
        let l4 = l3 + hl;
        b.extend([l3 + 39, l3 + 40, l4 - 1, l4, l4 + 1, l4 + 4, l4 + 7, l4 + 8]);
        b.extend([
            l4 + 19,
            l4 + 20,
            l4 + 27,
            l4 + 28,
            l4 + 47,
            l4 + 48,
            l4 + 55,
            l4 + 56,
        ]);
    }
    b.retain(|&n| n >= 14 && n < f.len());
    b
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// One mutation: a cut, a bad length, a fragment, an extension header, a tag, ...
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let l3 = l3_offset(f);
    let v4 = f.len() > l3 && f[l3] >> 4 == 4;
    match rng.below(12) {
        0 | 1 => {
            let b = boundaries(f);
            if !b.is_empty() {
                f.truncate(rng.pick(&b));
            }
        }
        2 => {
            let n = 14 + rng.below(f.len().saturating_sub(14).max(1) as u64) as usize;
            f.truncate(n);
        }
        // IP length fields: off by a little or anything.
        3 => {
            let at = l3 + if v4 { 2 } else { 4 };
            if at + 2 <= f.len() {
                let cur = be16(f, at);
                let v = match rng.below(4) {
                    0 => cur.wrapping_add(1),
                    1 => cur.wrapping_sub(1 + rng.below(30) as u16),
                    2 => rng.below(64) as u16,
                    _ => rng.next_u64() as u16,
                };
                set16(f, at, v);
            }
        }
        // IHL / version.
        4 => {
            if l3 < f.len() {
                f[l3] = if rng.chance(50) {
                    (f[l3] & 0xf0) | rng.below(16) as u8
                } else {
                    (f[l3] & 0x0f) | (rng.below(16) as u8) << 4
                };
            }
        }
        // Fragments: MF, an offset, or both.
        5 => {
            if v4 {
                let any = rng.next_u64() as u16 & 0x3fff;
                let v = rng.pick(&[0x2000, 0x0001, 0x2000 | 0x00b9, any]);
                set16(f, l3 + 6, v | (0x4000 * u16::from(rng.chance(30))));
            } else if f.len() >= l3 + 40 {
                insert_ipv6_ext(rng, f, l3, Some(44));
            }
        }
        // IPv6 extension headers.
        6 => {
            if !v4 && f.len() >= l3 + 40 {
                insert_ipv6_ext(rng, f, l3, None);
            }
        }
        // The protocol field.
        7 => {
            let at = l3 + if v4 { 9 } else { 6 };
            if at < f.len() {
                let any = rng.next_u64() as u8;
                f[at] = rng.pick(&[
                    PROTO_TCP,
                    PROTO_UDP,
                    PROTO_ICMP,
                    PROTO_ICMPV6,
                    0,
                    43,
                    44,
                    60,
                    50,
                    any,
                ]);
            }
        }
        // VLAN tags: add one (maybe a second), or make the EtherType odd.
        8 => {
            let tci = rng.next_u64() as u16;
            let tag = [
                rng.pick(&[0x81u8, 0x88]),
                rng.pick(&[0x00u8, 0xa8]),
                (tci >> 8) as u8,
                tci as u8,
            ];
            if rng.chance(80) {
                f.splice(12..12, tag);
            } else {
                let et = rng.pick(&[0x0806u16, 0x88cc, 0x86dd, 0x0800, tci]);
                set16(f, 12, et);
            }
        }
        // Flip bytes.
        9 | 10 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len() as u64) as usize;
                f[at] ^= 1 << rng.below(8);
            }
        }
        // Trailing bytes beyond the IP length (Ethernet padding).
        _ => {
            let n = 1 + rng.below(40) as usize;
            let tail = rng.bytes(n);
            f.extend(tail);
        }
    }
}

/// Inserts an IPv6 extension header (`kind`, or a random one) after the fixed
/// header, with a consistent payload length.
fn insert_ipv6_ext(rng: &mut Rng, f: &mut Vec<u8>, l3: usize, kind: Option<u8>) {
    let kind = kind.unwrap_or_else(|| rng.pick(&[0, 43, 44, 60, 51, 135]));
    let next = f[l3 + 6];
    let ext = match kind {
        44 => vec![next, 0, 0, rng.pick(&[0, 1, 8]), 0, 0, 0x12, 0x34],
        _ => {
            let units = rng.below(3) as usize; // length in 8-byte units, beyond the first
            let mut e = vec![next, units as u8];
            e.extend(vec![1u8; 6 + units * 8]);
            e
        }
    };
    let plen = be16(f, l3 + 4).wrapping_add(ext.len() as u16);
    f.splice(l3 + 40..l3 + 40, ext);
    f[l3 + 6] = kind;
    set16(f, l3 + 4, plen);
}

pub fn fuzz_frame(rng: &mut Rng) -> Vec<u8> {
    let mut f = if rng.chance(5) {
        // Random bytes behind a plausible EtherType.
        let n = 14 + rng.below(120) as usize;
        let mut f = rng.bytes(n);
        let any = rng.next_u64() as u16;
        let et = rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x88a8, any]);
        set16(&mut f, 12, et);
        f
    } else {
        base_frame(rng)
    };
    // Some stay well-formed; the rest get up to three mutations.
    if rng.chance(65) {
        for _ in 0..1 + rng.below(3) {
            mutate(rng, &mut f);
        }
    }
    f
}
