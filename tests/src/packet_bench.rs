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
}
