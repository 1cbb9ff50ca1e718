//! Backend selection: the connection table first, else the VIP's live Maglev table.

use aya_ebpf::maps::Array;
use keystone_common::{
    Backend, Event, FlowKey, FlowState, PROTO_TCP, Reason, VipInfo,
    backend_flags::UP,
    flow_hash,
    limits::ring::{MAX_RING_SIZE, NO_BACKEND},
    vip_flags::SOURCE_STICKY,
};

use crate::{
    Verdict,
    maps::{BACKENDS, CONNS, RINGS, count_event},
};

/// The backend a packet goes to.
pub struct Choice {
    /// Backend slot (index into `BACKENDS` and `BACKEND_STATS`).
    pub slot: u32,
    pub backend: Backend,
    /// The flow was pinned to the backend by this packet (new or re-picked).
    pub new_flow: bool,
}

#[inline(always)]
fn backend(slots: &Array<Backend>, slot: u32) -> Option<Backend> {
    slots.get(slot).copied()
}

/// The flow's connection-table entry; no entry reads as slot NO_BACKEND, which no
/// backend has (a plain value rather than an `Option`: LLVM may spill an `Option`'s
/// undefined payload, which the verifier refuses to read).
#[inline(always)]
fn pinned_state(key: &FlowKey) -> FlowState {
    match CONNS.get_ptr(key) {
        // SAFETY: a valid map value pointer; FlowState is plain data (a concurrent
        // update can at worst give a stale pair, which `usable` rejects).
        Some(state) => unsafe { *state },
        None => FlowState {
            backend: NO_BACKEND,
            generation: 0,
        },
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
/// Maglev table and pinned, which is the only per-packet write to shared state.
///
/// `new_connection` (a TCP SYN without ACK, `tcp_flags::is_new_connection`) skips the
/// pinned entry: the packet is picked through the live table like a new flow, and the
/// entry is overwritten only if the pick differs (a SYN retransmit writes nothing).
/// So a client reusing the 4-tuple of a closed connection starts on a backend the
/// current weights choose, while the established packets of a tracked flow keep
/// their backend across weight changes.
///
/// Any other TCP packet that finds no entry at all is counted as
/// `Event::UntrackedMidFlow` (an evicted or foreign flow) before it is re-pinned.
///
/// Errors: those of `maglev_pick`.
#[inline(always)]
pub fn choose(key: &FlowKey, vip: &VipInfo, new_connection: bool) -> Result<Choice, Verdict> {
    let pinned = pinned_state(key);
    if !new_connection && let Some(b) = usable(&pinned, vip) {
        return Ok(Choice {
            slot: pinned.backend,
            backend: b,
            new_flow: false,
        });
    }
    let (slot, b) = maglev_pick(key, vip)?;
    let state = FlowState {
        backend: slot,
        generation: b.generation,
    };
    // Only a SYN can find its own pick already pinned (a retransmit, or a reused
    // 4-tuple that lands where it was): nothing to write, not a new flow.
    let new_flow = pinned != state;
    if new_flow {
        if !new_connection && key.proto == PROTO_TCP && pinned.backend == NO_BACKEND {
            count_event(Event::UntrackedMidFlow);
        }
        // A failed insert (cannot happen for an LRU map short of memory pressure)
        // only means the next packet is hashed again, to the same backend.
        let _ = CONNS.insert(key, state, 0);
    }
    Ok(Choice {
        slot,
        backend: b,
        new_flow,
    })
}

/// The backend that owns `key`'s flow, for an ICMP error about it: the usable
/// pinned backend, else the live Maglev pick. Writes nothing (an ICMP error does
/// not start a flow). `Choice::new_flow` is always false. Errors: as `choose`.
#[inline(always)]
pub fn owner(key: &FlowKey, vip: &VipInfo) -> Result<Choice, Verdict> {
    let pinned = pinned_state(key);
    let (slot, backend) = match usable(&pinned, vip) {
        Some(b) => (pinned.backend, b),
        None => maglev_pick(key, vip)?,
    };
    Ok(Choice {
        slot,
        backend,
        new_flow: false,
    })
}
