//! The forwarding tables' values: VIPs, backends, reverse NAT and next hops.

use super::Endpoint;

/// Value of the VIP map. Rewriting this one entry is what makes a new table live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into per-VIP arrays (stats), `< limits.max_vips`.
    pub index: u32,
    /// `mode::NAT` or `mode::DSR`.
    pub mode: u32,
    /// `vip_flags::*`.
    pub flags: u32,
    /// Which of the VIP's two ring stripes is live (0 or 1).
    pub ring_slot: u32,
    /// Entries in the live table; 0 means no backend can take new flows.
    pub ring_size: u32,
    /// Index of the live table's first entry in the ring array; the table is
    /// `ring_base .. ring_base + ring_size`, placed by the agent.
    pub ring_base: u32,
}
/// Value of the backend array, indexed by backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Where to send: address, port (network order), protocol and family.
    pub endpoint: Endpoint,
    /// `backend_flags::*`.
    pub flags: u32,
    /// Bumped whenever the slot is given to a different backend, so flows pinned
    /// to the previous occupant are re-picked instead of following the slot.
    pub generation: u32,
    /// The VIP this backend slot serves.
    pub vip_index: u32,
}
/// Value of the per-CPU next-hop cache (`names::NEXT_HOPS`), indexed by backend
/// slot: a successful `bpf_fib_lookup` towards that backend, reused by later packets
/// instead of another lookup while all of these still match (else it is looked up
/// again and rewritten):
/// - `expires_ns` is in the future (`bpf_ktime_get_coarse_ns`; entries live
///   `limits::forward::NEXT_HOP_TTL_NS`), so a changed neighbour MAC, route or
///   egress device takes effect within that time;
/// - `generation` is the backend's (`Backend::generation`): a slot given to another
///   backend never uses its predecessor's next hop;
/// - `ingress_ifindex` is the packet's (the lookup depends on it).
///
/// The lookup is per backend, not per flow: routing by source address, TOS or
/// ports (policy routing, multipath hashing) towards one backend is decided by the
/// first packet of each `NEXT_HOP_TTL_NS` period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopCache {
    /// Monotonic coarse-clock ns after which the entry is not used.
    pub expires_ns: u64,
    pub generation: u32,
    pub ingress_ifindex: u32,
    pub egress_ifindex: u32,
    /// Source and destination MACs for the frame.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl NextHopCache {
    /// Whether the entry answers for `generation` and a packet that arrived on
    /// `ingress` at `now` (not expired).
    #[inline(always)]
    pub const fn usable(&self, generation: u32, ingress: u32, now: u64) -> bool {
        now < self.expires_ns && self.generation == generation && self.ingress_ifindex == ingress
    }
}

/// Value of the per-CPU reply next-hop cache (`names::REPLY_HOPS`): a successful
/// `bpf_fib_lookup` for a `nat` reply (VIP → client), reused while `hop` is
/// usable (`NextHopCache::usable`: same expiry, same ingress check; its
/// `generation` holds the address family) and `src`/`dst` are the reply's VIP and
/// client. Direct-mapped: the entry at `index(dst)`, so two clients sharing an
/// entry take turns (each change is a lookup, never a wrong hop). The lookup is per
/// (VIP, client): multipath hashing towards one client is decided by the first reply
/// of each `NEXT_HOP_TTL_NS` period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyHopCache {
    pub hop: NextHopCache,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl ReplyHopCache {
    /// The entry for client address `dst`, below `limits::forward::REPLY_HOP_SLOTS`.
    #[inline(always)]
    pub const fn index(dst: &[u32; 4]) -> u32 {
        let mixed =
            (dst[0] ^ dst[1].rotate_left(8) ^ dst[2].rotate_left(16) ^ dst[3].rotate_left(24))
                .wrapping_mul(0x9e37_79b1);
        mixed >> (32 - crate::limits::forward::REPLY_HOP_SLOTS.trailing_zeros())
    }
}

/// Value of the reverse-NAT map (keyed by the backend's `Endpoint`): replies from
/// that backend get the VIP as their source. Stateless, so any gateway with the
/// same config translates any reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    pub vip: Endpoint,
    pub vip_index: u32,
    /// The backend's slot under `vip` (this gateway's allocation), so the reply path
    /// can count `L4Counters` for the backend that answered. Out of range (e.g.
    /// `NO_BACKEND` for an entry migrated without a slot): nothing is counted.
    pub backend_slot: u32,
}
