//! Backend selection: the connection table first, else the VIP's live Maglev table.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::Array};
use keystone_common::{
    Backend, Event, FlowKey, FlowState, PROTO_TCP, Reason, VipInfo,
    backend_flags::UP,
    flow_hash,
    limits::{
        conn::CLOCK_SHIFT,
        ring::{MAX_RING_SIZE, NO_BACKEND},
    },
    mode,
    tcp_flags::is_new_connection,
    vip_flags::SOURCE_STICKY,
};

use crate::{
    Verdict, ab,
    maps::{BACKENDS, CONNS, RINGS, count_event},
};

/// The backend a packet goes to.
pub struct Choice {
    /// Backend slot (index into `BACKENDS` and `BACKEND_STATS`).
    pub slot: u32,
    pub backend: Backend,
    /// The flow was pinned to the backend by this packet (new or re-picked).
    pub new_flow: bool,
    /// A TCP SYN picked as a new connection (counted as `L4Counters::syn`).
    pub connection_attempt: bool,
    /// This client packet completed the flow's handshake (`FlowState::after_client`).
    pub handshake_done: bool,
}

#[inline(always)]
fn backend(slots: &Array<Backend>, slot: u32) -> Option<Backend> {
    slots.get(slot).copied()
}

/// The flow's connection-table entry (a copy) and where it lives; no entry reads as
/// `FlowState::NONE` (a plain value rather than an `Option`: LLVM may spill an
/// `Option`'s undefined payload, which the verifier refuses to read).
#[inline(always)]
fn pinned_state(key: &FlowKey) -> (FlowState, *mut FlowState) {
    match CONNS.get_ptr_mut(key) {
        // SAFETY: a valid map value pointer; FlowState is plain data (a concurrent
        // update can at worst give a stale pair, which `usable` rejects).
        Some(state) => (unsafe { *state }, state),
        None => (FlowState::NONE, core::ptr::null_mut()),
    }
}

/// Writes `next` over the entry at `at` (from `pinned_state`) if it changed: the
/// connection state and clock, in place (no map update), so most packets write
/// nothing and an established flow writes at most once a clock tick (≈ 1 s).
#[inline(always)]
fn update_in_place(at: *mut FlowState, was: &FlowState, next: &FlowState) {
    if at.is_null() || next == was {
        return;
    }
    // SAFETY: a valid map value pointer (non-null, from `pinned_state`); plain data.
    unsafe {
        (*at).flags = next.flags;
        (*at).seen = next.seen;
    }
}

/// The pinned backend if it is still up, still the same backend (generation) and
/// serves this VIP.
#[inline(always)]
fn usable(pinned: &FlowState, vip: &VipInfo) -> Option<Backend> {
    let b = backend(&BACKENDS, pinned.backend)?;
    (b.flags & UP != 0 && b.generation == pinned.generation && b.vip_index == vip.index)
        .then_some(b)
}

/// The live Maglev table's pick for `key`: (slot, backend).
///
/// Errors: `NoBackend` (table size 0, empty entry, picked backend not up) and
/// `MapInconsistent` (table size beyond the array, ring entry out of range), both
/// `XDP_DROP`.
#[inline(always)]
fn maglev_pick(key: &FlowKey, vip: &VipInfo) -> Result<(u32, Backend), Verdict> {
    let size = vip.ring_size;
    if size == 0 {
        return Err(Verdict::drop(Reason::NoBackend));
    }
    if size > MAX_RING_SIZE {
        return Err(Verdict::drop(Reason::MapInconsistent));
    }
    let entry = flow_hash(key, vip.flags & SOURCE_STICKY != 0) % size;
    // Out of the array (a base the agent did not write): no entry, counted below.
    let Some(&slot) = RINGS.get(vip.ring_base.wrapping_add(entry)) else {
        return Err(Verdict::drop(Reason::MapInconsistent));
    };
    if slot == NO_BACKEND {
        return Err(Verdict::drop(Reason::NoBackend));
    }
    let Some(b) = backend(&BACKENDS, slot) else {
        return Err(Verdict::drop(Reason::MapInconsistent));
    };
    if b.flags & UP == 0 {
        return Err(Verdict::drop(Reason::NoBackend));
    }
    Ok((slot, b))
}

/// A flow keeps its pinned backend while that slot is up, still holds the same
/// backend (generation) and serves this VIP; otherwise it is (re-)picked through the
/// Maglev table and pinned, which is the only per-packet map update.
///
/// A TCP SYN without ACK (`tcp_flags::is_new_connection`) skips the pinned entry
/// unless that entry shows a live established connection (`FlowState::syn_repicks`):
/// it is picked through the live table like a new flow, and the entry is rewritten
/// only if the pick or its state differs. So a client reusing the 4-tuple of a
/// closed connection starts on a backend the current weights choose, while neither
/// the established packets of a tracked flow nor a SYN on its tuple (retransmitted
/// or forged) move it across weight changes.
///
/// TCP entries follow the connection (`FlowState::after_client`), written in place
/// only when that changes something.
///
/// Any other TCP packet that finds no entry at all is counted as
/// `Event::UntrackedMidFlow` (an evicted or foreign flow) before it is re-pinned.
///
/// A SYN is tried first as a new flow: its pick inserted if absent (`BPF_NOEXIST`),
/// with no lookup before it; only a SYN whose tuple the table holds already takes
/// the path above.
///
/// `now_ns` is `bpf_ktime_get_coarse_ns()` (`FlowState::seen` keeps it in ticks).
/// `V`: the `ab` variant (`ab::PRODUCTION` in the agent's program).
///
/// Errors: those of `maglev_pick`.
#[inline(always)]
pub fn choose<const V: u32>(
    key: &FlowKey,
    vip: &VipInfo,
    tcp_flags: u8,
    now_ns: u64,
) -> Result<Choice, Verdict> {
    let tcp = key.proto == PROTO_TCP;
    let now = (now_ns >> CLOCK_SHIFT) as u32;
    let syn = tcp && is_new_connection(tcp_flags);
    let nat = vip.mode == mode::NAT;
    // Nearly every SYN is a new flow: pinned by one insert-if-absent, no lookup
    // first. The table holding the tuple already (or no pick) takes the full path.
    if syn
        && !ab::has(V, ab::LOOKUP_FIRST)
        && let Ok((slot, b)) = maglev_pick(key, vip)
    {
        let state = FlowState::pinned(slot, b.generation)
            .after_client(tcp_flags, now, nat)
            .0;
        if ab::has(V, ab::NO_INSERT) || CONNS.insert(key, state, BPF_NOEXIST as u64).is_ok() {
            return Ok(Choice {
                slot,
                backend: b,
                new_flow: true,
                connection_attempt: true,
                handshake_done: false,
            });
        }
    }
    let (pinned, at) = pinned_state(key);
    if !(syn && pinned.syn_repicks(now))
        && let Some(b) = usable(&pinned, vip)
    {
        let mut handshake_done = false;
        // A SYN kept on its established flow changes nothing (not even the clock: a
        // stream of forged SYNs must not keep a dead entry fresh).
        if tcp && !syn {
            let (next, done) = pinned.after_client(tcp_flags, now, nat);
            update_in_place(at, &pinned, &next);
            handshake_done = done;
        }
        return Ok(Choice {
            slot: pinned.backend,
            backend: b,
            new_flow: false,
            connection_attempt: false,
            handshake_done,
        });
    }
    let (slot, b) = maglev_pick(key, vip)?;
    let mut state = FlowState::pinned(slot, b.generation);
    if tcp {
        state = state.after_client(tcp_flags, now, nat).0;
    }
    // Only a SYN can find its own pick already pinned (a retransmit, or a reused
    // 4-tuple that lands where it was): not a new flow, and only its state is written.
    let new_flow = pinned.backend != slot || pinned.generation != b.generation;
    if new_flow {
        if !syn && tcp && pinned.backend == NO_BACKEND {
            count_event(Event::UntrackedMidFlow);
        }
        // A failed insert (cannot happen for an LRU map short of memory pressure)
        // only means the next packet is hashed again, to the same backend.
        if !ab::has(V, ab::NO_INSERT) {
            let _ = CONNS.insert(key, state, 0);
        }
    } else {
        update_in_place(at, &pinned, &state);
    }
    Ok(Choice {
        slot,
        backend: b,
        new_flow,
        connection_attempt: syn,
        handshake_done: false,
    })
}

/// `nat`: a backend's reply with SYN, FIN or RST for the client flow `key` (the
/// client's tuple towards the VIP) updates that flow's entry if the backend in
/// slot `from` owns it (`FlowState::after_reply`). Writes nothing else.
#[inline(always)]
pub fn note_reply(key: &FlowKey, from: u32, tcp_flags: u8) {
    let (pinned, at) = pinned_state(key);
    let next = FlowState {
        flags: pinned.after_reply(from, tcp_flags),
        ..pinned
    };
    update_in_place(at, &pinned, &next);
}

/// The backend that owns `key`'s flow, for an ICMP error about it: the usable
/// pinned backend, else the live Maglev pick. Writes nothing (an ICMP error does
/// not start a flow). `Choice::new_flow` is always false. Errors: as `choose`.
#[inline(always)]
pub fn owner(key: &FlowKey, vip: &VipInfo) -> Result<Choice, Verdict> {
    let (pinned, _) = pinned_state(key);
    let (slot, backend) = match usable(&pinned, vip) {
        Some(b) => (pinned.backend, b),
        None => maglev_pick(key, vip)?,
    };
    Ok(Choice {
        slot,
        backend,
        new_flow: false,
        connection_attempt: false,
        handshake_done: false,
    })
}
