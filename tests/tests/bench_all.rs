//! `cargo xtask bench all --dry-run`, as an operator runs it before a long quiet run:
//! it says how busy the machine is and lists every bench command with the file its
//! output goes to, and runs none of them. Needs root (every bench command does).

use keystone_lab::cmd::{Printed, printed, xtask};

#[test]
fn bench_all_dry_run_lists_every_bench_command_in_order() {
    let out_dir = std::env::temp_dir().join(format!("bench-all-smoke-{}", std::process::id()));
    let mut cmd = xtask();
    cmd.args(["bench", "all", "--dry-run", "--out"])
        .arg(&out_dir);
    let Printed {
        success,
        stdout,
        said,
    } = printed(&mut cmd);
    assert!(success, "{said}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("bench all: load average ") && l.ends_with(" CPUs")),
        "{said}"
    );

    let planned: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bench all: would run `"))
        .collect();
    let expected = [
        ("bench packet", "packet"),
        ("bench e2e --compare-hooks --rounds 3", "e2e"),
        (
            "bench e2e --topology bridge --compare-hooks --rounds 3",
            "e2e-bridge",
        ),
        ("bench control", "control"),
        ("bench scale", "scale"),
        ("bench fleet --part all", "fleet"),
    ];
    assert_eq!(planned.len(), expected.len(), "{said}");
    for (line, (command, file)) in planned.iter().zip(expected) {
        let want = format!(
            "cargo xtask {command}` > {}",
            out_dir.join(format!("{file}.txt")).display()
        );
        assert_eq!(*line, want, "{said}");
    }
    assert!(!out_dir.exists(), "a dry run writes nothing: {said}");
}
