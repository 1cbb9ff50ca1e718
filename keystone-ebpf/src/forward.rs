//! Forwarding: `bpf_fib_lookup` for the next hop, MAC rewrite, then the hook's transmit (`XDP_TX` or `bpf_redirect`).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use keystone_common::{
    FAMILY_IPV4, NextHopCache, Reason, ReplyHopCache, limits::forward::NEXT_HOP_TTL_NS,
};

use crate::{
    Verdict,
    hook::Hook,
    maps::{NEXT_HOPS, REPLY_HOPS, can_redirect},
    parse::Packet,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a FIB lookup says the packet should go.
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Why a FIB lookup gave no next hop.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FibMiss {
    /// The route is not unicast (`BPF_FIB_LKUP_RET_NOT_FWDED`): the destination is
    /// the gateway itself (or broadcast/multicast), so the kernel delivers it locally.
    Local,
    /// The neighbour's MAC is not known yet.
    NoNeighbour,
    /// No route, forwarding disabled, ...
    Failed,
}

impl FibMiss {
    /// The reason a packet that goes on after this miss is counted under.
    #[inline(always)]
    pub const fn reason(self) -> Reason {
        match self {
            FibMiss::NoNeighbour => Reason::FibNoNeighbour,
            FibMiss::Local | FibMiss::Failed => Reason::FibFailed,
        }
    }
}

/// Looks up the route from `src` to `dst` (map words) for `pkt`, as if it arrived on
/// the ingress interface. The caller decides what a miss means (the contract passes
/// the packet for every miss; see `Reason::FibNoNeighbour`, `Reason::FibFailed`).
#[inline(always)]
pub fn fib_lookup<C: Hook>(
    ctx: &C,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> Result<NextHop, FibMiss> {
    // SAFETY: plain C struct of integers and unions of integers; all-zero is valid.
    let mut p: FibParams = unsafe { zeroed() };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.__bindgen_anon_1.tot_len = ctx.fib_tot_len(pkt.ip_len);
    p.ifindex = ctx.ingress_ifindex();
    if pkt.family == FAMILY_IPV4 {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = pkt.tos;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: `p` is a valid, exclusively borrowed bpf_fib_lookup of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Ok(NextHop {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Err(FibMiss::NoNeighbour)
    } else if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        Err(FibMiss::Local)
    } else {
        Err(FibMiss::Failed)
    }
}

/// The next hop from `pkt`'s source to backend `slot` (of `generation`) at `dst`:
/// from this CPU's `NEXT_HOPS` entry while it is valid (see `NextHopCache`) at
/// `now` (`bpf_ktime_get_coarse_ns`, read once per packet by the caller), else
/// `fib_lookup`, whose success refreshes the entry. Misses are never cached.
#[inline(always)]
pub fn backend_hop<C: Hook>(
    ctx: &C,
    pkt: &Packet,
    slot: u32,
    generation: u32,
    dst: &[u32; 4],
    now: u64,
) -> Result<NextHop, FibMiss> {
    let Some(entry) = NEXT_HOPS.get_ptr_mut(slot) else {
        return fib_lookup(ctx, pkt, &pkt.src, dst);
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else touches it while the
    // program runs here.
    let entry = unsafe { &mut *entry };
    let ingress = ctx.ingress_ifindex();
    if entry.usable(generation, ingress, now) {
        return Ok(cached(entry));
    }
    let hop = fib_lookup(ctx, pkt, &pkt.src, dst)?;
    *entry = remembered(&hop, generation, ingress, now);
    Ok(hop)
}

/// The next hop of a `nat` reply from `src` (its VIP) to its client (`pkt.dst`):
/// from this CPU's `REPLY_HOPS` entry for the client while it is valid (see
/// `ReplyHopCache`) at `now`, else `fib_lookup`, whose success refreshes the entry.
/// Misses are never cached: `FibMiss::Local` (the gateway's own connections to a
/// backend) is looked up on every packet, as before.
#[inline(always)]
pub fn reply_hop<C: Hook>(
    ctx: &C,
    pkt: &Packet,
    src: &[u32; 4],
    now: u64,
) -> Result<NextHop, FibMiss> {
    let Some(entry) = REPLY_HOPS.get_ptr_mut(ReplyHopCache::index(&pkt.dst)) else {
        return fib_lookup(ctx, pkt, src, &pkt.dst);
    };
    // SAFETY: as in `backend_hop`.
    let entry = unsafe { &mut *entry };
    let ingress = ctx.ingress_ifindex();
    let family = pkt.family as u32;
    if entry.hop.usable(family, ingress, now) && entry.src == *src && entry.dst == pkt.dst {
        return Ok(cached(&entry.hop));
    }
    let hop = fib_lookup(ctx, pkt, src, &pkt.dst)?;
    *entry = ReplyHopCache {
        hop: remembered(&hop, family, ingress, now),
        src: *src,
        dst: pkt.dst,
    };
    Ok(hop)
}

#[inline(always)]
fn cached(entry: &NextHopCache) -> NextHop {
    NextHop {
        ifindex: entry.egress_ifindex,
        smac: entry.smac,
        dmac: entry.dmac,
    }
}

/// The cache entry for a successful lookup at `now`.
#[inline(always)]
fn remembered(hop: &NextHop, generation: u32, ingress: u32, now: u64) -> NextHopCache {
    NextHopCache {
        expires_ns: now + NEXT_HOP_TTL_NS,
        generation,
        ingress_ifindex: ingress,
        egress_ifindex: hop.ifindex,
        smac: hop.smac,
        dmac: hop.dmac,
    }
}

/// Sets the frame's MACs for `hop` and sends it (`Hook::transmit`): back out of the
/// ingress interface, else to the egress one. A VLAN tag stays as it was. On XDP an
/// egress device that cannot take the redirect (`can_redirect`) gets nothing:
/// `Reason::EgressNotXdp`, the frame passed to the kernel with its MACs unchanged
/// (addressed to this host, so the kernel forwards it); an skb (tc) reaches any
/// device.
#[inline(always)]
pub fn send<C: Hook>(ctx: &C, hop: &NextHop) -> Result<u32, Verdict> {
    let ingress = ctx.ingress_ifindex();
    if !C::SKB && hop.ifindex != ingress && !can_redirect(ingress, hop.ifindex) {
        return Err(Verdict::pass(Reason::EgressNotXdp));
    }
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        // Checked by the parser already; repeated for the verifier.
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    // SAFETY: data..data + 12 is inside the frame (checked above).
    unsafe {
        core::ptr::write_unaligned(data as *mut [u8; 6], hop.dmac);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], hop.smac);
    }
    Ok(ctx.transmit(hop.ifindex))
}
