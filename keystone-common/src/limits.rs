//! Every size and limit of the data plane, in one place, grouped by feature.
//!
//! The capacities (VIPs, backends, ring entries, tracked flows) are set when the agent
//! loads the program, from the config's `limits:` section; the `DEFAULT_*` values
//! here are what the eBPF object declares and what the agent uses when the config
//! says nothing.

/// Virtual services.
pub mod vip {
    /// Default number of VIPs (address, port, protocol) one gateway serves; sizes the
    /// VIP map, the VIP-address set and the per-VIP counters.
    pub const DEFAULT_MAX_VIPS: u32 = 32;
}

/// Backends and their Maglev lookup tables.
pub mod ring {
    /// Default Maglev table size: a prime, so every skip value walks the whole table.
    pub const DEFAULT_RING_SIZE: u32 = 65_537;
    /// Largest Maglev table one VIP may have (a prime). The kernel refuses a larger
    /// `VipInfo::ring_size` as inconsistent.
    pub const MAX_RING_SIZE: u32 = 1_048_573;
    /// Each VIP owns two tables: the live one and the one being written.
    pub const SLOTS_PER_VIP: u32 = 2;
    /// Default entries in the ring array, which holds every VIP's two tables wherever
    /// the agent places them (`VipInfo::ring_base`): room for `DEFAULT_MAX_VIPS` VIPs
    /// with two default-size tables each.
    pub const DEFAULT_RING_ENTRIES: u32 =
        super::vip::DEFAULT_MAX_VIPS * SLOTS_PER_VIP * DEFAULT_RING_SIZE;
    /// Default backend slots across all VIPs (one per VIP/backend pair).
    pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
    /// Ring entry value meaning "no backend" (never written by a correct agent).
    pub const NO_BACKEND: u32 = u32::MAX;
}

/// The address prefilter (`maps::addr_filter`).
pub mod filter {
    /// 32-bit words in the filter array: 4096 words, 16 KiB, each holding 16 VIP bits
    /// and 16 backend bits, i.e. 65,536 buckets per kind.
    pub const ADDR_FILTER_WORDS: u32 = 4096;
}

/// Flow tracking.
pub mod conn {
    /// Default entries in the LRU connection table (the agent's config sets it:
    /// `limits.conn_table_entries`, applied when the map is created). When full, the
    /// least recently used flow is evicted; its next packet is re-hashed through
    /// Maglev, which picks the same backend unless the weights changed since (and is
    /// counted as `Event::UntrackedMidFlow` if it is a TCP packet without SYN).
    pub const CONN_TABLE_SIZE: u32 = 262_144;
    /// Smallest configurable table: the kernel's LRU lists are per CPU, so much
    /// smaller tables evict flows long before they are full.
    pub const MIN_CONN_TABLE_SIZE: u32 = 256;
    /// Largest configurable table.
    pub const MAX_CONN_TABLE_SIZE: u32 = 16_777_216;
    /// `FlowState::seen` is the coarse monotonic clock in ns shifted right by this:
    /// ticks of 2^30 ns (≈ 1.07 s), a shift where seconds would cost a division on
    /// every packet.
    pub const CLOCK_SHIFT: u32 = 30;
    /// An established TCP entry whose latest client packet is older than this is
    /// stale: a client SYN on its 4-tuple re-picks it (`FlowState::syn_repicks`).
    /// IPVS's default timeout of an established TCP connection (15 minutes), after
    /// which IPVS forgets the connection entirely.
    pub const REUSE_IDLE_S: u64 = 900;
    /// `REUSE_IDLE_S` in `FlowState::seen` ticks.
    pub const REUSE_IDLE_TICKS: u32 = ((REUSE_IDLE_S * 1_000_000_000) >> CLOCK_SHIFT) as u32;
}

/// Forwarding.
pub mod forward {
    /// How long the program reuses a `bpf_fib_lookup` answer towards a backend
    /// (`maps::NextHopCache`): the longest a changed neighbour or route towards a
    /// backend goes unnoticed. One lookup per backend, CPU and period is noise.
    pub const NEXT_HOP_TTL_NS: u64 = 50_000_000;
    /// Entries of the per-CPU reply next-hop cache (`maps::ReplyHopCache`, a power
    /// of two): clients whose replies keep their next hop at once, per CPU.
    pub const REPLY_HOP_SLOTS: u32 = 1024;
}

/// Interfaces (`names::IFACES`).
pub mod iface {
    /// Entries of the per-interface array: ifindexes from 0 to this − 1. A next hop
    /// on a device with a larger ifindex is handed to the kernel
    /// (`Reason::EgressNotXdp`), and the agent warns when it attaches to one.
    pub const MAX_IFINDEX: u32 = 16_384;
}

/// The SYN checksum check (`Event::SynChecksumPartial`).
pub mod checksum {
    /// Longest TCP segment (header with options, plus payload) whose checksum the
    /// program verifies: a SYN's maximal header, no payload.
    pub const MAX_CHECKED_L4: usize = 60;
}

/// Counters.
pub mod stats {
    /// XDP actions are 0..=4 (ABORTED, DROP, PASS, TX, REDIRECT).
    pub const XDP_ACTIONS: u32 = 5;
}
