//! The two hooks the program runs at, XDP and tc ingress, as one trait: packet
//! access, the L4 checksum update and the transmit step are the only things that
//! differ, so parsing, selection, NAT, forwarding and counters are written once,
//! generic over [`Hook`]. Verdicts are XDP actions everywhere (that is what
//! `ACTION_STATS` counts, for both hooks); `tc_action` maps them at the tc entry.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        xdp_action::{XDP_PASS, XDP_REDIRECT, XDP_TX},
    },
    helpers::{bpf_l4_csum_replace, bpf_redirect, bpf_skb_pull_data},
    programs::{TcContext, XdpContext},
};

use crate::l4sum::{self, L4Change};

/// `bpf_l4_csum_replace` flags (uapi `BPF_F_*`; not in every arch's bindings).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const BPF_F_MARK_ENFORCE: u64 = 1 << 6;

/// What the shared code needs from the hook it runs at.
pub trait Hook {
    /// The packet is an skb (tc): its redirects go through the kernel's transmit
    /// path, so they reach any device, and its L4 checksum may be partial
    /// (`CHECKSUM_PARTIAL`, completed at transmit), which the checksum helpers
    /// keep right.
    const SKB: bool;
    /// Start and end of the bytes the program can read and write directly.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (tc: may run past `data_end`, in page fragments).
    fn len(&self) -> u64;
    fn ingress_ifindex(&self) -> u32;
    fn ctx_ptr(&self) -> *mut c_void;
    /// `tot_len` for `bpf_fib_lookup` (0: the kernel checks the MTU itself).
    fn fib_tot_len(&self, ip_len: u16) -> u16;
    /// Updates the TCP/UDP checksum for `change`, after every direct write of the
    /// rewrite (on tc the helper invalidates packet pointers).
    fn update_l4_checksum(&self, change: &L4Change);
    /// Sends the frame (MACs already set) out of `egress`; returns the XDP action
    /// it counts as (`XDP_TX` back out of the ingress interface).
    fn transmit(&self, egress: u32) -> u32;
}

impl Hook for XdpContext {
    const SKB: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn fib_tot_len(&self, ip_len: u16) -> u16 {
        ip_len
    }

    #[inline(always)]
    fn update_l4_checksum(&self, change: &L4Change) {
        l4sum::update_l4_checksum_in_place(change);
    }

    #[inline(always)]
    fn transmit(&self, egress: u32) -> u32 {
        if egress == Hook::ingress_ifindex(self) {
            XDP_TX
        } else {
            // SAFETY: plain helper call; with flags 0 it returns XDP_REDIRECT or XDP_ABORTED.
            unsafe { bpf_redirect(egress, 0) as u32 }
        }
    }
}

impl Hook for TcContext {
    const SKB: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        TcContext::len(self) as u64
    }

    /// The device the skb arrived on (`skb->dev`, as `BPF_PROG_TEST_RUN` sets it too).
    #[inline(always)]
    #[allow(
        clippy::misnamed_getters,
        reason = "at tc ingress `ifindex` is the ingress device"
    )]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed; a plain field read.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.as_ptr()
    }

    /// 0: an skb may be a GSO super-packet, longer than the MTU; the kernel's own
    /// check (`is_skb_forwardable`) knows it will be segmented.
    #[inline(always)]
    fn fib_tot_len(&self, _ip_len: u16) -> u16 {
        0
    }

    /// Through `bpf_l4_csum_replace`, not in place: the skb's checksum may be
    /// partial (a sender with transmit offload, e.g. every veth peer by default),
    /// where the field holds the pseudo-header's sum and only the address change
    /// (`BPF_F_PSEUDO_HDR`) must touch it, and a `CHECKSUM_COMPLETE` skb's
    /// `skb->csum` must follow the change; the helper does both from the skb's
    /// `ip_summed`, which the program cannot read.
    #[inline(always)]
    fn update_l4_checksum(&self, change: &L4Change) {
        let offset = (change.check_at - TcContext::data(self)) as u32;
        // UDP: a zero checksum ("none", IPv4) stays zero, a computed zero is sent
        // as 0xffff; over IPv6 a zero field is not "none" and is updated too.
        let udp = if !change.udp {
            0
        } else if change.v4 {
            BPF_F_MARK_MANGLED_0
        } else {
            BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE
        };
        let skb = self.skb.skb;
        // SAFETY: helper calls on this program's skb; they bounds-check `offset`.
        unsafe {
            bpf_l4_csum_replace(
                skb,
                offset,
                0,
                change.addr_diff() as u64,
                BPF_F_PSEUDO_HDR | udp,
            );
            bpf_l4_csum_replace(
                skb,
                offset,
                change.old_port as u64,
                change.new_port as u64,
                2 | udp,
            );
        }
    }

    /// `bpf_redirect` to the egress device's transmit path, the ingress one
    /// included (XDP's `XDP_TX`), with the MACs the FIB gave, as at XDP: both hooks
    /// make one forwarding decision. (`bpf_redirect_neigh` would resolve a neighbour
    /// the FIB does not know yet in place, where both hooks now hand the packet to
    /// the kernel; `bpf_redirect_peer` would skip the veth backlog but only into a
    /// peer's ingress, past its namespace's routing.)
    #[inline(always)]
    fn transmit(&self, egress: u32) -> u32 {
        // SAFETY: plain helper call; with flags 0 it only records the target.
        unsafe { bpf_redirect(egress, 0) };
        if egress == Hook::ingress_ifindex(self) {
            XDP_TX
        } else {
            XDP_REDIRECT
        }
    }
}

/// The least of a packet the parser must read directly: Ethernet, IPv4 and TCP
/// headers without options or tags.
const MIN_HEADERS: u32 = 54;
/// What is pulled into the linear part when less than `MIN_HEADERS` is there:
/// everything the parser may read (one VLAN tag, IPv4 with options, TCP).
const PULL_HEADERS: u32 = 18 + 60 + 20;

/// Makes the headers of `ctx`'s skb directly readable. The stack builds skbs with
/// their headers in the linear part (then nothing is pulled); the payload may stay
/// in page fragments, as only its length is checked.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let len = TcContext::len(ctx);
    let linear = (TcContext::data_end(ctx) - TcContext::data(ctx)) as u32;
    if linear < len.min(MIN_HEADERS) {
        // SAFETY: helper call on this program's skb; a failure leaves it as it was,
        // and the parser's bounds checks then count the packet as truncated.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, len.min(PULL_HEADERS)) };
    }
}

/// The tc verdict for an XDP action: pass (`TC_ACT_OK`), sent (`TC_ACT_REDIRECT`,
/// the target recorded by `bpf_redirect`) or dropped (`TC_ACT_SHOT`).
#[inline(always)]
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' type differs by target"
)]
pub fn tc_action(action: u32) -> i32 {
    match action {
        XDP_PASS => TC_ACT_OK as i32,
        XDP_TX | XDP_REDIRECT => TC_ACT_REDIRECT as i32,
        _ => TC_ACT_SHOT as i32,
    }
}
