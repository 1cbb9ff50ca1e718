//! `cargo xtask bench all`: every bench command one after another, as BENCHMARKS.md's
//! figures are regenerated: on a quiet machine (checked first), each command's full
//! output in a file of its own, its duration and exit status printed, and a non-zero
//! end if any failed.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util;

/// Above this 1-minute load average per CPU the figures are not worth quoting.
const QUIET_LOAD_PER_CPU: f64 = 1.5;

/// Each bench command `all` runs, in order: (name of its output file, arguments after
/// `cargo xtask bench`).
const COMMANDS: [(&str, &[&str]); 6] = [
    ("packet", &["packet"]),
    // Every hook against the peers: native XDP is the agent's default, tc is what
    // `attach: auto` picks on a veth like the lab's.
    ("e2e", &["e2e", "--compare-hooks", "--rounds", "3"]),
    (
        "e2e-bridge",
        &[
            "e2e",
            "--topology",
            "bridge",
            "--compare-hooks",
            "--rounds",
            "3",
        ],
    ),
    ("control", &["control"]),
    ("scale", &["scale"]),
    ("fleet", &["fleet", "--part", "all"]),
];

/// The arguments after `cargo xtask bench` of every command, in order.
#[cfg(test)]
pub fn command_lines() -> impl Iterator<Item = &'static [&'static str]> {
    COMMANDS.iter().map(|(_, args)| *args)
}

#[derive(clap::Args)]
pub struct Args {
    /// Where each command's output goes (`<name>.txt`) [default: target/bench-all/<UTC time>/].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run even when the machine is busy (the figures will say so only by the load printed).
    #[arg(long)]
    force: bool,
    /// Print the quiet check and the commands it would run, and run none.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = util::loadavg();
    let one_minute: f64 = load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN);
    println!("bench all: load average {load} on {cpus} CPUs");
    if let Err(e) = quiet(one_minute, cpus) {
        if args.force || args.dry_run {
            eprintln!("bench all: WARNING: {e:#}; running anyway (--force or --dry-run)");
        } else {
            return Err(e.context("bench all (give --force to run anyway)"));
        }
    }
    let out = match args.out {
        Some(dir) => dir,
        None => util::root().join("target/bench-all").join(utc_stamp()?),
    };
    let xtask = std::env::current_exe().context("finding xtask's own binary")?;
    let commands: Vec<(&str, Command)> = COMMANDS
        .iter()
        .map(|&(name, args)| {
            let mut c = Command::new(&xtask);
            c.arg("bench").args(args).current_dir(util::root());
            (name, c)
        })
        .collect();
    if args.dry_run {
        for (name, c) in &commands {
            println!(
                "bench all: would run `{}` > {}",
                shown(c),
                out.join(format!("{name}.txt")).display()
            );
        }
        return Ok(());
    }
    run_each(commands, &out)
}

/// An error saying how busy the machine is when the load per CPU is above quiet.
fn quiet(one_minute: f64, cpus: usize) -> Result<()> {
    let per_cpu = one_minute / cpus as f64;
    if per_cpu.is_nan() || per_cpu > QUIET_LOAD_PER_CPU {
        bail!(
            "the machine is busy: 1-minute load {one_minute:.2} is {per_cpu:.2} per CPU \
             (quiet is ≤ {QUIET_LOAD_PER_CPU}); figures measured now move by tens of percent"
        );
    }
    Ok(())
}

/// Runs each command with its stdout and stderr in `out/<name>.txt`, printing its
/// duration and exit status; an error naming every command that failed.
fn run_each(commands: Vec<(&str, Command)>, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    println!("bench all: output in {}", out.display());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, mut c) in commands {
        let path = out.join(format!("{name}.txt"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let what = shown(&c);
        println!("bench all: `{what}` > {}", path.display());
        let t = Instant::now();
        let status = c
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("starting `{what}`"))?;
        println!(
            "bench all: `{what}`: {status} after {}",
            minutes(t.elapsed())
        );
        if !status.success() {
            failed.push(format!("`{what}` ({status}; see {})", path.display()));
        }
    }
    println!("bench all: done in {}", minutes(started.elapsed()));
    if !failed.is_empty() {
        bail!("bench all: {} failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// `c` as `cargo xtask …` (how a reader would run it again).
fn shown(c: &Command) -> String {
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("cargo xtask {}", args.join(" "))
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// The time now in UTC, as a directory name (`20261201T204500Z`).
fn utc_stamp() -> Result<String> {
    let out = keystone_lab::cmd::run(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]))?;
    Ok(out.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_machine_is_refused_with_its_load() {
        assert!(quiet(2.9, 2).is_ok());
        let e = quiet(3.2, 2).unwrap_err().to_string();
        assert!(e.contains("load 3.20 is 1.60 per CPU"), "{e}");
        assert!(quiet(f64::NAN, 2).is_err());
    }

    #[test]
    fn every_command_runs_into_its_file_and_a_failure_is_named() {
        let dir = std::env::temp_dir().join(format!("bench-all-test-{}", std::process::id()));
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let r = run_each(
            vec![
                ("first", sh("echo out; echo err >&2; exit 3")),
                ("second", sh("echo second")),
            ],
            &dir,
        );
        let first = fs::read_to_string(dir.join("first.txt")).unwrap();
        let second = fs::read_to_string(dir.join("second.txt")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let e = r.unwrap_err().to_string();
        assert!(e.contains("1 failed: `cargo xtask -c echo out;"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("out\nerr\n", "second\n")
        );
    }
}
