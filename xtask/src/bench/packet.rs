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

/// Issue #13's targets, ns of program time (floor-subtracted median), by case prefix.
const TARGETS: [(&str, f64); 4] = [
    ("not for a VIP", 15.0),
    ("established", 80.0),
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
    // At nice −20 on a shared machine: the both-CPUs runs need both threads actually
    // running at once (the table's "on CPU" column shows how far they did).
    let out = Command::new("nice")
        .args(["-n", "-20"])
        .arg(&exe)
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

/// Issue #13's target for the both-CPUs runs: the aggregate rate ÷ one CPU's.
const PARALLEL_TARGET: f64 = 1.9;

/// One case's round means, in round order.
struct Series {
    program: Program,
    rounds: BTreeMap<u32, f64>,
}

/// One case's both-CPUs runs: per round, each CPU's (mean ns, on-CPU share).
type ParallelSeries = BTreeMap<u32, Vec<(f64, f64)>>;

fn render(reports: &[Report]) -> Result<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    let mut parallel: Vec<(&str, ParallelSeries)> = Vec::new();
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
            Report::Parallel {
                case,
                round,
                mean_ns,
                on_cpu,
                ..
            } => {
                let at = match parallel.iter().position(|(c, _)| c == case) {
                    Some(at) => at,
                    None => {
                        parallel.push((case, BTreeMap::new()));
                        parallel.len() - 1
                    }
                };
                parallel[at]
                    .1
                    .entry(*round)
                    .or_default()
                    .push((*mean_ns, *on_cpu));
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
         {}\
         \nProgram sizes (kernel-reported):\n{}",
        t.render(),
        render_parallel(&series, &parallel)?,
        sizes.render()
    ))
}

/// The both-CPUs table: per round, the aggregate rate of the CPUs running the case
/// at once (Σ 1 / each CPU's mean) ÷ the rate of the same case alone on CPU 0 in the
/// same round; min and median over rounds. Empty when the run has no such case.
fn render_parallel(
    series: &BTreeMap<&str, Series>,
    parallel: &[(&str, ParallelSeries)],
) -> Result<String> {
    if parallel.is_empty() {
        return Ok(String::new());
    }
    let mut t = Table::new(&[
        "case",
        "one CPU: median ns",
        "both: CPU 0 median ns",
        "both: CPU 1 median ns",
        "aggregate ÷ one CPU: min",
        "median",
        "target",
        "on CPU (lower thread): median",
    ]);
    for (case, rounds) in parallel {
        let one = series
            .get(case)
            .with_context(|| format!("{case}: both-CPUs runs but no one-CPU run"))?;
        let mut ratios = Vec::new();
        let mut on_cpu = Vec::new();
        let mut per_cpu: Vec<Vec<f64>> = Vec::new();
        for (round, cpus) in rounds {
            let Some(alone) = one.rounds.get(round) else {
                continue;
            };
            ratios.push(alone * cpus.iter().map(|(ns, _)| 1.0 / ns).sum::<f64>());
            on_cpu.push(cpus.iter().map(|(_, on)| *on).fold(f64::INFINITY, f64::min));
            for (i, (ns, _)) in cpus.iter().enumerate() {
                if per_cpu.len() <= i {
                    per_cpu.push(Vec::new());
                }
                per_cpu[i].push(*ns);
            }
        }
        let ns = |i: usize| {
            per_cpu
                .get(i)
                .and_then(|v| median(v))
                .map_or_else(String::new, |m| format!("{m:.1}"))
        };
        t.row(&[
            case.to_string(),
            format!(
                "{:.1}",
                median(&one.rounds.values().copied().collect::<Vec<_>>()).unwrap_or(f64::NAN)
            ),
            ns(0),
            ns(1),
            format!("{:.2}×", min(&ratios).unwrap_or(f64::NAN)),
            format!("{:.2}×", median(&ratios).unwrap_or(f64::NAN)),
            format!("≥ {PARALLEL_TARGET:.1}×"),
            format!("{:.0} %", 100.0 * median(&on_cpu).unwrap_or(f64::NAN)),
        ]);
    }
    Ok(format!(
        "\nBoth CPUs at once: one thread pinned per CPU, started together, the same calls each \
         (each CPU its own flows); aggregate rate (Σ 1 / ns per call) ÷ the same case alone on CPU 0 \
         in the same round. \"on CPU\": the thread's CPU time ÷ wall time (below 100 %: it was \
         descheduled, so the CPUs overlapped less).\n{}",
        t.render()
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
                "≤ 80",
                "2.83×",
                "2.43×"
            ]
        );
    }

    #[test]
    fn the_both_cpus_ratio_is_the_aggregate_rate_over_the_same_rounds_one_cpu_rate() {
        let par = |round, cpu, mean_ns, on_cpu| Report::Parallel {
            case: "new flow, nat, IPv4".into(),
            round,
            cpu,
            calls: MIN_CALLS,
            mean_ns,
            on_cpu,
        };
        let mut reports = Vec::new();
        // Alone 100 ns, at once 100 and 125 ns: 100 · (1/100 + 1/125) = 1.80×; then
        // 2.00× and 150 · (1/150 + 1/300) = 1.50×. The lower thread's on-CPU share
        // is CPU 0's.
        for (r, alone, cpu0, cpu1, on) in [
            (0, 100.0, 100.0, 125.0, 0.9),
            (1, 200.0, 200.0, 200.0, 1.0),
            (2, 150.0, 150.0, 300.0, 0.8),
        ] {
            reports.push(round("floor: XDP_PASS", Program::FloorPass, r, 50.0));
            reports.push(round("floor: MAC swap + XDP_TX", Program::FloorTx, r, 60.0));
            reports.push(round("new flow, nat, IPv4", Program::Keystone, r, alone));
            reports.push(par(r, 0, cpu0, on));
            reports.push(par(r, 1, cpu1, 1.0));
        }
        let text = render(&reports).unwrap();
        let row = text
            .lines()
            .filter(|l| l.starts_with("| new flow"))
            .nth(1)
            .expect("a both-CPUs row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            &cells[1..9],
            &[
                "new flow, nat, IPv4",
                "150.0",
                "150.0",
                "200.0",
                "1.50×",
                "1.80×",
                "≥ 1.9×",
                "90 %"
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
