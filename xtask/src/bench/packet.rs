//! `cargo xtask bench packet`: per-packet cost of the XDP program through
//! `BPF_PROG_TEST_RUN`, beside a bare `XDP_PASS` and a MAC-swap `XDP_TX` floor.
//!
//! `ks-packet-bench` (keystone-tests) measures in a namespace of its own and reports
//! one mean per (case, round); this prints min and median over rounds, the same minus
//! the `XDP_PASS` floor (subtracted round by round: the cases of a round run back to
//! back), and ratios to both floors. The targets (issue #4) are read against the
//! floor-subtracted median: a `repeat = 1` call's kernel-reported duration includes
//! the harness's own timer reads, which the bare `XDP_PASS` program measures.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use keystone_lab::packet_bench::{MIN_CALLS, MIN_ROUNDS, Program, Report};

use super::table::{Table, median, min, ratio};
use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds per case (≥ 5); the cases are interleaved within each round.
    #[arg(long, default_value_t = MIN_ROUNDS)]
    rounds: u32,
    /// `repeat = 1` calls per case and round (≥ 100,000).
    #[arg(long, default_value_t = MIN_CALLS)]
    calls: u32,
}

/// Issue #4's targets, ns of program time (floor-subtracted median), by case prefix.
const TARGETS: [(&str, f64); 4] = [
    ("not for a VIP", 30.0),
    ("established", 120.0),
    ("new flow", 300.0),
    ("floor", f64::NAN),
];

pub fn run(args: Args) -> Result<()> {
    if args.rounds < MIN_ROUNDS {
        bail!(
            "--rounds {}: the method needs at least {MIN_ROUNDS}",
            args.rounds
        );
    }
    if args.calls < MIN_CALLS {
        bail!(
            "--calls {}: the method needs at least {MIN_CALLS}",
            args.calls
        );
    }
    crate::setup::setup()?;
    println!("xtask: building ks-packet-bench (release)");
    util::run(util::cargo()?.args([
        "build",
        "--release",
        "-p",
        "keystone-tests",
        "--bin",
        "ks-packet-bench",
    ]))?;
    let exe = std::env::current_exe()
        .context("finding xtask's own path")?
        .with_file_name("ks-packet-bench");
    println!(
        "xtask: {} rounds × {} single-run calls per case (BPF_PROG_TEST_RUN, repeat = 1)",
        args.rounds, args.calls
    );
    let out = Command::new(&exe)
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--calls", &args.calls.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", exe.display(), out.status);
    }
    let reports = String::from_utf8(out.stdout)
        .context("ks-packet-bench printed non-UTF-8")?
        .lines()
        .map(|l| serde_json::from_str::<Report>(l).with_context(|| format!("bad report line: {l}")))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", render(&reports)?);
    Ok(())
}

/// One case's round means, in round order.
struct Series {
    program: Program,
    rounds: BTreeMap<u32, f64>,
}

fn render(reports: &[Report]) -> Result<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    let mut sizes = Table::new(&[
        "program",
        "xlated insns",
        "jited bytes",
        "verifier-processed insns",
    ]);
    for r in reports {
        match r {
            Report::Program {
                program,
                xlated_insns,
                jited_bytes,
                verified_insns,
            } => sizes.row(&[
                program_name(*program).to_string(),
                xlated_insns.to_string(),
                jited_bytes.to_string(),
                verified_insns.to_string(),
            ]),
            Report::Round {
                case,
                program,
                round,
                mean_ns,
                ..
            } => {
                let s = series.entry(case).or_insert_with(|| {
                    order.push(case);
                    Series {
                        program: *program,
                        rounds: BTreeMap::new(),
                    }
                });
                s.rounds.insert(*round, *mean_ns);
            }
        }
    }
    let floor = |p: Program| {
        series
            .values()
            .find(|s| s.program == p)
            .with_context(|| format!("the run has no {} case", program_name(p)))
    };
    let (pass, tx) = (floor(Program::FloorPass)?, floor(Program::FloorTx)?);
    let pass_median = median(&pass.rounds.values().copied().collect::<Vec<_>>()).unwrap_or(0.0);
    let tx_median = median(&tx.rounds.values().copied().collect::<Vec<_>>()).unwrap_or(0.0);

    let mut t = Table::new(&[
        "case",
        "min ns",
        "median ns",
        "− pass floor: min",
        "− pass floor: median",
        "target",
        "÷ pass floor",
        "÷ tx floor",
    ]);
    for name in order {
        let s = &series[name];
        let raw: Vec<f64> = s.rounds.values().copied().collect();
        // Per round: the case minus the XDP_PASS floor of the same round.
        let net: Vec<f64> = s
            .rounds
            .iter()
            .filter_map(|(round, ns)| pass.rounds.get(round).map(|f| ns - f))
            .collect();
        let med = median(&raw).unwrap_or(f64::NAN);
        let target = TARGETS
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, t)| *t)
            .filter(|t| !t.is_nan())
            .map_or_else(String::new, |t| format!("≤ {t:.0}"));
        t.row(&[
            name.to_string(),
            format!("{:.1}", min(&raw).unwrap_or(f64::NAN)),
            format!("{med:.1}"),
            format!("{:.1}", min(&net).unwrap_or(f64::NAN)),
            format!("{:.1}", median(&net).unwrap_or(f64::NAN)),
            target,
            ratio(med, pass_median),
            ratio(med, tx_median),
        ]);
    }
    Ok(format!(
        "\nPer-packet cost, ns per BPF_PROG_TEST_RUN call (kernel-reported, repeat = 1; \
         min/median over rounds of each round's mean). Targets apply to the floor-subtracted median.\n{}\
         \nProgram sizes (kernel-reported):\n{}",
        t.render(),
        sizes.render()
    ))
}

fn program_name(p: Program) -> &'static str {
    match p {
        Program::FloorPass => "floor_pass (XDP_PASS)",
        Program::FloorTx => "floor_tx (MAC swap + XDP_TX)",
        Program::Keystone => "keystone_xdp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(case: &str, program: Program, round: u32, mean_ns: f64) -> Report {
        Report::Round {
            case: case.into(),
            program,
            round,
            calls: MIN_CALLS,
            mean_ns,
        }
    }

    #[test]
    fn subtracts_the_pass_floor_round_by_round() {
        let mut reports = Vec::new();
        for (r, (pass, tx, est)) in [
            (50.0, 60.0, 150.0),
            (70.0, 80.0, 190.0),
            (60.0, 70.0, 170.0),
        ]
        .into_iter()
        .enumerate()
        {
            let r = r as u32;
            reports.push(round("floor: XDP_PASS", Program::FloorPass, r, pass));
            reports.push(round("floor: MAC swap + XDP_TX", Program::FloorTx, r, tx));
            reports.push(round("established, nat, IPv4", Program::Keystone, r, est));
        }
        let text = render(&reports).unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("| established"))
            .unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // min 150, median 170; minus the same round's floor: 100, 120, 110.
        assert_eq!(
            &cells[1..9],
            &[
                "established, nat, IPv4",
                "150.0",
                "170.0",
                "100.0",
                "110.0",
                "≤ 120",
                "2.83×",
                "2.43×"
            ]
        );
    }

    #[test]
    fn a_run_without_floors_is_an_error() {
        let err =
            render(&[round("established, nat, IPv4", Program::Keystone, 0, 1.0)]).unwrap_err();
        assert!(err.to_string().contains("floor_pass"), "{err}");
    }
}
