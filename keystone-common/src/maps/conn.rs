//! The connection table's value and the TCP state it follows.

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Backend slot the flow is pinned to.
    pub backend: u32,
    /// `Backend::generation` when the flow was pinned.
    pub generation: u32,
    /// `conn_flags::*`: what the gateway saw of a TCP connection (0 for UDP, and for
    /// an entry migrated from `names::CONNS_V1`: unknown).
    pub flags: u32,
    /// Coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, `bpf_ktime_get_coarse_ns`)
    /// in ticks (ns >> `limits::conn::CLOCK_SHIFT`, ≈ 1.07 s) at the flow's latest
    /// client packet, so refreshed at most once a tick (TCP only).
    pub seen: u32,
}

/// What the gateway saw of a TCP connection (`FlowState::flags`). Only client packets
/// and, in `nat` mode, the pinned backend's SYN-ACK/FIN/RST replies move them.
pub mod conn_flags {
    /// The entry was (re-)picked by a client SYN: a handshake is under way.
    pub const SYN: u32 = 1 << 0;
    /// `nat`: the pinned backend's SYN-ACK to that SYN crossed the gateway.
    pub const SYN_ACK: u32 = 1 << 1;
    /// A client packet with ACK (SYN and RST clear) kept the entry: the connection is
    /// established (or was already when it was pinned mid-flow).
    pub const ESTABLISHED: u32 = 1 << 2;
    /// A FIN or RST was seen (client packets; in `nat` also the backend's replies):
    /// the 4-tuple may be reused by a new connection (TIME-WAIT reuse).
    pub const CLOSED: u32 = 1 << 3;
}

impl FlowState {
    /// No entry: slot `NO_BACKEND`, which no backend has.
    pub const NONE: FlowState = FlowState {
        backend: crate::limits::ring::NO_BACKEND,
        generation: 0,
        flags: 0,
        seen: 0,
    };

    /// Whether a client SYN (ACK clear) on this entry's 4-tuple starts a new
    /// connection, picked through the live Maglev table (IPVS's connection reuse):
    /// unless the entry shows a live established connection, i.e. it is established,
    /// no FIN or RST was seen, and its latest client packet is at most
    /// `limits::conn::REUSE_IDLE_S` old (`REUSE_IDLE_TICKS`). Such a SYN (a retransmit, a forgery, a
    /// client that lost its socket) stays on the pinned backend, which answers it as
    /// its TCP stack does (RFC 5961 challenge ACK; a client without the connection
    /// then resets it, and its next SYN re-picks).
    #[inline(always)]
    pub const fn syn_repicks(&self, now: u32) -> bool {
        use conn_flags::*;
        self.flags & ESTABLISHED == 0
            || self.flags & CLOSED != 0
            || now.wrapping_sub(self.seen) > crate::limits::conn::REUSE_IDLE_TICKS
    }

    /// A new entry pinned to `backend` (its `generation`) by a client packet.
    #[inline(always)]
    pub const fn pinned(backend: u32, generation: u32) -> FlowState {
        FlowState {
            backend,
            generation,
            flags: 0,
            seen: 0,
        }
    }

    /// The entry after a TCP client packet with `tcp_flags` that is not a new
    /// connection (or after the SYN that (re-)picked it: a fresh handshake), at
    /// `now` (`FlowState::seen` ticks); and whether that packet completes a handshake: the client's first ACK
    /// after its SYN and, in `nat` mode, after the backend's SYN-ACK (counted once,
    /// `L4Counters::established`).
    #[inline(always)]
    pub const fn after_client(self, tcp_flags: u8, now: u32, nat: bool) -> (FlowState, bool) {
        use conn_flags::*;
        let mut next = self;
        next.seen = now;
        if crate::tcp_flags::is_new_connection(tcp_flags) {
            next.flags = SYN;
            return (next, false);
        }
        let mut completed = false;
        if tcp_flags & crate::tcp_flags::RST != 0 {
            next.flags |= CLOSED;
        } else if tcp_flags & crate::tcp_flags::ACK != 0 && self.flags & ESTABLISHED == 0 {
            next.flags |= ESTABLISHED;
            let handshake = if nat { SYN | SYN_ACK } else { SYN };
            completed = self.flags & (handshake | CLOSED) == handshake;
        }
        if tcp_flags & crate::tcp_flags::FIN != 0 {
            next.flags |= CLOSED;
        }
        (next, completed)
    }

    /// `nat`: the flags after a reply from backend slot `from` with `tcp_flags`: the
    /// pinned backend's SYN-ACK to the client's SYN, or a FIN or RST.
    #[inline(always)]
    pub const fn after_reply(&self, from: u32, tcp_flags: u8) -> u32 {
        use crate::tcp_flags::{ACK, FIN, RST, SYN as TCP_SYN};
        use conn_flags::*;
        if from != self.backend {
            return self.flags;
        }
        if tcp_flags & (FIN | RST) != 0 {
            return self.flags | CLOSED;
        }
        if tcp_flags & (TCP_SYN | ACK) == TCP_SYN | ACK
            && self.flags & (SYN | ESTABLISHED | CLOSED) == SYN
        {
            return self.flags | SYN_ACK;
        }
        self.flags
    }
}
