//! Checksum/NAT rewriting: DNAT towards a backend, SNAT of its replies back to the VIP, TTL/hop limit, incremental checksums.

use keystone_common::{
    Endpoint, FAMILY_IPV4, PROTO_UDP,
    checksum::{replace16, replace32},
};

use crate::{
    hook::Hook,
    l4sum::L4Change,
    parse::{Packet, put16, put32, raw16_at},
};

#[inline(always)]
pub fn put8(p: usize, v: u8) {
    // SAFETY: `p` lies inside a header the parser bounds-checked.
    unsafe { *(p as *mut u8) = v }
}

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination (client → VIP becomes client → backend).
    Dst,
    /// Source (backend → client becomes VIP → client).
    Src,
}

/// Rewrites one side's address and port to `to`, decrements the TTL/hop limit
/// (callers have checked it is > 1), and fixes the IPv4 header checksum and the
/// TCP/UDP checksum (pseudo-header included) incrementally, the latter last and
/// through the hook (`Hook::update_l4_checksum`).
#[inline(always)]
pub fn rewrite<C: Hook>(ctx: &C, pkt: &mut Packet, side: Side, to: &Endpoint) {
    let v4 = pkt.family == FAMILY_IPV4;
    let (old_addr, old_port, port_at) = match side {
        Side::Dst => (pkt.dst, pkt.dport, pkt.l4 + 2),
        Side::Src => (pkt.src, pkt.sport, pkt.l4),
    };

    // The parser checked these bounds already; checking again on the very pointer
    // used, with a constant length, is what the verifier can follow.
    let check_at = pkt.l4 + pkt.l4_check_offset();
    if check_at + 2 > pkt.end || port_at + 2 > pkt.end {
        return;
    }
    let l4 = L4Change {
        check_at,
        old_addr,
        new_addr: to.addr,
        old_port,
        new_port: to.port,
        v4,
        udp: pkt.proto == PROTO_UDP,
    };
    put16(port_at, to.port);

    let ttl = pkt.ttl - 1;
    if v4 {
        let addr_at = pkt.ip + if side == Side::Dst { 16 } else { 12 };
        let mut check = raw16_at(pkt.ip + 10);
        check = replace32(check, old_addr[0], to.addr[0]);
        check = replace16(
            check,
            u16::from_ne_bytes([pkt.ttl, pkt.proto]),
            u16::from_ne_bytes([ttl, pkt.proto]),
        );
        put32(addr_at, to.addr[0]);
        put8(pkt.ip + 8, ttl);
        put16(pkt.ip + 10, check);
    } else {
        let addr_at = pkt.ip + if side == Side::Dst { 24 } else { 8 };
        put32(addr_at, to.addr[0]);
        put32(addr_at + 4, to.addr[1]);
        put32(addr_at + 8, to.addr[2]);
        put32(addr_at + 12, to.addr[3]);
        put8(pkt.ip + 7, ttl);
    }
    // The IPv4 header checksum is never partial, and written together with the
    // fields it covers it keeps a `CHECKSUM_COMPLETE` sum unchanged: in place on
    // both hooks.
    ctx.update_l4_checksum(&l4);

    pkt.ttl = ttl;
    match side {
        Side::Dst => {
            pkt.dst = to.addr;
            pkt.dport = to.port;
        }
        Side::Src => {
            pkt.src = to.addr;
            pkt.sport = to.port;
        }
    }
}
