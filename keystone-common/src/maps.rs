//! Map names, keys and values. Every type is `#[repr(C)]` with explicit padding:
//! implicit padding makes hash-map keys miss silently.
//!
//! Addresses are stored as four `u32` words holding the address octets in network
//! order (`u32::from_ne_bytes` of each 4-octet chunk); IPv4 uses word 0 and leaves
//! the rest zero. Ports are network byte order (`__be16`, as in the packet).

/// Map names are versioned so an upgrade can migrate pinned maps instead of
/// mis-reading an old layout.
pub mod names {
    /// V2: `VipInfo` gained `ring_base` (tables are placed by the agent). A V1 map
    /// pinned by an older agent is migrated (see `VIPS_V1`), never read as V2.
    pub const VIPS: &str = "KS_VIPS_V2";
    /// The VIP map of older agents (value `legacy::VipInfoV1`, tables at fixed
    /// stripes `legacy::v1_ring_base`): read once to fill `VIPS` on an upgrade, then
    /// unpinned.
    pub const VIPS_V1: &str = "KS_VIPS_V1";
    pub const BACKENDS: &str = "KS_BACKENDS_V1";
    pub const RINGS: &str = "KS_RINGS_V1";
    /// V2: `FlowState` gained the connection's TCP state (`conn_flags`, `seen`). A V1
    /// map pinned by an older agent is migrated (see `CONNS_V1`), never read as V2.
    pub const CONNS: &str = "KS_CONNS_V2";
    /// The connection table of older agents (value `legacy::FlowStateV1`): its entries
    /// are copied into `CONNS` with an unknown state on an upgrade, then it is unpinned.
    pub const CONNS_V1: &str = "KS_CONNS_V1";
    /// V2: `ReverseNat` gained `backend_slot`. A V1 map pinned by an older agent is
    /// migrated (see `REVERSE_V1`), never read with the new layout.
    pub const REVERSE: &str = "KS_REVERSE_V2";
    /// The reverse-NAT map of older agents (value `legacy::ReverseNatV1`): read once to
    /// fill `REVERSE` on an upgrade, then unpinned.
    pub const REVERSE_V1: &str = "KS_REVERSE_V1";
    pub const VIP_STATS: &str = "KS_VIP_STATS_V1";
    pub const BACKEND_STATS: &str = "KS_BACKEND_STATS_V1";
    /// Per-CPU array of `L4Counters`, indexed by backend slot: passive TCP signals
    /// per backend (connection attempts and how its replies answered them).
    /// V2: `L4Counters` gained `established`.
    pub const BACKEND_L4: &str = "KS_BACKEND_L4_V2";
    /// The L4 counters of older agents (`legacy::L4CountersV1`): replaced, not copied
    /// (the counters start again from zero, like any counter after a restart), and
    /// unpinned once the new program is attached.
    pub const BACKEND_L4_V1: &str = "KS_BACKEND_L4_V1";
    pub const ACTION_STATS: &str = "KS_ACTION_STATS_V1";
    pub const REASON_STATS: &str = "KS_REASON_STATS_V1";
    /// Per-CPU array of `u64`, indexed by `Event`: things on the forwarding path
    /// worth counting that are not exceptions (the packet is forwarded as usual).
    pub const EVENT_STATS: &str = "KS_EVENT_STATS_V1";
    /// Set of VIP addresses (any port/protocol): lets the program tell that a packet
    /// whose ports it cannot read (fragment, extension header, truncated or
    /// inconsistent header) was meant for a VIP.
    pub const VIP_ADDRS: &str = "KS_VIP_ADDRS_V1";
    /// Array of `u32` words: the address prefilter, see `addr_filter`.
    pub const ADDR_FILTER: &str = "KS_ADDR_FILTER_V1";
    /// Per-CPU array of `NextHopCache`, indexed by backend slot: the program's own
    /// cache of `bpf_fib_lookup` answers towards backends. Never pinned: a new
    /// program starts with an empty one.
    pub const NEXT_HOPS: &str = "KS_NEXT_HOPS_V1";
    /// Per-CPU array of `ReplyHopCache`, indexed by `ReplyHopCache::index` of the
    /// client address: the same cache for `nat` replies. Never pinned.
    pub const REPLY_HOPS: &str = "KS_REPLY_HOPS_V1";
    /// Array of `u32` `iface_flags`, indexed by ifindex (below
    /// `limits::iface::MAX_IFINDEX`): how the program runs on each interface, which
    /// decides where it may redirect (see `iface_flags`). Written by the agent after
    /// each attach; pinned, so a restarted agent's program knows them from its first
    /// packet.
    pub const IFACES: &str = "KS_IFACES_V1";
    /// The XDP program's function name.
    pub const PROGRAM: &str = "keystone_xdp";
    /// The tc (`sched_cls`) program's function name: the same code at the tc hook.
    pub const TC_PROGRAM: &str = "keystone_tc";
}

mod addr;
mod conn;
mod counters;
mod forward;
pub mod legacy;
#[cfg(test)]
mod tests;

pub use crate::flow::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
pub use addr::*;
pub use conn::*;
pub use counters::*;
pub use forward::*;

/// The ICMP errors the program delivers to the backend that owns a VIP flow
/// (see `Event::IcmpToBackend`): path-MTU signals, which a backend must see or its
/// connections stall behind a smaller MTU on the way to the client.
pub mod icmp {
    /// ICMPv4 "destination unreachable" ...
    pub const V4_DEST_UNREACH: u8 = 3;
    /// ... code "fragmentation needed and DF set" (RFC 1191).
    pub const V4_FRAG_NEEDED: u8 = 4;
    /// ICMPv6 "packet too big" (RFC 8201); any code.
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    /// ICMP/ICMPv6 header length: type, code, checksum, 4 bytes (unused / MTU).
    pub const HLEN: usize = 8;
    /// Bytes of the embedded packet's L4 header the program needs (the ports; all
    /// an ICMPv4 error is guaranteed to quote, RFC 792).
    pub const EMBEDDED_L4: usize = 8;

    /// Whether (type, code) of an ICMP message of `family` is a path-MTU error.
    #[inline(always)]
    pub const fn is_path_mtu_error(family: u8, icmp_type: u8, code: u8) -> bool {
        if family == super::FAMILY_IPV4 {
            icmp_type == V4_DEST_UNREACH && code == V4_FRAG_NEEDED
        } else {
            icmp_type == V6_PACKET_TOO_BIG
        }
    }
}
/// Forwarding modes (`VipInfo::mode`).
pub mod mode {
    /// DNAT to the backend, reverse-NAT the replies (IPVS-NAT style).
    pub const NAT: u32 = 0;
    /// Rewrite only the destination MAC; backends hold the VIP (IPVS-DR style).
    pub const DSR: u32 = 1;
}

/// TCP header flag bits (byte 13 of the TCP header), as the program reads them.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    /// SYN set, ACK clear: the first packet of a new connection (or its retransmit).
    /// It is (re-)picked through the live Maglev table even when its 4-tuple is in
    /// the connection table from an earlier connection (IPVS's `conn_reuse_mode`: a
    /// reused source port must not keep an old backend that no longer takes new
    /// connections), unless that entry shows a live established connection
    /// (`FlowState::syn_repicks`): a SYN never moves one.
    #[inline(always)]
    pub const fn is_new_connection(flags: u8) -> bool {
        flags & (SYN | ACK) == SYN
    }
}

/// Per-interface flags (`names::IFACES`). A redirect from native XDP is delivered
/// only by a device that takes XDP frames (`ndo_xdp_xmit`): a real NIC with an XDP
/// program, a veth whose peer runs XDP or GRO. A bridge, bond or VLAN device does
/// not. So the program redirects to a next hop's device only if one of these says it
/// may, and otherwise passes the (already rewritten) packet to the kernel, which
/// forwards it (`Reason::EgressNotXdp`).
pub mod iface_flags {
    /// The program is attached here in native (driver) mode: a redirect into this
    /// device is delivered.
    pub const REDIRECT_TARGET: u32 = 1 << 0;
    /// The program is attached here in generic (skb) mode: its redirects go through
    /// the kernel's transmit path, which every device takes (a bridge included).
    pub const GENERIC: u32 = 1 << 1;
}

/// VIP flags (`VipInfo::flags`).
pub mod vip_flags {
    /// Hash on the source address only, so a client keeps one backend across connections.
    pub const SOURCE_STICKY: u32 = 1 << 0;
}

/// Backend flags (`Backend::flags`).
pub mod backend_flags {
    /// The backend may receive packets. Cleared when it is removed or marked down:
    /// flows pinned to it are then re-picked.
    pub const UP: u32 = 1 << 0;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], Copy, and have no implicit padding.
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for VipAddr {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for ReverseNat {}
    unsafe impl aya::Pod for NextHopCache {}
    unsafe impl aya::Pod for ReplyHopCache {}
    unsafe impl aya::Pod for legacy::ReverseNatV1 {}
    unsafe impl aya::Pod for legacy::FlowStateV1 {}
    unsafe impl aya::Pod for legacy::L4CountersV1 {}
    unsafe impl aya::Pod for legacy::VipInfoV1 {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for L4Counters {}
}
