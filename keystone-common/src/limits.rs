//! Every size and limit of the data plane, in one place, grouped by feature.

/// Virtual services.
pub mod vip {
    /// How many VIPs (address, port, protocol) one gateway serves.
    pub const MAX_VIPS: u32 = 32;
    /// Entries in the VIP-address set: at most one distinct address per VIP.
    pub const MAX_VIP_ADDRS: u32 = MAX_VIPS;
}

/// Backends and their Maglev lookup tables.
pub mod ring {
    /// Default Maglev table size: a prime, so every skip value walks the whole table.
    pub const DEFAULT_RING_SIZE: u32 = 65_537;
    /// Largest table the kernel-side array has room for.
    pub const MAX_RING_SIZE: u32 = 65_537;
    /// Each VIP owns two tables: the live one and the one being written.
    pub const SLOTS_PER_VIP: u32 = 2;
    /// Entries in the ring array: one `MAX_RING_SIZE` stripe per (VIP, slot).
    pub const RING_ARRAY_ENTRIES: u32 = super::vip::MAX_VIPS * SLOTS_PER_VIP * MAX_RING_SIZE;
    /// Backend slots across all VIPs (one per VIP/backend pair).
    pub const MAX_BACKENDS: u32 = 4096;
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
    /// Entries in the LRU connection table unless the agent's config says otherwise
    /// (`limits.conn_table_entries`, applied when the map is created). When full, the
    /// least recently used flow is evicted; its next packet is re-hashed through
    /// Maglev, which picks the same backend unless the weights changed since (and is
    /// counted as `Event::UntrackedMidFlow` if it is a TCP packet without SYN).
    pub const CONN_TABLE_SIZE: u32 = 262_144;
    /// Smallest configurable table: the kernel's LRU lists are per CPU, so much
    /// smaller tables evict flows long before they are full.
    pub const MIN_CONN_TABLE_SIZE: u32 = 256;
    /// Largest configurable table.
    pub const MAX_CONN_TABLE_SIZE: u32 = 16_777_216;
}

/// Forwarding.
pub mod forward {
    /// How long the program reuses a `bpf_fib_lookup` answer towards a backend
    /// (`maps::NextHopCache`): the longest a changed neighbour or route towards a
    /// backend goes unnoticed. One lookup per backend, CPU and period is noise.
    pub const NEXT_HOP_TTL_NS: u64 = 50_000_000;
}

/// Counters.
pub mod stats {
    /// XDP actions are 0..=4 (ABORTED, DROP, PASS, TX, REDIRECT).
    pub const XDP_ACTIONS: u32 = 5;
}
