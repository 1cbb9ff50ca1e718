//! Frames for the packet tests: flows, builders (TCP, UDP, ICMP errors, VLAN tags,
//! IPv4 options), parsing back, checksum checks, and a deterministic generator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_common::{
    Endpoint, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, checksum, tcp_flags::SYN,
};

use super::{CLIENT_MAC, IN_MAC};

#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

pub fn flow(src: &str, dst: &str, proto: u8) -> Flow {
    Flow {
        src: src.parse().expect("src"),
        dst: dst.parse().expect("dst"),
        proto,
    }
}

impl Flow {
    pub fn key(&self) -> FlowKey {
        let s = Endpoint::new(self.src, self.proto);
        let d = Endpoint::new(self.dst, self.proto);
        FlowKey {
            src: s.addr,
            dst: d.addr,
            src_port: s.port,
            dst_port: d.port,
            proto: self.proto,
            family: s.family,
            _pad: [0; 2],
        }
    }
}

/// How to build a frame; `Default` is a plain, valid packet.
#[derive(Clone, Debug)]
pub struct Shape {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<(u16, u16)>,
    pub ttl: u8,
    pub payload: usize,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// Send UDP/IPv4 with checksum 0 ("none").
    pub udp_no_checksum: bool,
    /// TCP flags (`keystone_common::tcp_flags`); SYN by default, a flow's first packet.
    pub tcp_flags: u8,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            dst_mac: IN_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            ttl: 64,
            payload: 32,
            options: Vec::new(),
            udp_no_checksum: false,
            tcp_flags: SYN,
        }
    }
}

pub fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn pseudo_sum(f: &Flow, l4_len: usize) -> u64 {
    let mut p = octets(f.src.ip());
    p.extend(octets(f.dst.ip()));
    if f.src.is_ipv4() {
        p.extend([0, f.proto]);
        p.extend((l4_len as u16).to_be_bytes());
    } else {
        p.extend((l4_len as u32).to_be_bytes());
        p.extend([0, 0, 0, f.proto]);
    }
    checksum::sum(&p, 0)
}

/// A complete, valid frame for `f`.
pub fn frame(f: &Flow, s: &Shape) -> Vec<u8> {
    let payload: Vec<u8> = (0..s.payload).map(|i| (i * 7 + 3) as u8).collect();
    let mut l4 = Vec::new();
    l4.extend(f.src.port().to_be_bytes());
    l4.extend(f.dst.port().to_be_bytes());
    let check_at = if f.proto == PROTO_TCP {
        l4.extend(0x0102_0304u32.to_be_bytes()); // seq
        l4.extend(0u32.to_be_bytes()); // ack
        l4.extend([0x50, s.tcp_flags]); // data offset 5, flags
        l4.extend(64240u16.to_be_bytes()); // window
        l4.extend([0, 0, 0, 0]); // checksum, urgent
        16
    } else {
        l4.extend(((8 + payload.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
        6
    };
    l4.extend(&payload);
    if !(f.proto == PROTO_UDP && s.udp_no_checksum) {
        let mut c = checksum::finish(checksum::sum(&l4, pseudo_sum(f, l4.len())));
        if f.proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
    }

    wrap_ip(f.src.ip(), f.dst.ip(), f.proto, l4, s)
}

/// `l4` (the IP payload) behind an IP header from `src` to `dst` (checksum computed)
/// and an Ethernet header (with the shape's MACs, VLAN tag, TTL and IPv4 options).
pub fn wrap_ip(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>, s: &Shape) -> Vec<u8> {
    let mut ip = Vec::new();
    if src.is_ipv4() {
        let hl = 20 + s.options.len();
        ip.push(0x40 | (hl / 4) as u8);
        ip.push(0); // tos
        ip.extend(((hl + l4.len()) as u16).to_be_bytes());
        ip.extend([0x12, 0x34, 0x40, 0x00]); // id, DF
        ip.extend([s.ttl, proto, 0, 0]);
        ip.extend(octets(src));
        ip.extend(octets(dst));
        ip.extend(&s.options);
        let c = checksum::finish(checksum::sum(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    } else {
        ip.extend([0x60, 0, 0, 0]);
        ip.extend((l4.len() as u16).to_be_bytes());
        ip.extend([proto, s.ttl]);
        ip.extend(octets(src));
        ip.extend(octets(dst));
    }

    let mut out = Vec::new();
    out.extend(s.dst_mac);
    out.extend(s.src_mac);
    if let Some((tpid, tci)) = s.vlan {
        out.extend(tpid.to_be_bytes());
        out.extend(tci.to_be_bytes());
    }
    out.extend(if src.is_ipv4() {
        [0x08, 0x00]
    } else {
        [0x86, 0xdd]
    });
    out.extend(ip);
    out.extend(l4);
    out
}

/// An ICMP error frame from `from` to `to` quoting `quote` (the start of an IP
/// packet, cut where the sender chose): ICMPv4 for IPv4 addresses, else ICMPv6;
/// the ICMP checksum is computed (ICMPv6: with its pseudo-header).
pub fn icmp_frame(
    from: IpAddr,
    to: IpAddr,
    (icmp_type, code): (u8, u8),
    mtu: u16,
    quote: &[u8],
    s: &Shape,
) -> Vec<u8> {
    let v4 = from.is_ipv4();
    let mut msg = vec![icmp_type, code, 0, 0];
    // ICMPv4: 16 unused bits, then the next-hop MTU; ICMPv6: a 32-bit MTU.
    msg.extend(u32::from(mtu).to_be_bytes());
    msg.extend(quote);
    let pseudo = if v4 {
        0
    } else {
        let mut p = octets(from);
        p.extend(octets(to));
        p.extend((msg.len() as u32).to_be_bytes());
        p.extend([0, 0, 0, PROTO_ICMPV6]);
        checksum::sum(&p, 0)
    };
    let c = checksum::finish(checksum::sum(&msg, pseudo));
    msg[2..4].copy_from_slice(&c.to_ne_bytes());
    wrap_ip(from, to, if v4 { PROTO_ICMP } else { PROTO_ICMPV6 }, msg, s)
}

/// Offset of the IP header.
pub fn l3_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    }
}

/// Parses a frame's flow back out (addresses, ports, protocol).
pub fn parse_flow(frame: &[u8]) -> Flow {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    if ip[0] >> 4 == 4 {
        let hl = (ip[0] & 0x0f) as usize * 4;
        let src = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
        let l4 = &ip[hl..];
        Flow {
            src: SocketAddr::new(src.into(), u16::from_be_bytes([l4[0], l4[1]])),
            dst: SocketAddr::new(dst.into(), u16::from_be_bytes([l4[2], l4[3]])),
            proto: ip[9],
        }
    } else {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        let l4 = &ip[40..];
        Flow {
            src: SocketAddr::new(src.into(), u16::from_be_bytes([l4[0], l4[1]])),
            dst: SocketAddr::new(dst.into(), u16::from_be_bytes([l4[2], l4[3]])),
            proto: ip[6],
        }
    }
}

/// Verifies every checksum of a frame by full recomputation.
pub fn assert_checksums(what: &str, frame: &[u8]) {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    let f = parse_flow(frame);
    let (l4, l4_len) = if ip[0] >> 4 == 4 {
        let hl = (ip[0] & 0x0f) as usize * 4;
        assert_eq!(
            checksum::folded(checksum::sum(&ip[..hl], 0)),
            0xffff,
            "{what}: bad IPv4 header checksum"
        );
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        (&ip[hl..tot], tot - hl)
    } else {
        let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        (&ip[40..40 + plen], plen)
    };
    if f.proto == PROTO_UDP && f.src.is_ipv4() && l4[6] == 0 && l4[7] == 0 {
        return; // no checksum
    }
    let s = checksum::sum(l4, pseudo_sum(&f, l4_len));
    assert_eq!(
        checksum::folded(s),
        0xffff,
        "{what}: bad {} checksum",
        if f.proto == PROTO_TCP { "TCP" } else { "UDP" }
    );
}

pub fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// xorshift64*: deterministic flows without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Rewrites `frame`'s flow as the program should (NAT): new addresses/ports, TTL - 1,
/// new MACs; recomputed from scratch by the builder.
pub fn natted(to: Flow, s: &Shape, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame(
        &to,
        &Shape {
            dst_mac,
            src_mac,
            ttl: s.ttl - 1,
            ..s.clone()
        },
    )
}

pub fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}
