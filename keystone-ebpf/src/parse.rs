//! Parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (with options), IPv6, TCP and UDP, and ICMP path-MTU errors, with verifier-safe bounds checks.

use aya_ebpf::bindings::xdp_action::XDP_PASS;
use keystone_common::{
    FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason, icmp,
};

pub use crate::raw::{put16, put32, raw16_at};
use crate::{Verdict, hook::Hook, maps::is_vip_addr};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// A TCP/UDP packet whose headers are all inside the frame, or an ICMP path-MTU error
/// (`embedded != 0`). Pointers are raw packet addresses, valid until a rewrite's L4
/// checksum update (`Hook::update_l4_checksum`: on tc a helper that changes packet
/// data); after it only `Hook::data` is read again (`forward::send`).
pub struct Packet {
    /// Start of the IP header.
    pub ip: usize,
    /// Start of the TCP/UDP header; the whole fixed header (20/8 bytes) is in the frame.
    /// For an ICMP error: the ICMP header.
    pub l4: usize,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// `PROTO_TCP` or `PROTO_UDP`; `PROTO_ICMP`/`PROTO_ICMPV6` for an ICMP error.
    pub proto: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 TOS (0 for IPv6), for the FIB lookup.
    pub tos: u8,
    /// IP datagram length, host order (IPv6: 40 + payload length), for the FIB lookup.
    pub ip_len: u16,
    /// Addresses as map words (network-order octets).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports, network order (as in the packet and in maps); 0 for an ICMP error.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (`keystone_common::tcp_flags`); 0 for UDP.
    pub tcp_flags: u8,
    /// Frame length in bytes, for counters.
    pub frame_len: u64,
    /// End of the directly accessible bytes (`data_end`), for re-checking bounds
    /// right before an access. On XDP the end of the frame; on tc the end of the
    /// skb's linear part (the headers: `hook::pull_headers`), the payload may lie
    /// beyond it.
    pub end: usize,
    /// ICMP path-MTU errors only (else 0): start of the embedded packet, whose IP
    /// header (IPv4 without options) and first 8 bytes of TCP/UDP header are in the
    /// frame (`icmp::is_path_mtu_error`).
    pub embedded: usize,
}

impl Packet {
    /// Whether the L4 checksum field is at `l4 + 16` (TCP) or `l4 + 6` (UDP).
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

#[inline(always)]
pub fn u8_at(p: usize) -> u8 {
    // SAFETY: callers bounds-check `p` against data_end first.
    unsafe { *(p as *const u8) }
}

// Packet fields are read and written as 16-bit words. Every field we touch sits at
// an even offset from the frame start (Ethernet 14, VLAN 4, IP/L4 offsets are
// multiples of 4), and XDP frames start 2-byte aligned, so these are aligned
// accesses: one instruction each. (Unaligned reads would be split into bytes by
// LLVM; letting it emit misaligned accesses instead also makes it merge stack
// stores the verifier rejects.)

#[inline(always)]
fn be16_at(p: usize) -> u16 {
    u16::from_be(raw16_at(p))
}

/// A 32-bit field as stored (`u32::from_ne_bytes` of its octets), e.g. an address word.
#[inline(always)]
pub fn raw32_at(p: usize) -> u32 {
    let (a, b) = (raw16_at(p) as u32, raw16_at(p + 2) as u32);
    if cfg!(target_endian = "little") {
        a | b << 16
    } else {
        a << 16 | b
    }
}

#[inline(always)]
fn addr6_at(p: usize) -> [u32; 4] {
    [
        raw32_at(p),
        raw32_at(p + 4),
        raw32_at(p + 8),
        raw32_at(p + 12),
    ]
}

/// A malformed packet to a VIP address is dropped; to anything else it passes.
#[inline(always)]
fn for_vip(reason: Reason, addr: [u32; 4], family: u8) -> Verdict {
    if is_vip_addr(addr, family) {
        Verdict::drop(reason)
    } else {
        Verdict::pass(reason)
    }
}

/// Like `for_vip`, but packets not for a VIP address are not ours: pass, uncounted.
#[inline(always)]
fn only_for_vip(reason: Reason, addr: [u32; 4], family: u8) -> Result<Option<Packet>, Verdict> {
    if is_vip_addr(addr, family) {
        Err(Verdict::drop(reason))
    } else {
        Ok(None)
    }
}

/// IPv6 next-header values that are extension headers (RFC 7045 / IANA), except ESP.
#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 | 253 | 254)
}

/// Parses the frame. `Ok(None)`: not a TCP/UDP packet we could care about (pass,
/// uncounted). `Err`: a counted verdict per the `Reason` contract.
///
/// Headers are bounds-checked against `data_end`, lengths in the headers against
/// the packet's length (`Hook::len`, as offsets: on tc the payload need not be
/// directly accessible).
#[inline(always)]
pub fn parse<C: Hook>(ctx: &C) -> Result<Option<Packet>, Verdict> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return Err(Verdict::pass(Reason::NotIp));
    }
    let mut ethertype = be16_at(data + 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if data + ETH_HLEN + VLAN_HLEN > end {
            return Err(Verdict::pass(Reason::NotIp));
        }
        ethertype = be16_at(data + ETH_HLEN + 2);
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let frame = Frame {
        ip: data + l3,
        end,
        len: ctx.len(),
        after_l3: ctx.len().wrapping_sub(l3 as u64),
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(&frame),
        ETH_P_IPV6 => parse_ipv6(&frame),
        _ => Err(Verdict::pass(Reason::NotIp)),
    }
}

/// Where the IP header starts and how much packet follows it.
struct Frame {
    ip: usize,
    /// `data_end`.
    end: usize,
    /// The whole packet's length.
    len: u64,
    /// Bytes from the IP header to the end of the packet.
    after_l3: u64,
}

#[inline(always)]
fn l4_min(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TCP_HLEN
    } else {
        UDP_HLEN
    }
}

/// The TCP flags byte (the low byte of the 16-bit word at `l4 + 12`, after the data
/// offset), or 0 for UDP. For TCP the caller has checked `l4 + 20 <= end`; the check
/// is repeated here for the verifier.
#[inline(always)]
fn tcp_flags_at(l4: usize, end: usize, proto: u8) -> u8 {
    if proto == PROTO_TCP && l4 + TCP_HLEN <= end {
        be16_at(l4 + 12) as u8
    } else {
        0
    }
}

/// Whether the fixed TCP/UDP header at `l4` runs past the frame. Each comparison
/// uses a constant length on the L4 pointer itself, which is what lets the verifier
/// accept accesses through a pointer with a variable (IHL-derived) offset.
#[inline(always)]
fn l4_short(l4: usize, end: usize, proto: u8) -> bool {
    if l4 + UDP_HLEN > end {
        return true;
    }
    proto == PROTO_TCP && l4 + TCP_HLEN > end
}

#[inline(always)]
fn parse_ipv4(f: &Frame) -> Result<Option<Packet>, Verdict> {
    let (ip, end, frame_len) = (f.ip, f.end, f.len);
    if ip + IPV4_HLEN > end {
        return Err(Verdict::pass(Reason::BadIpHeader));
    }
    let dst = [raw32_at(ip + 16), 0, 0, 0];
    let b0 = u8_at(ip);
    // IHL in bytes, 0..=60. Masked and shifted from one byte, so the verifier knows
    // its range; `black_box` keeps LLVM from folding it into a form it cannot follow.
    let hl = core::hint::black_box(((b0 & 0x0f) as usize) << 2) & 0x3c;
    let tot = be16_at(ip + 2) as usize;
    if b0 >> 4 != 4 || hl < IPV4_HLEN || tot < hl || tot as u64 > f.after_l3 {
        return Err(for_vip(Reason::BadIpHeader, dst, FAMILY_IPV4));
    }
    let proto = u8_at(ip + 9);
    if proto == PROTO_ICMP {
        return Ok(parse_icmp4(ip, hl, tot, end, frame_len, dst));
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    // MF set or a non-zero offset: the first or a later fragment.
    if be16_at(ip + 6) & 0x3fff != 0 {
        return only_for_vip(Reason::Unparseable, dst, FAMILY_IPV4);
    }
    // The check below must stay on this very pointer, with constant lengths (what
    // the verifier follows): hide where `l4` came from, so LLVM cannot fold it
    // into the length checks above.
    let l4 = core::hint::black_box(ip + hl);
    if tot < hl + l4_min(proto) || l4_short(l4, end, proto) {
        return only_for_vip(Reason::TruncatedL4, dst, FAMILY_IPV4);
    }
    Ok(Some(Packet {
        ip,
        l4,
        family: FAMILY_IPV4,
        proto,
        ttl: u8_at(ip + 8),
        tos: u8_at(ip + 1),
        ip_len: tot as u16,
        src: [raw32_at(ip + 12), 0, 0, 0],
        dst,
        sport: raw16_at(l4),
        dport: raw16_at(l4 + 2),
        tcp_flags: tcp_flags_at(l4, end, proto),
        frame_len,
        end,
        embedded: 0,
    }))
}

#[inline(always)]
fn parse_ipv6(f: &Frame) -> Result<Option<Packet>, Verdict> {
    let (ip, end, frame_len) = (f.ip, f.end, f.len);
    if ip + IPV6_HLEN > end {
        return Err(Verdict::pass(Reason::BadIpHeader));
    }
    let dst = addr6_at(ip + 24);
    let payload = be16_at(ip + 4) as usize;
    if u8_at(ip) >> 4 != 6 || (IPV6_HLEN + payload) as u64 > f.after_l3 {
        return Err(for_vip(Reason::BadIpHeader, dst, FAMILY_IPV6));
    }
    let proto = u8_at(ip + 6);
    if proto == PROTO_ICMPV6 {
        return Ok(parse_icmp6(ip, payload, end, frame_len, dst));
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        if is_ipv6_ext(proto) {
            return only_for_vip(Reason::Unparseable, dst, FAMILY_IPV6);
        }
        return Ok(None);
    }
    // As for IPv4: keep LLVM from deriving the L4 bounds from the payload length.
    let l4 = core::hint::black_box(ip + IPV6_HLEN);
    if payload < l4_min(proto) || l4_short(l4, end, proto) {
        return only_for_vip(Reason::TruncatedL4, dst, FAMILY_IPV6);
    }
    Ok(Some(Packet {
        ip,
        l4,
        family: FAMILY_IPV6,
        proto,
        ttl: u8_at(ip + 7),
        tos: 0,
        ip_len: (IPV6_HLEN + payload) as u16,
        src: addr6_at(ip + 8),
        dst,
        sport: raw16_at(l4),
        dport: raw16_at(l4 + 2),
        tcp_flags: tcp_flags_at(l4, end, proto),
        frame_len,
        end,
        embedded: 0,
    }))
}

/// Bytes from the ICMP header to the end of the embedded ports: ICMP header, the
/// embedded IP header, 8 bytes of its TCP/UDP header.
const ICMP4_NEED: usize = icmp::HLEN + IPV4_HLEN + icmp::EMBEDDED_L4;
const ICMP6_NEED: usize = icmp::HLEN + IPV6_HLEN + icmp::EMBEDDED_L4;

/// An ICMPv4 "fragmentation needed" that is not itself a fragment and quotes an
/// IPv4 header without options (what every router sends for a packet the program
/// forwarded: it sets none) and the ports of a TCP/UDP header of a first fragment.
/// Anything else is not ours (`None`: pass, uncounted).
#[inline(always)]
fn parse_icmp4(
    ip: usize,
    hl: usize,
    tot: usize,
    end: usize,
    frame_len: u64,
    dst: [u32; 4],
) -> Option<Packet> {
    if be16_at(ip + 6) & 0x3fff != 0 {
        return None;
    }
    // As for TCP/UDP: the verifier needs the bounds check on this very pointer.
    let l4 = core::hint::black_box(ip + hl);
    if tot < hl + ICMP4_NEED || l4 + ICMP4_NEED > end {
        return None;
    }
    if !icmp::is_path_mtu_error(FAMILY_IPV4, u8_at(l4), u8_at(l4 + 1)) {
        return None;
    }
    let inner = l4 + icmp::HLEN;
    let inner_proto = u8_at(inner + 9);
    if u8_at(inner) != 0x45
        || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP)
        || be16_at(inner + 6) & 0x1fff != 0
    {
        return None;
    }
    Some(Packet {
        ip,
        l4,
        family: FAMILY_IPV4,
        proto: PROTO_ICMP,
        ttl: u8_at(ip + 8),
        tos: u8_at(ip + 1),
        ip_len: tot as u16,
        src: [raw32_at(ip + 12), 0, 0, 0],
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        frame_len,
        end,
        embedded: inner,
    })
}

/// An ICMPv6 "packet too big" directly after the IPv6 header, quoting an IPv6
/// header directly followed by a TCP/UDP header (at least its ports). Anything else
/// is not ours (`None`: pass, uncounted).
#[inline(always)]
fn parse_icmp6(
    ip: usize,
    payload: usize,
    end: usize,
    frame_len: u64,
    dst: [u32; 4],
) -> Option<Packet> {
    let l4 = core::hint::black_box(ip + IPV6_HLEN);
    if payload < ICMP6_NEED || l4 + ICMP6_NEED > end {
        return None;
    }
    if !icmp::is_path_mtu_error(FAMILY_IPV6, u8_at(l4), u8_at(l4 + 1)) {
        return None;
    }
    let inner = l4 + icmp::HLEN;
    let inner_proto = u8_at(inner + 6);
    if u8_at(inner) >> 4 != 6 || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP) {
        return None;
    }
    Some(Packet {
        ip,
        l4,
        family: FAMILY_IPV6,
        proto: PROTO_ICMPV6,
        ttl: u8_at(ip + 7),
        tos: 0,
        ip_len: (IPV6_HLEN + payload) as u16,
        src: addr6_at(ip + 8),
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        frame_len,
        end,
        embedded: inner,
    })
}

/// Address words at `p` (IPv4: one word, the rest zero), for the ICMP path.
#[inline(always)]
pub fn addr_at(p: usize, family: u8) -> [u32; 4] {
    if family == FAMILY_IPV4 {
        [raw32_at(p), 0, 0, 0]
    } else {
        addr6_at(p)
    }
}

/// The action for packets that are not ours.
pub const NOT_OURS: u32 = XDP_PASS;
