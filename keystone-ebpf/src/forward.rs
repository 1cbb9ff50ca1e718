//! Forwarding: `bpf_fib_lookup` for the next hop, MAC rewrite, then `XDP_TX` or `bpf_redirect`.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action::XDP_TX,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
};
use keystone_common::{FAMILY_IPV4, NextHopCache, Reason, limits::forward::NEXT_HOP_TTL_NS};

use crate::{
    Verdict,
    maps::{NEXT_HOPS, can_redirect},
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
pub fn fib_lookup(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> Result<NextHop, FibMiss> {
    // SAFETY: plain C struct of integers and unions of integers; all-zero is valid.
    let mut p: FibParams = unsafe { zeroed() };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
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
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
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
/// from this CPU's `NEXT_HOPS` entry while it is valid (see `NextHopCache`), else
/// `fib_lookup`, whose success refreshes the entry. Misses are never cached.
#[inline(always)]
pub fn backend_hop(
    ctx: &XdpContext,
    pkt: &Packet,
    slot: u32,
    generation: u32,
    dst: &[u32; 4],
) -> Result<NextHop, FibMiss> {
    let Some(entry) = NEXT_HOPS.get_ptr_mut(slot) else {
        return fib_lookup(ctx, pkt, &pkt.src, dst);
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else touches it while the
    // program runs here.
    let entry = unsafe { &mut *entry };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let ingress = ctx.ingress_ifindex() as u32;
    if now < entry.expires_ns && entry.generation == generation && entry.ingress_ifindex == ingress
    {
        return Ok(NextHop {
            ifindex: entry.egress_ifindex,
            smac: entry.smac,
            dmac: entry.dmac,
        });
    }
    let hop = fib_lookup(ctx, pkt, &pkt.src, dst)?;
    *entry = NextHopCache {
        expires_ns: now + NEXT_HOP_TTL_NS,
        generation,
        ingress_ifindex: ingress,
        egress_ifindex: hop.ifindex,
        smac: hop.smac,
        dmac: hop.dmac,
    };
    Ok(hop)
}

/// Sets the frame's MACs for `hop` and sends it: `XDP_TX` back out of the ingress
/// interface, else `bpf_redirect` to the egress one. A VLAN tag stays as it was.
/// An egress device that cannot take the redirect (`can_redirect`) gets nothing:
/// `Reason::EgressNotXdp`, the frame passed to the kernel with its MACs unchanged
/// (addressed to this host, so the kernel forwards it).
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &NextHop) -> Result<u32, Verdict> {
    let ingress = ctx.ingress_ifindex() as u32;
    if hop.ifindex != ingress && !can_redirect(ingress, hop.ifindex) {
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
    if hop.ifindex == ingress {
        Ok(XDP_TX)
    } else {
        // SAFETY: plain helper call; with flags 0 it returns XDP_REDIRECT or XDP_ABORTED.
        Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
    }
}
