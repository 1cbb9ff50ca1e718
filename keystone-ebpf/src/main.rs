//! Entry point: the `keystone_xdp` program, its verdict/counting wrapper, and the two paths (client → VIP, backend reply → client).
//
// Built for bpfel-unknown-none by keystone-agent's build.rs. Host builds (clippy,
// `cargo build --workspace`) compile the same code into an empty binary.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod checksum;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod select;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use keystone_common::{Endpoint, FlowKey, PROTO_TCP, Reason, ReverseNat, VipInfo, mode, tcp_flags};

use crate::{
    forward::FibMiss,
    maps::{
        REVERSE, VIPS, count_action, count_reason, count_reply, count_syn, count_traffic,
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
    let action = match try_keystone_xdp(&ctx) {
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
fn try_keystone_xdp(ctx: &XdpContext) -> Result<u32, Verdict> {
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
            return to_backend(ctx, &mut pkt, &vip);
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

/// Client → VIP: pick the backend (a TCP SYN without ACK always through the live
/// Maglev table), count, then DNAT (`nat`) or set MACs only (`dsr`).
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &mut Packet, vip: &VipInfo) -> Result<u32, Verdict> {
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
    let syn = pkt.proto == PROTO_TCP && tcp_flags::is_new_connection(pkt.tcp_flags);
    if syn {
        checksum::check_syn(pkt);
    }
    let choice = select::choose(&key, vip, syn)?;
    let to = choice.backend.endpoint;
    if to.family != pkt.family {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    count_traffic(vip.index, choice.slot, pkt.frame_len, choice.new_flow);
    if syn {
        count_syn(choice.slot);
    }
    match vip.mode {
        mode::NAT => {
            nat::rewrite(pkt, Side::Dst, &to);
            let hop =
                forward::backend_hop(ctx, pkt, choice.slot, choice.backend.generation, &to.addr)
                    .map_err(|miss| Verdict::pass(miss.reason()))?;
            forward::send(ctx, &hop)
        }
        mode::DSR => {
            // The IP header stays as it is (the backend holds the VIP); only the MACs
            // change, towards the backend's address.
            let hop =
                forward::backend_hop(ctx, pkt, choice.slot, choice.backend.generation, &to.addr)
                    .map_err(|miss| Verdict::pass(miss.reason()))?;
            forward::send(ctx, &hop)
        }
        _ => Err(Verdict::drop(Reason::MapInconsistent)),
    }
}

/// Backend → client in `nat` mode: the source becomes the VIP again (stateless, so any
/// gateway with the same config can translate it). TCP SYN+ACK, RST and FIN are
/// counted for the backend that sent them.
///
/// A packet from the backend's service address to the gateway itself (the FIB says
/// the destination is local: e.g. the agent's own health checks of that backend) is
/// not a reply to a client: `XDP_PASS`, untouched, uncounted. The route is looked up
/// before the rewrite for that reason (with the VIP as source, as after it).
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &mut Packet, rev: &ReverseNat) -> Result<u32, Verdict> {
    if rev.vip.family != pkt.family {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    let hop = forward::fib_lookup(ctx, pkt, &rev.vip.addr, &pkt.dst);
    if let Err(FibMiss::Local) = hop {
        return Ok(parse::NOT_OURS);
    }
    if pkt.ttl <= 1 {
        return Err(Verdict::pass(Reason::TtlExpired));
    }
    if pkt.proto == PROTO_TCP {
        count_reply(rev.backend_slot, pkt.tcp_flags);
    }
    nat::rewrite(pkt, Side::Src, &rev.vip);
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
