//! `cargo xtask bench …`: each command measures Keystone and its baselines side by side
//! in one run and prints a table with ratios. Nothing here asserts a timing.

pub mod all;
pub mod control;
pub mod e2e;
pub mod fleet;
mod fleet_etcd;
pub mod live;
pub mod packet;
pub mod scale;
pub mod table;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, against floor programs.
    Packet(packet::Args),
    /// End to end in the namespace lab: Keystone nat/dsr vs nftables, HAProxy and direct.
    E2e(e2e::Args),
    /// Control-plane latency: API call to table live in the kernel, flips, health removal.
    Control(control::Args),
    /// Kernel memory per flow and per VIP; 1,000,000 flows; 1,000 VIPs × 100 backends.
    Scale(scale::Args),
    /// A fleet of gateways: behind a BGP router (drain, hard kill and join under load)
    /// and through etcd (confirmation latency, leader failover, writes per step).
    Fleet(fleet::Args),
    /// Every bench command above in sequence on a quiet machine, each one's output in a file.
    All(all::Args),
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    crate::util::require_root("`cargo xtask bench` (BPF, network namespaces)")?;
    match cmd {
        BenchCmd::Packet(args) => packet::run(args),
        BenchCmd::E2e(args) => e2e::run(args),
        BenchCmd::Control(args) => control::run(args),
        BenchCmd::Scale(args) => scale::run(args),
        BenchCmd::Fleet(args) => fleet::run(args),
        BenchCmd::All(args) => all::run(args),
    }
}
