//! `cargo xtask bench e2e`: Keystone (`nat`, `dsr`) against what a Linux user would run
//! instead (nftables DNAT with weighted `numgen`, HAProxy in TCP mode) and against no
//! balancer at all, in one namespace lab: the same client, the same two backends (nginx
//! and iperf3 servers), one case after another. Each case measures new connections per
//! second and latency (wrk, `Connection: close`), keep-alive requests (wrk), throughput
//! (iperf3) and packets per second forwarded (trafgen, counted at the backends).
//!
//! Every case runs in a lab of its own (`--one-lab`: all in one, as before), so no
//! case feels what the one before left: a client full of TIME-WAIT sockets, conntrack
//! entries, a process. Before each case the bench checks that no XDP program,
//! nftables rule or VIP address is in the gateway, and prints what the case found and
//! what it left behind (`leftover.rs`).

mod configs;
mod gateway;
mod hooks;
mod leftover;
mod measure;
mod netstat;
mod report;
mod tools;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use keystone_lab::{BRIDGE, Bins, Lab, LabBuilder, Mode};

use self::{
    configs::{Member, Ports},
    hooks::{Hook, Run},
    leftover::Leftover,
    netstat::TcpCounters,
    tools::{CpuTimes, Iperf, LinkCounters, Wrk},
};
use super::table;
use crate::{build, util};

/// The lab's two backends; the first also serves the single iperf3 stream.
const BACKENDS: [&str; 2] = ["blue", "green"];
const PORTS: Ports = Ports {
    http: crate::lab::BACKEND_PORT,
    iperf: 5201,
    udp: crate::lab::BACKEND_PORT,
};
/// Distinct UDP source ports the generator cycles through (flows a balancer tracks).
const FLOWS: u16 = 1024;
/// The client's and each backend's link to the gateway (named by the lab).
const LINK: &str = "eth-gw";
/// The gateway's link to the client.
const GW_CLIENT_LINK: &str = "eth-client";
const NFT_TABLE: &str = "keystone_bench";
const SINK_TABLE: &str = "keystone_bench_sink";
/// Seconds per measurement with `--quick`.
const QUICK_SECS: u64 = 3;
/// Untimed wrk run that opens each case (ARP, conntrack, nginx workers, caches).
const WARM_UP_SECS: u64 = 1;
/// How long a balancer or server gets to answer after it starts.
const READY: Duration = Duration::from_secs(15);

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement; each case makes four (wrk twice, iperf3, trafgen).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// 3-second measurements: the whole bench in about two minutes, rougher figures.
    #[arg(long, conflicts_with = "duration")]
    quick: bool,
    /// Weights of the backends blue/green, the same for every balancer.
    #[arg(long, default_value = "50/50", value_parser = parse_weights)]
    weights: Weights,
    /// Concurrent wrk connections (2 threads).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=10000))]
    connections: u32,
    /// Run only these cases (repeat the flag); all by default, in the order listed.
    #[arg(long = "case", value_enum)]
    cases: Vec<Case>,
    /// Run every case this many times, every other round in reverse order (so a drift
    /// in the machine's load does not favour the cases run first); tables show medians
    /// (nearest rank: give an odd number).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    rounds: u32,
    /// The hook Keystone's cases attach the program at (the agent's `attach:`).
    #[arg(long, default_value = "xdp", value_parser = hooks::ATTACH)]
    attach: String,
    /// Run each Keystone case once per hook (tc, xdp-generic and native xdp; behind a
    /// bridge also tc on the bridge device), each as a case of its own with a fresh lab,
    /// instead of once at `--attach`/`--bridge-attach`; a table compares the hooks.
    #[arg(long, conflicts_with_all = ["attach", "bridge_attach"])]
    compare_hooks: bool,
    /// Run every case in one lab, one after another (how the bench ran before each case
    /// got a lab of its own): shows what a case leaves for the next.
    #[arg(long)]
    one_lab: bool,
    /// How the backends are reached: a routed link each (`default`), or one Linux
    /// bridge in the gateway whose ports are the backends' links (`bridge`).
    #[arg(long, value_enum, default_value_t = Topology::Default)]
    topology: Topology,
    /// With `--topology bridge`: which gateway devices Keystone's program is attached
    /// to besides the client's link: the bridge's `ports`, or the `bridge` itself.
    #[arg(long, value_enum, default_value_t = BridgeAttach::Ports)]
    bridge_attach: BridgeAttach,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Topology {
    Default,
    Bridge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BridgeAttach {
    Ports,
    Bridge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Weights([u32; BACKENDS.len()]);

fn parse_weights(s: &str) -> Result<Weights, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [blue, green] = parts[..] else {
        return Err(format!(
            "--weights {s:?}: give two weights, blue/green, e.g. 50/50 or 90/10"
        ));
    };
    let parse = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|e| format!("--weights {s:?}: {x:?} is not a whole number ({e})"))
    };
    let w = [parse(blue)?, parse(green)?];
    if w.contains(&0) {
        return Err(format!(
            "--weights {s:?}: both backends need a weight above 0 (the bench compares balancing)"
        ));
    }
    if w.iter().any(|&x| x > configs::HAPROXY_MAX_WEIGHT) {
        return Err(format!(
            "--weights {s:?}: HAProxy takes weights up to {}: give smaller ones with the same ratio",
            configs::HAPROXY_MAX_WEIGHT
        ));
    }
    Ok(Weights(w))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Case {
    /// The client to one backend through the gateway as a plain router.
    Direct,
    /// Keystone, `mode: nat`.
    Nat,
    /// Keystone, `mode: dsr`.
    Dsr,
    /// nftables DNAT with weighted `numgen random`.
    Nftables,
    /// HAProxy, `mode tcp`, `balance roundrobin` with weights.
    Haproxy,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Direct,
        Case::Nat,
        Case::Dsr,
        Case::Nftables,
        Case::Haproxy,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::Direct => "direct (gateway routes, no balancer)",
            Case::Nat => "Keystone nat",
            Case::Dsr => "Keystone dsr",
            Case::Nftables => "nftables DNAT numgen",
            Case::Haproxy => "HAProxy tcp",
        }
    }

    fn keystone_mode(self) -> Option<Mode> {
        match self {
            Case::Nat => Some(Mode::Nat),
            Case::Dsr => Some(Mode::Dsr),
            _ => None,
        }
    }
}

/// The external programs the bench drives, found on PATH.
struct Programs {
    wrk: PathBuf,
    iperf3: PathBuf,
    trafgen: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    nft: PathBuf,
}

impl Programs {
    fn find() -> Result<Self> {
        let find = |program: &str, package: &str| {
            util::which(program).with_context(|| {
                format!(
                    "{program} is missing: run `cargo xtask setup` (it installs the Debian package {package})"
                )
            })
        };
        Ok(Self {
            wrk: find("wrk", "wrk")?,
            iperf3: find("iperf3", "iperf3")?,
            trafgen: find("trafgen", "netsniff-ng")?,
            nginx: find("nginx", "nginx")?,
            haproxy: find("haproxy", "haproxy")?,
            nft: find("nft", "nftables")?,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let secs = if args.quick {
        QUICK_SECS
    } else {
        args.duration
    };
    let cases: Vec<Case> = if args.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        Case::ALL
            .into_iter()
            .filter(|c| args.cases.contains(c))
            .collect()
    };
    build::build()?;
    let programs = Programs::find()?;
    util::stop_on_signals()?;
    let started = Instant::now();
    let bins = util::bins()?;
    let bridged = args.topology == Topology::Bridge;
    let lab = new_lab(&bins, 0, bridged)?;
    let pool = lab
        .backends()
        .iter()
        .zip(args.weights.0)
        .map(|(b, weight)| Member {
            name: b.name.clone(),
            addr: b.ipv4,
            weight,
        })
        .collect();
    let mut bench = Bench {
        lab,
        labs_made: 1,
        bins,
        one_lab: args.one_lab,
        programs,
        secs,
        connections: args.connections,
        pool,
        hook: Hook::new(&args.attach, args.bridge_attach),
        bridged,
        compare_hooks: args.compare_hooks,
    };
    let planned = hooks::runs(&cases, bench.hook, args.compare_hooks, bridged);
    let keystone_at = if args.compare_hooks {
        "each hook in turn".to_owned()
    } else {
        format!(
            "`attach: {}` on {}",
            args.attach,
            bench.keystone_interfaces().join(", ")
        )
    };
    println!(
        "bench e2e: lab {} (client {}, gateway {}, backends {}{}); {} s per measurement, weights {}, {} wrk connections; Keystone attached with {}",
        bench.lab.name(),
        bench.lab.client_ns(),
        bench.lab.gateway_ns(),
        BACKENDS.join(", "),
        if bridged {
            format!(" behind the bridge {BRIDGE}")
        } else {
            String::new()
        },
        secs,
        bench.weights_label(),
        args.connections,
        keystone_at
    );
    let runs = bench
        .run(&planned, args.rounds)
        .map_err(|e| anyhow!("{e:#}\n{}", bench.lab.diagnostics()))?;
    let results: Vec<CaseResult> = planned
        .iter()
        .map(|p| {
            let of_case: Vec<&CaseResult> = runs.iter().filter(|r| r.label == p.label).collect();
            CaseResult::median(&of_case)
        })
        .collect();
    if args.rounds > 1 {
        println!(
            "\nEach figure below is the median of {} rounds (sums for errors and retransmits).",
            args.rounds
        );
    }
    bench.report(&results);
    if bench.compare_hooks {
        bench.report_hooks(&results);
    }
    let left: Vec<String> = planned
        .iter()
        .map(|p| {
            let most = runs
                .iter()
                .filter(|r| r.label == p.label)
                .map(|r| r.left_time_wait);
            format!("{} {}", p.label, most.max().unwrap_or(0))
        })
        .collect();
    println!(
        "\nTIME-WAIT sockets each case left in the client (most over rounds): {}",
        left.join(", ")
    );
    println!(
        "\nbench e2e: done in {:.0} s; the lab is being torn down",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What one measurement window saw besides the tool's own figures.
#[derive(Clone, Debug, Default)]
struct Window {
    /// CPU time spent over the window, all CPUs.
    cpu: CpuTimes,
    /// Packets each backend's link received (lab order).
    backend_rx: Vec<u64>,
    /// Packets the client's link sent.
    client_tx: u64,
    /// TCP counters over the window, summed over the client and the backends.
    tcp: TcpCounters,
    /// Packets the machine's CPUs dropped for a full input backlog.
    backlog_drops: u64,
    /// Time some runnable task waited for a CPU (/proc/pressure/cpu), µs.
    cpu_wait_us: u64,
    secs: f64,
}

impl Window {
    /// The first backend's share of the packets the backends received, in percent.
    fn first_share(&self) -> f64 {
        let total: u64 = self.backend_rx.iter().sum();
        if total == 0 {
            return 0.0;
        }
        100.0 * self.backend_rx[0] as f64 / total as f64
    }

    fn backend_rx_total(&self) -> u64 {
        self.backend_rx.iter().sum()
    }

    /// The TCP and backlog counters of the window, for a progress line.
    fn tcp_line(&self) -> String {
        format!(
            "TCP in client and backends: {} SYNs sent again, {} segments sent again, {} listen drops; {} backlog drops; a task waited for a CPU {:.0} % of the time",
            self.tcp.syn_retrans,
            self.tcp.retrans_segs,
            self.tcp.listen_drops,
            self.backlog_drops,
            self.cpu_wait_share()
        )
    }

    /// Percent of the window during which some runnable task waited for a CPU.
    fn cpu_wait_share(&self) -> f64 {
        if self.secs > 0.0 {
            self.cpu_wait_us as f64 / (self.secs * 1e4)
        } else {
            0.0
        }
    }
}

/// Counters at one instant.
struct Marks {
    at: Instant,
    cpu: CpuTimes,
    backends: Vec<LinkCounters>,
    client: LinkCounters,
    tcp: TcpCounters,
    backlog_drops: u64,
    cpu_wait_us: u64,
}

impl Marks {
    fn window_to(&self, end: &Marks) -> Window {
        Window {
            cpu: end.cpu.since(&self.cpu),
            backend_rx: self
                .backends
                .iter()
                .zip(&end.backends)
                .map(|(a, b)| b.rx_packets.saturating_sub(a.rx_packets))
                .collect(),
            client_tx: end.client.tx_packets.saturating_sub(self.client.tx_packets),
            tcp: end.tcp.since(&self.tcp),
            backlog_drops: end.backlog_drops.saturating_sub(self.backlog_drops),
            cpu_wait_us: end.cpu_wait_us.saturating_sub(self.cpu_wait_us),
            secs: end.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

struct Pps {
    sent: f64,
    forwarded: f64,
    /// Of all packets the client sent in the run, the percentage the backends received.
    forwarded_share: f64,
    /// CPU time of the gateway's NAPI thread per packet forwarded, in ns: the gateway's
    /// own cost, whatever else the machine runs (`None` if the thread was not found).
    gateway_ns: Option<f64>,
}

/// Everything one case measured.
struct CaseResult {
    case: Case,
    /// The row's name (`Run::label`).
    label: String,
    close: (Wrk, Window),
    keepalive: (Wrk, Window),
    iperf: (Iperf, Window),
    /// `None` where the balancer does not balance UDP (HAProxy).
    pps: Option<(Pps, Window)>,
    /// TIME-WAIT sockets the case left in the client.
    left_time_wait: u64,
}

/// The median of `xs` (0 for none).
fn med(xs: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.into_iter().collect();
    table::median(&v).unwrap_or(0.0)
}

fn med_duration(xs: impl IntoIterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(med(xs.into_iter().map(|d| d.as_secs_f64())))
}

impl Wrk {
    fn median(runs: &[&Wrk]) -> Wrk {
        Wrk {
            requests_per_sec: med(runs.iter().map(|w| w.requests_per_sec)),
            requests: runs.iter().map(|w| w.requests).sum(),
            p50: med_duration(runs.iter().map(|w| w.p50)),
            p99: med_duration(runs.iter().map(|w| w.p99)),
            errors: runs.iter().map(|w| w.errors).sum(),
        }
    }
}

impl Window {
    /// Counters and CPU time summed over the runs.
    fn merge(runs: &[&Window]) -> Window {
        let n = runs.iter().map(|w| w.backend_rx.len()).max().unwrap_or(0);
        Window {
            cpu: runs
                .iter()
                .fold(CpuTimes::default(), |acc, w| acc.plus(&w.cpu)),
            backend_rx: (0..n)
                .map(|i| runs.iter().filter_map(|w| w.backend_rx.get(i)).sum())
                .collect(),
            client_tx: runs.iter().map(|w| w.client_tx).sum(),
            tcp: runs
                .iter()
                .fold(TcpCounters::default(), |acc, w| acc.plus(&w.tcp)),
            backlog_drops: runs.iter().map(|w| w.backlog_drops).sum(),
            cpu_wait_us: runs.iter().map(|w| w.cpu_wait_us).sum(),
            secs: runs.iter().map(|w| w.secs).sum(),
        }
    }
}

impl CaseResult {
    /// One result from several rounds of the same case.
    fn median(runs: &[&CaseResult]) -> CaseResult {
        let wrk = |f: fn(&CaseResult) -> &(Wrk, Window)| {
            let w: Vec<&Wrk> = runs.iter().map(|r| &f(r).0).collect();
            let win: Vec<&Window> = runs.iter().map(|r| &f(r).1).collect();
            (Wrk::median(&w), Window::merge(&win))
        };
        let pps: Vec<&(Pps, Window)> = runs.iter().filter_map(|r| r.pps.as_ref()).collect();
        CaseResult {
            case: runs[0].case,
            label: runs[0].label.clone(),
            close: wrk(|r| &r.close),
            keepalive: wrk(|r| &r.keepalive),
            iperf: (
                Iperf {
                    bits_per_second: med(runs.iter().map(|r| r.iperf.0.bits_per_second)),
                    retransmits: runs.iter().map(|r| r.iperf.0.retransmits).sum(),
                },
                Window::merge(&runs.iter().map(|r| &r.iperf.1).collect::<Vec<_>>()),
            ),
            pps: (!pps.is_empty()).then(|| {
                (
                    Pps {
                        sent: med(pps.iter().map(|p| p.0.sent)),
                        forwarded: med(pps.iter().map(|p| p.0.forwarded)),
                        forwarded_share: med(pps.iter().map(|p| p.0.forwarded_share)),
                        gateway_ns: {
                            let g: Vec<f64> = pps.iter().filter_map(|p| p.0.gateway_ns).collect();
                            table::median(&g)
                        },
                    },
                    Window::merge(&pps.iter().map(|p| &p.1).collect::<Vec<_>>()),
                )
            }),
            left_time_wait: runs.iter().map(|r| r.left_time_wait).max().unwrap_or(0),
        }
    }
}

struct Bench {
    lab: Lab,
    /// Labs built so far (each case's lab has its own name).
    labs_made: u32,
    bins: Bins,
    one_lab: bool,
    programs: Programs,
    secs: u64,
    connections: u32,
    pool: Vec<Member>,
    /// Where the Keystone case being run attaches its program.
    hook: Hook,
    /// The backends are behind a bridge.
    bridged: bool,
    compare_hooks: bool,
}

impl Bench {
    /// The gateway devices Keystone's program is attached to.
    fn keystone_interfaces(&self) -> Vec<String> {
        match (self.bridged, self.hook.on) {
            (true, BridgeAttach::Bridge) => vec![GW_CLIENT_LINK.to_owned(), BRIDGE.to_owned()],
            _ => self.lab.gateway_interfaces(),
        }
    }

    fn weights_label(&self) -> String {
        self.pool
            .iter()
            .map(|m| format!("{} {}", m.name, m.weight))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Every case `rounds` times, every other round in reverse order, each in a fresh
    /// lab unless `one_lab`.
    fn run(&mut self, runs: &[Run], rounds: u32) -> Result<Vec<CaseResult>> {
        self.prepare()?;
        let mut results = Vec::new();
        for round in 1..=rounds {
            let mut order = runs.to_vec();
            if round % 2 == 0 {
                order.reverse();
            }
            for run in order {
                util::interrupted()?;
                if !self.one_lab && !results.is_empty() {
                    // The old lab goes (with everything it holds) once the new one is up.
                    self.lab = new_lab(&self.bins, self.labs_made, self.bridged)?;
                    self.labs_made += 1;
                    self.prepare()?;
                }
                self.check_plain_gateway()
                    .with_context(|| format!("before {}", run.label))?;
                if rounds > 1 {
                    println!("\n== {} (round {round} of {rounds}) ==", run.label);
                } else {
                    println!("\n== {} ==", run.label);
                }
                println!(
                    "starts from (lab {}): {}",
                    self.lab.name(),
                    Leftover::measure(&self.lab)?
                );
                self.hook = run.hook;
                results.push(self.run_case(&run)?);
            }
        }
        Ok(results)
    }

    fn run_case(&mut self, run: &Run) -> Result<CaseResult> {
        let (case, label) = (run.case, &run.label);
        self.start_case(case)
            .with_context(|| format!("starting {label}"))?;
        let mut r = self
            .measure(case)
            .with_context(|| format!("measuring {label}"))?;
        r.label = label.clone();
        self.end_case(case)
            .with_context(|| format!("stopping {label}"))?;
        let left = Leftover::measure(&self.lab)?;
        println!("left behind: {left}");
        r.left_time_wait = left.client_time_wait();
        Ok(r)
    }
}

/// The bench's lab: DSR needs the VIP on the backends' `lo` (and no ARP answers for
/// it); the other cases never send to the VIP past the gateway, so one layout serves
/// all. `n` makes each lab's name its own; `bridged` puts the backends behind a bridge.
fn new_lab(bins: &Bins, n: u32, bridged: bool) -> Result<Lab> {
    Ok(LabBuilder::new()
        .name(format!("bench-e2e-{}-{n}", std::process::id()))
        .mode(Mode::Dsr)
        .backends(&BACKENDS)
        .bridged(bridged)
        .bins(bins.clone())
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_two_positive_numbers() {
        assert_eq!(parse_weights("90/10"), Ok(Weights([90, 10])));
        for bad in ["50", "50/50/1", "a/1", "0/100", "300/1"] {
            let err = parse_weights(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn rounds_merge_into_medians_and_sums() {
        let wrk = |rps: f64, p99_ms: u64, errors: u64| Wrk {
            requests_per_sec: rps,
            requests: 10,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            errors,
        };
        let runs = [wrk(300.0, 9, 1), wrk(100.0, 3, 0), wrk(200.0, 5, 2)];
        let m = Wrk::median(&runs.iter().collect::<Vec<_>>());
        assert_eq!(m.requests_per_sec, 200.0);
        assert_eq!(m.p99, Duration::from_millis(5));
        assert_eq!((m.requests, m.errors), (30, 3));

        let win = |blue: u64, green: u64| Window {
            backend_rx: vec![blue, green],
            client_tx: blue + green,
            secs: 1.0,
            ..Window::default()
        };
        let merged = Window::merge(&[&win(30, 10), &win(50, 10)]);
        assert_eq!(merged.backend_rx, [80, 20]);
        assert_eq!(merged.first_share(), 80.0);
        assert_eq!((merged.client_tx, merged.secs), (100, 2.0));
    }
}
