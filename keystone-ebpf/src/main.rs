//! Entry points: the `keystone_xdp` and `keystone_tc` programs (one code, generic over `hook::Hook`), the verdict/counting wrapper, and the two paths (client → VIP, backend reply → client).
//
// Built for bpfel-unknown-none by keystone-agent's build.rs. Host builds (clippy,
// `cargo build --workspace`) compile the same code into an empty binary.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod ab;
mod checksum;
mod forward;
mod hook;
mod icmp;
mod l4sum;
mod maps;
mod nat;
mod parse;
mod raw;
mod select;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use keystone_common::{Endpoint, FlowKey, PROTO_TCP, Reason, ReverseNat, VipInfo, mode, tcp_flags};

use crate::{
    forward::FibMiss,
    hook::Hook,
    maps::{
        REVERSE, VIPS, count_action, count_handshake, count_reason, count_reply, count_traffic,
        maybe_backend_addr, maybe_vip_addr,
    },
    nat::Side,
    parse::Packet,
};

/// A packet that left the fast path: the action it gets and the reason it is counted
/// under (see `keystone_common::Reason` for the contract).
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: XDP_PASS,
            reason,
        }
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: XDP_DROP,
            reason,
        }
    }
}

#[xdp]
pub fn keystone_xdp(ctx: XdpContext) -> u32 {
    run::<_, { ab::PRODUCTION }>(&ctx)
}

/// The same program at tc ingress (`attach: tc`): verdicts are counted as the XDP
/// actions they correspond to, then mapped (`hook::tc_action`).
#[classifier]
pub fn keystone_tc(ctx: TcContext) -> i32 {
    hook::pull_headers(&ctx);
    hook::tc_action(run::<_, { ab::PRODUCTION }>(&ctx))
}

/// `bench packet`'s A/B variants of `keystone_xdp` (see `ab`), only in the `ab`
/// feature's object.
#[cfg(feature = "ab")]
mod variants {
    use super::*;

    #[xdp]
    pub fn ab_lookup_first(ctx: XdpContext) -> u32 {
        run::<_, { ab::LOOKUP_FIRST }>(&ctx)
    }

    #[xdp]
    pub fn ab_no_syn_checksum(ctx: XdpContext) -> u32 {
        run::<_, { ab::NO_SYN_CHECKSUM }>(&ctx)
    }

    #[xdp]
    pub fn ab_no_counters(ctx: XdpContext) -> u32 {
        run::<_, { ab::NO_COUNTERS }>(&ctx)
    }

    #[xdp]
    pub fn ab_no_insert(ctx: XdpContext) -> u32 {
        run::<_, { ab::NO_INSERT }>(&ctx)
    }
}

/// One packet at either hook: the verdict, with its action (and reason) counted.
/// `V`: the `ab` variant.
#[inline(always)]
fn run<C: Hook, const V: u32>(ctx: &C) -> u32 {
    let action = match try_run::<C, V>(ctx) {
        Ok(action) => action,
        Err(Verdict { action, reason }) => {
            count_reason(reason);
            action
        }
    };
    count_action(action);
    action
}

#[inline(always)]
fn try_run<C: Hook, const V: u32>(ctx: &C) -> Result<u32, Verdict> {
    let Some(mut pkt) = parse::parse(ctx)? else {
        return Ok(parse::NOT_OURS);
    };
    // One array read rules out most packets that are not ours before any hash lookup.
    if maybe_vip_addr(&pkt.dst) {
        if pkt.embedded != 0 {
            return icmp::to_backend(ctx, &mut pkt);
        }
        let vip_key = Endpoint {
            addr: pkt.dst,
            port: pkt.dport,
            proto: pkt.proto,
            family: pkt.family,
        };
        if let Some(vip) = VIPS.get_ptr(vip_key) {
            // SAFETY: a valid map value pointer to plain data; the agent replaces entries
            // whole, and a torn read is caught by the range checks downstream.
            let vip = unsafe { *vip };
            return to_backend::<C, V>(ctx, &mut pkt, &vip);
        }
    }
    if maybe_backend_addr(&pkt.src) {
        let src_key = Endpoint {
            addr: pkt.src,
            port: pkt.sport,
            proto: pkt.proto,
            family: pkt.family,
        };
        if let Some(rev) = REVERSE.get_ptr(src_key) {
            // SAFETY: as above.
            let rev = unsafe { *rev };
            return reply(ctx, &mut pkt, &rev);
        }
    }
    Ok(parse::NOT_OURS)
}

/// Client → VIP: pick the backend (`select::choose`), count, then DNAT (`nat`) or set
/// MACs only (`dsr`).
#[inline(always)]
fn to_backend<C: Hook, const V: u32>(
    ctx: &C,
    pkt: &mut Packet,
    vip: &VipInfo,
) -> Result<u32, Verdict> {
    if vip.mode == mode::NAT && pkt.ttl <= 1 {
        return Err(Verdict::pass(Reason::TtlExpired));
    }
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        src_port: pkt.sport,
        dst_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if !ab::has(V, ab::NO_SYN_CHECKSUM)
        && pkt.proto == PROTO_TCP
        && tcp_flags::is_new_connection(pkt.tcp_flags)
    {
        checksum::check_syn::<C>(pkt);
    }
    // One clock read per packet, for the connection table and the next-hop cache.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let choice = select::choose::<V>(&key, vip, pkt.tcp_flags, now)?;
    let to = choice.backend.endpoint;
    if to.family != pkt.family {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    if !ab::has(V, ab::NO_COUNTERS) {
        count_traffic(vip.index, choice.slot, pkt.frame_len, choice.new_flow);
        count_handshake(
            choice.slot,
            choice.connection_attempt,
            choice.handshake_done,
        );
    }
    match vip.mode {
        mode::NAT => nat::rewrite(ctx, pkt, Side::Dst, &to),
        // The IP header stays as it is (the backend holds the VIP); only the MACs
        // change, towards the backend's address.
        mode::DSR => {}
        _ => return Err(Verdict::drop(Reason::MapInconsistent)),
    }
    let hop = forward::backend_hop(
        ctx,
        pkt,
        choice.slot,
        choice.backend.generation,
        &to.addr,
        now,
    )
    .map_err(|miss| Verdict::pass(miss.reason()))?;
    forward::send(ctx, &hop)
}

/// Backend → client in `nat` mode: the source becomes the VIP again (stateless, so any
/// gateway with the same config can translate it). TCP SYN+ACK, RST and FIN are
/// counted for the backend that sent them and noted in the client flow's entry
/// (`select::note_reply`), the only replies that look at the connection table.
///
/// A packet from the backend's service address to the gateway itself (the FIB says
/// the destination is local: e.g. the agent's own health checks of that backend) is
/// not a reply to a client: `XDP_PASS`, untouched, uncounted. The route is looked up
/// before the rewrite for that reason (with the VIP as source, as after it), through
/// the reply next-hop cache (`forward::reply_hop`).
#[inline(always)]
fn reply<C: Hook>(ctx: &C, pkt: &mut Packet, rev: &ReverseNat) -> Result<u32, Verdict> {
    if rev.vip.family != pkt.family {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let hop = forward::reply_hop(ctx, pkt, &rev.vip.addr, now);
    if let Err(FibMiss::Local) = hop {
        return Ok(parse::NOT_OURS);
    }
    if pkt.ttl <= 1 {
        return Err(Verdict::pass(Reason::TtlExpired));
    }
    if pkt.proto == PROTO_TCP && count_reply(rev.backend_slot, pkt.tcp_flags) {
        let client_flow = FlowKey {
            src: pkt.dst,
            dst: rev.vip.addr,
            src_port: pkt.dport,
            dst_port: rev.vip.port,
            proto: pkt.proto,
            family: pkt.family,
            _pad: [0; 2],
        };
        select::note_reply(&client_flow, rev.backend_slot, pkt.tcp_flags);
    }
    nat::rewrite(ctx, pkt, Side::Src, &rev.vip);
    let hop = hop.map_err(|miss| Verdict::pass(miss.reason()))?;
    forward::send(ctx, &hop)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
