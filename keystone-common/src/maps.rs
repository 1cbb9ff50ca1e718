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
    pub const CONNS: &str = "KS_CONNS_V1";
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
    pub const BACKEND_L4: &str = "KS_BACKEND_L4_V1";
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
    /// Array of `u32` `iface_flags`, indexed by ifindex (below
    /// `limits::iface::MAX_IFINDEX`): how the program runs on each interface, which
    /// decides where it may redirect (see `iface_flags`). Written by the agent after
    /// each attach; pinned, so a restarted agent's program knows them from its first
    /// packet.
    pub const IFACES: &str = "KS_IFACES_V1";
    /// The XDP program's function name.
    pub const PROGRAM: &str = "keystone_xdp";
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

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

/// An L4 endpoint: the key of a VIP, and of a backend in the reverse-NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address words, network-order octets (see module docs).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

impl Endpoint {
    pub fn new(addr: core::net::SocketAddr, proto: u8) -> Self {
        let (addr_words, family) = match addr.ip() {
            core::net::IpAddr::V4(ip) => (crate::hash::ipv4_words(ip.octets()), FAMILY_IPV4),
            core::net::IpAddr::V6(ip) => (crate::hash::ipv6_words(ip.octets()), FAMILY_IPV6),
        };
        Endpoint {
            addr: addr_words,
            port: addr.port().to_be(),
            proto,
            family,
        }
    }

    pub fn ip(&self) -> core::net::IpAddr {
        let w = self.addr;
        if self.family == FAMILY_IPV4 {
            core::net::Ipv4Addr::from(w[0].to_ne_bytes()).into()
        } else {
            let mut o = [0u8; 16];
            for (i, word) in w.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            core::net::Ipv6Addr::from(o).into()
        }
    }

    pub fn socket_addr(&self) -> core::net::SocketAddr {
        core::net::SocketAddr::new(self.ip(), u16::from_be(self.port))
    }

    /// Stable identity for Maglev permutations: the same endpoint hashes the same on
    /// every gateway, whatever the backend is called.
    pub fn identity(&self) -> u64 {
        let mut bytes = [0u8; 20];
        for (i, word) in self.addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        bytes[16..18].copy_from_slice(&self.port.to_ne_bytes());
        bytes[18] = self.proto;
        bytes[19] = self.family;
        crate::hash::fnv1a64(&bytes)
    }
}

/// Key of the VIP-address set (`names::VIP_ADDRS`): a VIP's address without port and
/// protocol. The value (`u32`) is how many VIPs use the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddr {
    /// Address words, network-order octets (see module docs).
    pub addr: [u32; 4],
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    // Two fields, not `[u8; 3]`: zeroing a 3-byte array compiles to a call to the
    // BPF object's byte-loop `memset` on every VIP-address lookup.
    pub _pad: u8,
    pub _pad2: u16,
}

impl VipAddr {
    #[inline(always)]
    pub const fn new(addr: [u32; 4], family: u8) -> Self {
        VipAddr {
            addr,
            family,
            _pad: 0,
            _pad2: 0,
        }
    }
}

impl From<&Endpoint> for VipAddr {
    fn from(e: &Endpoint) -> Self {
        VipAddr::new(e.addr, e.family)
    }
}

/// The address prefilter: a bitmap over a 16-bit fold of addresses that tells the
/// program, with one array read, that a packet's destination cannot be a VIP and its
/// source cannot be a nat backend, so most packets that are not ours skip both hash
/// lookups (VIPS, REVERSE). False positives only cost those lookups; the agent sets
/// a bit before the entries it covers exist and clears it after they are gone.
pub mod addr_filter {
    use crate::limits::filter::ADDR_FILTER_WORDS;

    /// 16-bit fold of an address (map words).
    #[inline(always)]
    pub const fn bucket(addr: &[u32; 4]) -> u32 {
        let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
        (x ^ (x >> 16)) & 0xffff
    }

    /// Filter word index of an address.
    #[inline(always)]
    pub const fn word(addr: &[u32; 4]) -> u32 {
        (bucket(addr) >> 4) % ADDR_FILTER_WORDS
    }

    /// Bit (in its word) saying "some VIP has this destination address".
    #[inline(always)]
    pub const fn vip_bit(addr: &[u32; 4]) -> u32 {
        1 << (bucket(addr) & 15)
    }

    /// Bit (in its word) saying "some nat backend has this source address".
    #[inline(always)]
    pub const fn backend_bit(addr: &[u32; 4]) -> u32 {
        1 << (16 + (bucket(addr) & 15))
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
    /// It is always (re-)picked through the live Maglev table, even when its 4-tuple
    /// is in the connection table from an earlier connection (IPVS's
    /// `conn_reuse_mode`): a reused source port must not keep an old backend that
    /// no longer takes new connections.
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

/// Backend flags (`Backend::flags`).
pub mod backend_flags {
    /// The backend may receive packets. Cleared when it is removed or marked down:
    /// flows pinned to it are then re-picked.
    pub const UP: u32 = 1 << 0;
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

/// Key of the connection table: the client's 5-tuple towards the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Backend slot the flow is pinned to.
    pub backend: u32,
    /// `Backend::generation` when the flow was pinned.
    pub generation: u32,
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

/// Layouts of earlier map versions, for migrating pinned maps on an upgrade.
pub mod legacy {
    use super::Endpoint;

    /// Value of `names::VIPS_V1`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VipInfoV1 {
        pub index: u32,
        pub mode: u32,
        pub flags: u32,
        pub ring_slot: u32,
        pub ring_size: u32,
    }

    /// Where a V1 agent put (VIP index, slot)'s table: fixed stripes of 65,537
    /// entries in the ring array.
    pub const fn v1_ring_base(vip_index: u32, slot: u32) -> u32 {
        (vip_index * 2 + slot) * 65_537
    }

    /// Value of `names::REVERSE_V1`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ReverseNatV1 {
        pub vip: Endpoint,
        pub vip_index: u32,
    }
}

/// Per-CPU passive TCP signals per backend slot (`names::BACKEND_L4`): how many
/// connection attempts a backend got and how it answered them. In `nat` mode the
/// replies cross the gateway, so `syn_ack / syn` is the backend's connection success
/// rate; in `dsr` mode only `syn` moves. UDP counts nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Counters {
    /// Client → backend TCP packets with SYN set and ACK clear (retransmits
    /// included, so a backend that does not answer shows a low success rate).
    pub syn: u64,
    /// Backend → client SYN+ACK (`nat` only).
    pub syn_ack: u64,
    /// Backend → client packets with RST set (`nat` only): refused connections,
    /// aborts.
    pub rst: u64,
    /// Backend → client packets with FIN set (`nat` only).
    pub fin: u64,
}

impl L4Counters {
    pub fn add(&mut self, other: &L4Counters) {
        self.syn += other.syn;
        self.syn_ack += other.syn_ack;
        self.rst += other.rst;
        self.fin += other.fin;
    }
}

/// Per-CPU traffic counters, per VIP and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that were pinned to a backend by this packet (new or re-picked): a
    /// packet without a usable connection-table entry, or a TCP SYN (ACK clear) whose
    /// pick differs from its 4-tuple's entry. A SYN retransmit, or a reused 4-tuple
    /// whose new SYN picks the backend it already had, writes nothing and is not
    /// counted again.
    pub new_flows: u64,
}

impl TrafficCounters {
    pub fn add(&mut self, other: &TrafficCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
    }
}

/// Why a packet left the fast path, indexing the per-CPU reason counters. The
/// verdict for each reason is part of its contract and is tested.
///
/// "To a VIP address" means the destination address (any port, any protocol) is in
/// the `names::VIP_ADDRS` set: for the packets below the ports are missing or cannot
/// be trusted, so the address is all the program can go by. Such packets to other
/// addresses are not ours: `XDP_PASS`, untouched, and not counted (except where a
/// reason says "every").
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Ethernet or VLAN header cut short, or an EtherType other than IPv4/IPv6 (ARP,
    /// LLDP, a second VLAN tag, ...): `XDP_PASS`, counted for every such packet.
    NotIp = 0,
    /// IP header cut short or inconsistent (version, IHL < 5, IPv4 total length
    /// beyond the frame or shorter than the header, IPv6 payload beyond the frame).
    /// `XDP_DROP` if the destination address could be read and is a VIP address;
    /// `XDP_PASS` otherwise (cut short before the destination, or not a VIP
    /// address). Counted for every such packet.
    BadIpHeader = 1,
    /// TCP/UDP header cut short (by the frame or by the IP length) on a packet to a
    /// VIP address: `XDP_DROP`.
    TruncatedL4 = 2,
    /// IPv4 fragment (first or not) of a TCP/UDP datagram, or an IPv6 extension
    /// header (hop-by-hop, routing, fragment, destination options, AH, mobility,
    /// HIP, shim6, experimental 253/254) on a packet to a VIP address: the ports are
    /// not where we can read them, so `XDP_DROP` (never guessed onto a backend).
    /// (Other protocols to a VIP address, ICMP included, are not ours: `XDP_PASS`,
    /// uncounted; except the path-MTU errors of `Event::IcmpToBackend`.)
    Unparseable = 3,
    /// The VIP has no up backend with weight > 0 for a new flow (table size 0, or
    /// the picked entry is empty or not up): `XDP_DROP`. A new flow is one without a
    /// usable connection-table entry, or any TCP packet with SYN set and ACK clear
    /// (`tcp_flags::is_new_connection`): such a SYN is dropped here even when its
    /// 4-tuple is still pinned to a backend from an earlier connection.
    NoBackend = 4,
    /// `bpf_fib_lookup` had no neighbour yet. `nat`: the rewritten packet is
    /// `XDP_PASS`ed for the kernel to forward (and resolve ARP/ND). `dsr`: the packet
    /// is `XDP_PASS`ed untouched; its IP destination is still the VIP, so the kernel
    /// cannot forward it to the backend: making the backends' neighbour entries
    /// resolvable (e.g. static entries, or traffic towards them) is the operator's job.
    FibNoNeighbour = 5,
    /// `bpf_fib_lookup` failed otherwise (no route, forwarding off, ...). `nat`: the
    /// rewritten packet is `XDP_PASS`ed; `dsr`: untouched, `XDP_PASS`. The kernel decides.
    FibFailed = 6,
    /// `nat` only (both directions): TTL/hop limit would expire: `XDP_PASS`, untouched,
    /// so the kernel sends the ICMP error.
    TtlExpired = 7,
    /// Inconsistent map state (ring entry or backend slot out of range, backend of
    /// another address family than its VIP): `XDP_DROP`.
    MapInconsistent = 8,
    /// The next hop's device cannot take an XDP redirect from here (a bridge, bond,
    /// VLAN, any device the program is not attached to natively; see `iface_flags`).
    /// `nat` (both directions): the rewritten packet is `XDP_PASS`ed with its MACs
    /// as they came, and the kernel forwards it. `dsr`: `XDP_PASS`, untouched; the
    /// kernel cannot forward it (its destination is the VIP), which is why the agent
    /// refuses to start a dsr tenant whose backends are reached that way.
    EgressNotXdp = 9,
}

impl Reason {
    pub const COUNT: u32 = 10;
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::NotIp,
        Reason::BadIpHeader,
        Reason::TruncatedL4,
        Reason::Unparseable,
        Reason::NoBackend,
        Reason::FibNoNeighbour,
        Reason::FibFailed,
        Reason::TtlExpired,
        Reason::MapInconsistent,
        Reason::EgressNotXdp,
    ];

    /// Label used in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not_ip",
            Reason::BadIpHeader => "bad_ip_header",
            Reason::TruncatedL4 => "truncated_l4",
            Reason::Unparseable => "unparseable",
            Reason::NoBackend => "no_backend",
            Reason::FibNoNeighbour => "fib_no_neighbour",
            Reason::FibFailed => "fib_failed",
            Reason::TtlExpired => "ttl_expired",
            Reason::MapInconsistent => "map_inconsistent",
            Reason::EgressNotXdp => "egress_not_xdp",
        }
    }
}

/// Things on the forwarding path that are counted although the packet goes on as
/// usual (per-CPU counters in `names::EVENT_STATS`, indexed by `Event as u32`). A
/// packet counts at most one event; it may also count a `Reason` (e.g. an ICMP error
/// whose backend has no neighbour entry yet counts `IcmpToBackend` and
/// `FibNoNeighbour`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A TCP packet without SYN (or with SYN+ACK) to a VIP that found no
    /// connection-table entry: its flow was tracked once (by this gateway before its
    /// entry was evicted from the full LRU table or lost in a restart that replaced
    /// the table, or by another gateway behind ECMP) or it is a stray segment. It is
    /// re-picked through the live Maglev table and pinned again, which gives the same
    /// backend as before unless the weights changed in between. A rising count is the
    /// sign of a connection table too small for the number of concurrent flows
    /// (`limits.conn_table_entries`). UDP has no handshake, so every UDP packet
    /// without an entry is a new flow and is not counted here.
    UntrackedMidFlow = 0,
    /// An ICMPv4 "fragmentation needed" (type 3 code 4) or ICMPv6 "packet too big"
    /// (type 2) to a VIP address whose embedded packet (at least its IP header and 8
    /// bytes of TCP/UDP header) is a reply of a VIP flow (embedded source = a VIP
    /// (address, port, protocol) = the outer destination). It goes to the backend that
    /// owns the flow: the connection-table entry of the reversed embedded tuple, else
    /// the live Maglev pick (not pinned: an ICMP error does not start a flow).
    /// `dsr`: MACs only. `nat`: the outer destination and the embedded source
    /// become the backend's address and port, TTL/hop limit - 1, with the outer and
    /// embedded IPv4 header checksums and the ICMP checksum (ICMPv6: pseudo-header
    /// included) fixed incrementally; the embedded TCP/UDP checksum is left as it
    /// is, since the quote is usually cut short so it cannot be verified, and no
    /// stack checks it when matching an ICMP error to a socket (addresses and ports
    /// only). The same path as the flow's packets: `XDP_TX`/`XDP_REDIRECT`, or a
    /// counted exception: `TtlExpired` (`nat`) and `NoBackend` before the backend is
    /// known (then this event is not counted), `FibNoNeighbour`/`FibFailed` after
    /// (counted together with this event).
    /// Every other ICMP message (echo, other errors, one too short to quote the
    /// ports, one for a non-VIP flow) is not ours: `XDP_PASS`, untouched.
    IcmpToBackend = 1,
    /// A TCP SYN (ACK clear) to a VIP whose checksum field holds only the
    /// pseudo-header's sum: a partial checksum (`CHECKSUM_PARTIAL`), left for
    /// "hardware" to complete by a sender on this host whose veth has transmit
    /// checksum offload on. XDP cannot tell such packets apart (only SYNs, being
    /// small, are checked) nor complete them, so once redirected their receiver drops
    /// them as corrupt: every connection from that sender fails. The packet goes on
    /// as usual; the agent reports the problem (`status`, log). Checked for SYNs of at
    /// most `limits::checksum::MAX_CHECKED_L4` bytes of TCP segment.
    SynChecksumPartial = 2,
    /// A TCP SYN to a VIP whose checksum is neither right nor partial (corrupted on
    /// the way). The packet goes on as usual (the backend drops it).
    SynChecksumBad = 3,
}

impl Event {
    pub const COUNT: u32 = 4;
    pub const ALL: [Event; Event::COUNT as usize] = [
        Event::UntrackedMidFlow,
        Event::IcmpToBackend,
        Event::SynChecksumPartial,
        Event::SynChecksumBad,
    ];

    /// Label used in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Event::UntrackedMidFlow => "untracked_mid_flow",
            Event::IcmpToBackend => "icmp_to_backend",
            Event::SynChecksumPartial => "syn_checksum_partial",
            Event::SynChecksumBad => "syn_checksum_bad",
        }
    }
}

/// Label for an XDP action number, used in metrics.
pub const fn xdp_action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
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
    unsafe impl aya::Pod for legacy::ReverseNatV1 {}
    unsafe impl aya::Pod for legacy::VipInfoV1 {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for L4Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn endpoints_round_trip() {
        for s in ["198.18.0.10:80", "[2001:db8::10]:8080"] {
            let addr: core::net::SocketAddr = s.parse().unwrap();
            let e = Endpoint::new(addr, PROTO_TCP);
            assert_eq!(e.socket_addr(), addr);
            assert_ne!(e.identity(), Endpoint::new(addr, PROTO_UDP).identity());
        }
        let e = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
        assert_eq!(e.port.to_ne_bytes(), [0, 80]);
        assert_eq!(e.addr[0].to_ne_bytes(), [198, 18, 0, 10]);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<VipAddr>(), 16 + 1 + 3);
        assert_eq!(size_of::<VipInfo>(), 6 * 4);
        assert_eq!(size_of::<legacy::VipInfoV1>(), 5 * 4);
        assert_eq!(size_of::<Backend>(), 20 + 3 * 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowState>(), 8);
        assert_eq!(size_of::<ReverseNat>(), 20 + 4 + 4);
        assert_eq!(size_of::<NextHopCache>(), 8 + 3 * 4 + 6 + 6);
        assert_eq!(size_of::<legacy::ReverseNatV1>(), 20 + 4);
        assert_eq!(size_of::<TrafficCounters>(), 24);
        assert_eq!(size_of::<L4Counters>(), 4 * 8);
        assert_eq!(core::mem::align_of::<L4Counters>(), 8);
    }

    #[test]
    fn new_connections_are_syn_without_ack() {
        use tcp_flags::*;
        assert!(is_new_connection(SYN));
        assert!(is_new_connection(SYN | PSH));
        assert!(!is_new_connection(SYN | ACK));
        assert!(!is_new_connection(ACK));
        assert!(!is_new_connection(FIN | ACK));
        assert!(!is_new_connection(0));
    }
}
