//! Maps (names and default sizes from keystone-common) and the per-CPU counter
//! updates. The agent resizes the capacity maps at load time (`limits:` in its
//! config); the program never assumes a size.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use keystone_common::{
    Backend, Endpoint, Event, FlowKey, FlowState, L4Counters, NextHopCache, Reason, ReplyHopCache,
    ReverseNat, TrafficCounters, VipAddr, VipInfo, addr_filter, iface_flags,
    limits::{
        conn::CONN_TABLE_SIZE,
        filter::ADDR_FILTER_WORDS,
        forward::REPLY_HOP_SLOTS,
        iface::MAX_IFINDEX,
        ring::{DEFAULT_MAX_BACKENDS as MAX_BACKENDS, DEFAULT_RING_ENTRIES},
        stats::XDP_ACTIONS,
        vip::DEFAULT_MAX_VIPS as MAX_VIPS,
    },
    names, tcp_flags,
};

// `#[map(name = ...)]` takes a literal; these assertions tie each literal to the one
// definition in keystone-common, so the agent and the program cannot disagree.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
const _: () = {
    assert!(same(names::VIPS, "KS_VIPS_V2"));
    assert!(same(names::VIP_ADDRS, "KS_VIP_ADDRS_V1"));
    assert!(same(names::ADDR_FILTER, "KS_ADDR_FILTER_V1"));
    assert!(same(names::BACKENDS, "KS_BACKENDS_V1"));
    assert!(same(names::RINGS, "KS_RINGS_V1"));
    assert!(same(names::CONNS, "KS_CONNS_V2"));
    assert!(same(names::REVERSE, "KS_REVERSE_V2"));
    assert!(same(names::VIP_STATS, "KS_VIP_STATS_V1"));
    assert!(same(names::BACKEND_STATS, "KS_BACKEND_STATS_V1"));
    assert!(same(names::BACKEND_L4, "KS_BACKEND_L4_V2"));
    assert!(same(names::ACTION_STATS, "KS_ACTION_STATS_V1"));
    assert!(same(names::REASON_STATS, "KS_REASON_STATS_V1"));
    assert!(same(names::EVENT_STATS, "KS_EVENT_STATS_V1"));
    assert!(same(names::NEXT_HOPS, "KS_NEXT_HOPS_V1"));
    assert!(same(names::REPLY_HOPS, "KS_REPLY_HOPS_V1"));
    assert!(same(names::IFACES, "KS_IFACES_V1"));
    assert!(same(names::PROGRAM, "keystone_xdp"));
    assert!(same(names::TC_PROGRAM, "keystone_tc"));
};

#[map(name = "KS_VIPS_V2")]
pub static VIPS: HashMap<Endpoint, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "KS_VIP_ADDRS_V1")]
pub static VIP_ADDRS: HashMap<VipAddr, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "KS_ADDR_FILTER_V1")]
pub static ADDR_FILTER: Array<u32> = Array::with_max_entries(ADDR_FILTER_WORDS, 0);

#[map(name = "KS_BACKENDS_V1")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KS_RINGS_V1")]
pub static RINGS: Array<u32> = Array::with_max_entries(DEFAULT_RING_ENTRIES, 0);

// The agent sets the size when it creates the map (`limits.conn_table_entries`).
#[map(name = "KS_CONNS_V2")]
pub static CONNS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(CONN_TABLE_SIZE, 0);

#[map(name = "KS_REVERSE_V2")]
pub static REVERSE: HashMap<Endpoint, ReverseNat> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KS_VIP_STATS_V1")]
pub static VIP_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "KS_BACKEND_STATS_V1")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KS_BACKEND_L4_V2")]
pub static BACKEND_L4: PerCpuArray<L4Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KS_ACTION_STATS_V1")]
pub static ACTION_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_ACTIONS, 0);

#[map(name = "KS_REASON_STATS_V1")]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map(name = "KS_EVENT_STATS_V1")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Event::COUNT, 0);

// Indexed by backend slot, so the agent sizes it like BACKENDS (`limits.max_backends`).
#[map(name = "KS_NEXT_HOPS_V1")]
pub static NEXT_HOPS: PerCpuArray<NextHopCache> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "KS_REPLY_HOPS_V1")]
pub static REPLY_HOPS: PerCpuArray<ReplyHopCache> =
    PerCpuArray::with_max_entries(REPLY_HOP_SLOTS, 0);

#[map(name = "KS_IFACES_V1")]
pub static IFACES: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);

/// Whether a packet that arrived on `ingress` may be redirected to `egress` (see
/// `iface_flags`); an ifindex beyond the array has no flags.
#[inline(always)]
pub fn can_redirect(ingress: u32, egress: u32) -> bool {
    let flags = |ifindex| IFACES.get(ifindex).copied().unwrap_or(0);
    flags(egress) & iface_flags::REDIRECT_TARGET != 0 || flags(ingress) & iface_flags::GENERIC != 0
}

/// The prefilter's word for `addr` (0 if unreadable: nothing matches).
#[inline(always)]
pub fn filter_word(addr: &[u32; 4]) -> u32 {
    ADDR_FILTER
        .get(addr_filter::word(addr))
        .copied()
        .unwrap_or(0)
}

/// Whether `addr` may be a VIP address (no false negatives), from the prefilter.
#[inline(always)]
pub fn maybe_vip_addr(addr: &[u32; 4]) -> bool {
    filter_word(addr) & addr_filter::vip_bit(addr) != 0
}

/// Whether `addr` may be a nat backend's address (no false negatives).
#[inline(always)]
pub fn maybe_backend_addr(addr: &[u32; 4]) -> bool {
    filter_word(addr) & addr_filter::backend_bit(addr) != 0
}

/// Whether `addr` is the address of some VIP (any port and protocol).
#[inline(always)]
pub fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    maybe_vip_addr(&addr) && VIP_ADDRS.get_ptr(VipAddr::new(addr, family)).is_some()
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs here.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_action(action: u32) {
    bump(&ACTION_STATS, action);
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    bump(&REASON_STATS, reason as u32);
}

#[inline(always)]
pub fn count_event(event: Event) {
    bump(&EVENT_STATS, event as u32);
}

#[inline(always)]
fn add_traffic(map: &PerCpuArray<TrafficCounters>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs here.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow as u64;
    }
}

/// Counts one client → VIP packet for its VIP and the backend it goes to.
#[inline(always)]
pub fn count_traffic(vip_index: u32, backend_slot: u32, bytes: u64, new_flow: bool) {
    add_traffic(&VIP_STATS, vip_index, bytes, new_flow);
    add_traffic(&BACKEND_STATS, backend_slot, bytes, new_flow);
}

/// Counts a client → backend TCP SYN picked as a new connection (`attempt`) and a
/// client packet that completed a handshake (`done`) for the backend they go to.
/// Other packets (nearly all of them) return before any map access.
#[inline(always)]
pub fn count_handshake(backend_slot: u32, attempt: bool, done: bool) {
    if !(attempt || done) {
        return;
    }
    if let Some(c) = BACKEND_L4.get_ptr_mut(backend_slot) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs here.
        let c = unsafe { &mut *c };
        c.syn += attempt as u64;
        c.established += done as u64;
    }
}

/// Counts a backend → client TCP reply's SYN+ACK, RST and FIN bits for the backend
/// that sent it; returns whether it had any (whether the flow's entry may change).
/// Plain segments (no SYN, RST or FIN: nearly all of them) return before any map
/// access.
#[inline(always)]
pub fn count_reply(backend_slot: u32, flags: u8) -> bool {
    if flags & (tcp_flags::SYN | tcp_flags::RST | tcp_flags::FIN) == 0 {
        return false;
    }
    if let Some(c) = BACKEND_L4.get_ptr_mut(backend_slot) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs here.
        let c = unsafe { &mut *c };
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        c.syn_ack += (flags & syn_ack == syn_ack) as u64;
        c.rst += (flags & tcp_flags::RST != 0) as u64;
        c.fin += (flags & tcp_flags::FIN != 0) as u64;
    }
    true
}
