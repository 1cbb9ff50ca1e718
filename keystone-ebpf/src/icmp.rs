//! ICMP path-MTU errors for VIP flows: delivered to the backend that owns the flow (see `keystone_common::Event::IcmpToBackend`).

use keystone_common::{
    Endpoint, Event, FAMILY_IPV4, FlowKey, Reason, VipInfo,
    checksum::{replace_addr, replace16, replace32},
    mode,
};

use crate::{
    Verdict, forward,
    hook::Hook,
    maps::{VIPS, count_event},
    nat::put8,
    parse::{self, Packet, addr_at, put16, put32, raw16_at, u8_at},
    select,
};

/// The embedded packet's tuple: a reply of a VIP flow has the VIP as its source.
struct Embedded {
    src: [u32; 4],
    dst: [u32; 4],
    /// Network order.
    sport: u16,
    dport: u16,
    /// TCP/UDP; 0 if the embedded header is out of bounds (never, after the parser).
    proto: u8,
}

#[inline(always)]
fn embedded(pkt: &Packet) -> Embedded {
    let p = pkt.embedded;
    // Checked by the parser; repeated with constants on this pointer for the verifier.
    let (hlen, src_at, dst_at, proto_at) = if pkt.family == FAMILY_IPV4 {
        if p + 28 > pkt.end {
            return Embedded::NONE;
        }
        (20, 12, 16, 9)
    } else {
        if p + 48 > pkt.end {
            return Embedded::NONE;
        }
        (40, 8, 24, 6)
    };
    Embedded {
        src: addr_at(p + src_at, pkt.family),
        dst: addr_at(p + dst_at, pkt.family),
        sport: raw16_at(p + hlen),
        dport: raw16_at(p + hlen + 2),
        proto: u8_at(p + proto_at),
    }
}

impl Embedded {
    const NONE: Embedded = Embedded {
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        proto: 0,
    };
}

/// An ICMP path-MTU error (`pkt.embedded != 0`) to a VIP address: if it is about a
/// VIP flow, send it to the flow's backend; else it is not ours (`XDP_PASS`).
#[inline(always)]
pub fn to_backend<C: Hook>(ctx: &C, pkt: &mut Packet) -> Result<u32, Verdict> {
    let e = embedded(pkt);
    if e.proto == 0 || e.src != pkt.dst {
        return Ok(parse::NOT_OURS);
    }
    let vip_key = Endpoint {
        addr: e.src,
        port: e.sport,
        proto: e.proto,
        family: pkt.family,
    };
    let Some(vip) = VIPS.get_ptr(vip_key) else {
        return Ok(parse::NOT_OURS);
    };
    // SAFETY: a valid map value pointer to plain data (see main.rs).
    let vip: VipInfo = unsafe { *vip };
    if vip.mode == mode::NAT && pkt.ttl <= 1 {
        return Err(Verdict::pass(Reason::TtlExpired));
    }
    // The client → VIP flow the error is about.
    let key = FlowKey {
        src: e.dst,
        dst: e.src,
        src_port: e.dport,
        dst_port: e.sport,
        proto: e.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let to = select::owner(&key, &vip)?.backend.endpoint;
    if to.family != pkt.family {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    count_event(Event::IcmpToBackend);
    match vip.mode {
        mode::NAT => {
            rewrite(pkt, &e, &to);
            let hop = forward::fib_lookup(ctx, pkt, &pkt.src, &to.addr)
                .map_err(|miss| Verdict::pass(miss.reason()))?;
            forward::send(ctx, &hop)
        }
        mode::DSR => {
            let hop = forward::fib_lookup(ctx, pkt, &pkt.src, &to.addr)
                .map_err(|miss| Verdict::pass(miss.reason()))?;
            forward::send(ctx, &hop)
        }
        _ => Err(Verdict::drop(Reason::MapInconsistent)),
    }
}

/// `nat`: the outer destination (the VIP) and the embedded source (VIP:port) become
/// the backend's address and port; TTL/hop limit - 1 (callers checked it is > 1).
/// Fixes the outer and embedded IPv4 header checksums and the ICMP checksum
/// incrementally (ICMPv6: its pseudo-header holds the outer destination too). The
/// embedded TCP/UDP checksum stays as it is (see `Event::IcmpToBackend`). In place
/// on both hooks: an ICMP error's checksum is never partial (the kernel sums the
/// messages it makes in software).
#[inline(always)]
fn rewrite(pkt: &mut Packet, e: &Embedded, to: &Endpoint) {
    let (ip, l4, p, end) = (pkt.ip, pkt.l4, pkt.embedded, pkt.end);
    let ttl = pkt.ttl - 1;
    if pkt.family == FAMILY_IPV4 {
        if ip + 20 > end || l4 + 8 > end || p + 28 > end {
            return;
        }
        let old_inner = raw16_at(p + 10);
        let new_inner = replace32(old_inner, e.src[0], to.addr[0]);
        let mut icmp = raw16_at(l4 + 2);
        icmp = replace32(icmp, e.src[0], to.addr[0]);
        icmp = replace16(icmp, old_inner, new_inner);
        icmp = replace16(icmp, e.sport, to.port);
        put32(p + 12, to.addr[0]);
        put16(p + 10, new_inner);
        put16(p + 20, to.port);
        put16(l4 + 2, icmp);

        let mut check = raw16_at(ip + 10);
        check = replace32(check, pkt.dst[0], to.addr[0]);
        check = replace16(
            check,
            u16::from_ne_bytes([pkt.ttl, pkt.proto]),
            u16::from_ne_bytes([ttl, pkt.proto]),
        );
        put32(ip + 16, to.addr[0]);
        put8(ip + 8, ttl);
        put16(ip + 10, check);
    } else {
        if ip + 40 > end || l4 + 8 > end || p + 48 > end {
            return;
        }
        let mut icmp = raw16_at(l4 + 2);
        icmp = replace_addr(icmp, &pkt.dst, &to.addr, 4);
        icmp = replace_addr(icmp, &e.src, &to.addr, 4);
        icmp = replace16(icmp, e.sport, to.port);
        for (i, w) in to.addr.iter().enumerate() {
            put32(p + 8 + 4 * i, *w);
            put32(ip + 24 + 4 * i, *w);
        }
        put16(p + 40, to.port);
        put16(l4 + 2, icmp);
        put8(ip + 7, ttl);
    }
    pkt.ttl = ttl;
    pkt.dst = to.addr;
}
