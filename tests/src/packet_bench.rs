//! What `ks-packet-bench` reports to `cargo xtask bench packet`: one JSON line per
//! program and one per (case, round). The runner measures; xtask summarises and prints.

use serde::{Deserialize, Serialize};

/// The fewest rounds and calls per round the method allows (issue #4: ≥ 5 rounds of
/// ≥ 100,000 `repeat = 1` calls).
pub const MIN_ROUNDS: u32 = 5;
pub const MIN_CALLS: u32 = 100_000;

/// Which program a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    /// The bare `XDP_PASS` floor.
    FloorPass,
    /// The MAC-swap `XDP_TX` floor.
    FloorTx,
    /// Keystone's `keystone_xdp`.
    Keystone,
}

/// One line of the runner's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// A loaded program's size, as the kernel reports it.
    Program {
        program: Program,
        /// Instructions after the verifier's rewrites (`bpftool prog dump xlated`).
        xlated_insns: u32,
        /// Native code size in bytes.
        jited_bytes: u32,
        /// Instructions the verifier processed (all paths, not one packet's).
        verified_insns: u32,
    },
    /// One round of one case: `calls` single runs, every verdict and output checked.
    Round {
        case: String,
        program: Program,
        round: u32,
        calls: u32,
        /// Mean of the kernel-reported durations, ns per call.
        mean_ns: f64,
    },
    /// One CPU's share of a case run on every CPU at once (one thread pinned per CPU,
    /// started together, `calls` each, its own flows). The `Round` of the same case
    /// and round is the one-CPU figure (CPU 0).
    Parallel {
        case: String,
        round: u32,
        cpu: u32,
        calls: u32,
        /// Mean of the kernel-reported durations, ns per call.
        mean_ns: f64,
        /// The thread's CPU time ÷ its wall time over the calls: 1.0 when it was never
        /// descheduled, so the CPUs really ran the program at the same time.
        on_cpu: f64,
    },
}
