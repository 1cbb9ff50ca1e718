//! `cargo xtask bench fleet --part etcd` in a tiny mode (5 weight changes, one
//! failover), run as an operator runs it: the command works and prints every
//! figure. No timing is asserted; what is asserted holds on any machine: every
//! change was confirmed by all three gateways with one table hash, and every canary
//! step was confirmed by every gateway. Needs root and `cargo xtask build`.

use keystone_lab::{
    cmd::{Printed, printed, xtask},
    fleet_etcd::PREFIX,
};

/// The rows of the printed table whose first cell starts with `first`: their cells.
fn rows<'a>(out: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter(|l| l.starts_with(first))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn bench_fleet_etcd_in_a_tiny_mode_prints_every_figure() {
    let mut cmd = xtask();
    cmd.args([
        "bench",
        "fleet",
        "--part",
        "etcd",
        "--no-build",
        "--changes",
        "5",
        "--rounds",
        "1",
    ]);
    let Printed {
        success,
        stdout,
        said,
    } = printed(&mut cmd);
    assert!(success, "{said}");

    for row in [
        "etcd alone: put on one member → watch event (baseline)",
        "change sent → last gateway's confirmation seen",
        "state put seen → another gateway's confirmation",
    ] {
        let found = rows(&stdout, row);
        assert_eq!(found.len(), 1, "one row {row:?}: {said}");
        assert!(
            found[0][1..3].iter().all(|cell| cell.ends_with('s')),
            "p50 and p99 of {row:?}: {said}"
        );
    }
    assert!(
        stdout.contains("the three confirmations carried one table hash in 5 of 5 changes"),
        "{said}"
    );
    assert_eq!(
        rows(&stdout, "leader ").len(),
        1,
        "one failover row: {said}"
    );

    // Every step of the canary is a row; each gateway confirmed it.
    let steps = ["10 %", "40 %", "70 %", "100 %"];
    for step in steps {
        let found = rows(&stdout, step);
        assert_eq!(found.len(), 1, "one row for step {step}: {said}");
        let count = |i: usize| found[0][i].parse::<u32>().unwrap_or(0);
        assert!(
            count(1) >= 1 && count(2) >= 3,
            "step {step}: a state write and three confirmations: {said}"
        );
    }
    assert!(stdout.contains("etcd_mvcc_put_total rose by "), "{said}");
    assert!(
        stdout.contains(&format!("bytes in {PREFIX}/state")),
        "{said}"
    );
}
