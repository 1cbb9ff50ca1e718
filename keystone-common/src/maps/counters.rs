//! Per-CPU counters: traffic and passive TCP signals, reasons and events.

/// Per-CPU passive TCP signals per backend slot (`names::BACKEND_L4`): how many
/// connection attempts a backend got and how many became connections. In `nat` mode
/// the replies cross the gateway, so `established / syn` is the backend's connection
/// success rate as the clients saw it; in `dsr` mode `syn_ack`, `rst` and `fin` stay
/// 0 and `established` counts the client's ACKs that follow its SYN (the client only
/// sends one once a SYN-ACK reached it). UDP counts nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Counters {
    /// Client → backend TCP packets with SYN set and ACK clear that were picked as a
    /// new connection (retransmits included, so a backend that does not answer shows
    /// a low success rate; a SYN that keeps an established flow is not counted).
    pub syn: u64,
    /// Backend → client SYN+ACK (`nat` only).
    pub syn_ack: u64,
    /// Backend → client packets with RST set (`nat` only): refused connections,
    /// aborts.
    pub rst: u64,
    /// Backend → client packets with FIN set (`nat` only).
    pub fin: u64,
    /// Handshakes completed, once per connection: the client's first ACK after its
    /// SYN, in `nat` mode only after the backend's SYN-ACK to that SYN crossed the
    /// gateway (a SYN-ACK the client drops, e.g. for a bad checksum, never counts).
    /// Needs the flow's client packets and replies through the same gateway.
    pub established: u64,
}

impl L4Counters {
    pub fn add(&mut self, other: &L4Counters) {
        self.syn += other.syn;
        self.syn_ack += other.syn_ack;
        self.rst += other.rst;
        self.fin += other.fin;
        self.established += other.established;
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
    /// (`tcp_flags::is_new_connection`) whose entry does not show a live established
    /// connection (`FlowState::syn_repicks`): such a SYN is dropped here even when its
    /// 4-tuple is still pinned to a backend from an earlier, closed connection.
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
