//! One flow's packets on two CPUs. On a multi-queue NIC a flow hashes to one
//! queue, so one CPU; on a veth (native or generic XDP, and tc) a packet runs on
//! the CPU of whoever sent it, so one flow's packets, and its replies, can arrive on
//! either CPU. The connection table is one hash table for all CPUs (its LRU
//! bookkeeping aside): an entry made on one CPU is found on the other.
//!
//! The LRU order is one for all CPUs too (not `BPF_F_NO_COMMON_LRU`, which splits
//! the entries evenly over the CPUs, each evicting from its own share): one CPU can
//! fill the whole table.
//!
//! `BPF_PROG_TEST_RUN` cannot be told a CPU for XDP or tc programs (the kernel
//! refuses its `cpu` field for them), so each step pins its thread
//! (`keystone_lab::cpus`), and the program runs on that thread's CPU.

use keystone_lab::cpus;

use super::*;
use crate::conns::{Pair, establish, pinned_slot, reply, reuse_flows};

/// Flows that all arrive on CPU 0 (one busy queue, a veth whose sender runs there)
/// fill the table to its size before any is evicted: 400 in a 512-entry table all
/// stay. Over a table pinned with `BPF_F_NO_COMMON_LRU` the same steps leave CPU 0
/// 256 entries: 144 of the 400 were evicted (tried 2026-12-01, not kept).
#[test]
fn one_cpu_can_fill_the_whole_connection_table() {
    const ENTRIES: u32 = 512;
    const FLOWS: u16 = 400;
    in_netns(|| {
        let bpffs = Bpffs::mount();
        let mut opts = LoadOptions::new(bpffs.dir.join("ks"));
        opts.limits.conn_table_entries = ENTRIES;
        let dp = AyaDataplane::load(opts).unwrap_or_else(|e| panic!("load: {e}"));
        let mut gw = Gateway::with(dp, bpffs);
        let pair = Pair::new();
        gw.apply(&pair.spec(1, 1));
        cpus::pin_to(0);
        let flows: Vec<Flow> = (0..FLOWS)
            .map(|i| {
                flow(
                    &format!("198.18.0.2:{}", 20_000 + i),
                    "198.18.0.100:80",
                    PROTO_TCP,
                )
            })
            .collect();
        for f in &flows {
            send(&gw, f);
        }
        let evicted = flows
            .iter()
            .filter(|f| pinned_slot(&gw, f).is_none())
            .count();
        assert_eq!(
            evicted, 0,
            "flows evicted from a {ENTRIES}-entry table holding {FLOWS}, all from CPU 0"
        );
    });
}

#[test]
fn a_flow_pinned_on_one_cpu_keeps_its_backend_on_the_other() {
    in_netns(|| {
        assert!(cpus::available() >= 2, "this test needs two CPUs");
        let mut gw = Gateway::new();
        let pair = Pair::new();
        let (to0, to1) = (pair.b0.socket_addr(), pair.b1.socket_addr());
        let flows = reuse_flows();
        gw.apply(&pair.spec(100, 0));
        cpus::pin_to(0);
        for f in &flows {
            assert_eq!(establish(&gw, &pair, f), to0, "handshake on CPU 0");
        }
        // New connections would now go to b1: the flows keep b0 on CPU 1, replies
        // included, without being re-picked.
        gw.apply(&pair.spec(0, 100));
        let before = gw.counters();
        cpus::on_each(&[1], |_, _| {
            for f in &flows {
                assert_eq!(send_established(&gw, f), to0, "{f:?} on CPU 1");
                assert_eq!(
                    reply(&gw, f, &pair.b0, 0, ACK),
                    XDP_REDIRECT,
                    "b0's reply to {f:?} on CPU 1"
                );
                assert_eq!(pinned_slot(&gw, f), gw.dp.backend_slot(&pair.v, &pair.b0));
            }
        });
        // A connection opened on CPU 1 keeps its backend on CPU 0.
        let g = flow("198.18.0.2:46000", "198.18.0.100:80", PROTO_TCP);
        cpus::on_each(&[1], |_, _| {
            assert_eq!(establish(&gw, &pair, &g), to1, "handshake on CPU 1");
        });
        gw.apply(&pair.spec(100, 0));
        assert_eq!(send_established(&gw, &g), to1, "{g:?} on CPU 0");
        assert_eq!(
            event_deltas(&before, &gw.counters()),
            vec![],
            "no flow was lost between the CPUs"
        );
    });
}
