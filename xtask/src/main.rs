//! `cargo xtask …`: the front door for setting up, building, running the lab and
//! the demo, and running the whole test suite.

mod bench;
mod build;
mod demo;
mod lab;
#[cfg(test)]
mod modgraph;
mod package;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};
use keystone_lab::Mode;

#[derive(Parser)]
#[command(about = "Keystone's build, lab and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src for nightly, bpf-linker (against nightly's
    /// LLVM), and the Debian packages the lab uses. Idempotent.
    Setup,
    /// Setup, then build the agent (with its XDP program), keystone-ctl and the lab tools.
    Build,
    /// Bring a namespace lab up or down.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// Build, bring a lab up, and shift traffic: 100/0 → 90/10 → 50/50 → 0/100 → 100/0.
    Demo {
        /// New TCP connections measured per step.
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        #[arg(long, value_enum, default_value_t = Mode::Nat)]
        mode: Mode,
    },
    /// Benchmarks: each prints its figures and ratios against baselines measured in the same run.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCmd,
    },
    /// Build, then the Debian package (keystone-lb): both binaries, the systemd unit,
    /// the example config, man pages and completions. Prints the .deb's path.
    Package {
        /// Where to write the .deb [default: target/debian/keystone-lb_<version>_<arch>.deb].
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Package the release binaries in target/release as they are.
        #[arg(long)]
        no_build: bool,
    },
    /// Setup, build, then run every test (`cargo test --workspace --release`; needs root).
    Test {
        /// Passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Namespaces, backends, and the agent in the gateway namespace.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, value_enum, default_value_t = Mode::Nat)]
        mode: Mode,
        /// A fleet instead: a router running BIRD (BGP, BFD, ECMP) in front of this
        /// many gateways, each running BIRD and the agent announcing the VIPs (nat).
        #[arg(long, value_name = "N", conflicts_with = "mode")]
        gateways: Option<usize>,
    },
    /// Stop everything the lab started and remove its namespaces.
    Down {
        #[arg(long, default_value = "lab", conflicts_with_all = ["all", "run"])]
        name: String,
        /// Every lab under /run/keystone-lab left behind: its creator is gone (a crashed
        /// test's, a `lab up`); a lab whose creator still runs is in use and stays.
        #[arg(long, conflicts_with = "run")]
        all: bool,
        /// Like --all, but only labs created with KEYSTONE_LAB_RUN=ID (.ci/run's cleanup).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build::build(),
        Cmd::Lab {
            command:
                LabCmd::Up {
                    name,
                    mode,
                    gateways,
                },
        } => match gateways {
            Some(n) => lab::fleet_up(&name, n),
            None => lab::up(&name, mode),
        },
        Cmd::Lab {
            command: LabCmd::Down { name, all, run },
        } => lab::down(&name, all, run.as_deref()),
        Cmd::Demo { connections, mode } => demo::demo(connections, mode),
        Cmd::Bench { command } => bench::run(command),
        Cmd::Package { output, no_build } => {
            package::package(output.as_deref(), no_build).map(drop)
        }
        Cmd::Test { args } => test::test(&args),
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::Parser;

    use super::Cli;

    /// Two flattened `--rounds` (bench fleet's and its etcd part's) built, then
    /// refused every run of the command; clap's own check runs only in debug builds.
    #[test]
    fn bench_fleet_takes_its_documented_arguments() {
        let args = [
            "xtask",
            "bench",
            "fleet",
            "--part",
            "etcd",
            "--no-build",
            "--changes",
            "5",
            "--rounds",
            "1",
            "--held",
            "10",
        ];
        if let Err(e) = Cli::try_parse_from(args) {
            panic!("{args:?}: {e}");
        }
    }

    /// `bench all` and every command line it runs parse (a bad one would fail only
    /// after the commands before it had run for an hour).
    #[test]
    fn bench_all_and_the_commands_it_runs_parse() {
        let all = [
            "xtask",
            "bench",
            "all",
            "--force",
            "--dry-run",
            "--out",
            "/tmp/x",
        ];
        if let Err(e) = Cli::try_parse_from(all) {
            panic!("{all:?}: {e}");
        }
        for args in crate::bench::all::command_lines() {
            let line: Vec<&str> = ["xtask", "bench"]
                .into_iter()
                .chain(args.iter().copied())
                .collect();
            if let Err(e) = Cli::try_parse_from(&line) {
                panic!("{line:?}: {e}");
            }
        }
    }
}
