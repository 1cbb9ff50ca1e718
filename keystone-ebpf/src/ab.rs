//! Variant builds for `bench packet`'s A/B cases: each bit puts back the old way of
//! one step of the client path, or leaves a step out, so its cost is measured in
//! the same run as the program itself. The production entry points pass
//! `PRODUCTION` (no bit), for which every variant branch compiles away; the
//! variant entry points exist only in the `ab` feature's object, which the agent
//! never loads.

/// The program as the agent loads it.
pub const PRODUCTION: u32 = 0;
/// A SYN looks the flow up first and inserts after the miss (the path before
/// insert-if-absent).
pub const LOOKUP_FIRST: u32 = 1 << 0;
/// No SYN checksum check (`checksum::check_syn`).
pub const NO_SYN_CHECKSUM: u32 = 1 << 1;
/// No traffic or handshake counters for the packet.
pub const NO_COUNTERS: u32 = 1 << 2;
/// A new flow is picked but not inserted into the connection table.
pub const NO_INSERT: u32 = 1 << 3;

/// Whether variant `v` has `bit`.
#[inline(always)]
pub const fn has(v: u32, bit: u32) -> bool {
    v & bit != 0
}
