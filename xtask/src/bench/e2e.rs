//! `cargo xtask bench e2e`: Keystone (`nat`, `dsr`) against what a Linux user would run
//! instead (nftables DNAT with weighted `numgen`, HAProxy in TCP mode) and against no
//! balancer at all, in one namespace lab: the same client, the same two backends (nginx
//! and iperf3 servers), one case after another. Each case measures new connections per
//! second and latency (wrk, `Connection: close`), keep-alive requests (wrk), throughput
//! (iperf3) and packets per second forwarded (trafgen, counted at the backends).
//!
//! Every case runs on a plain gateway: before each one the bench checks that no XDP
//! program, nftables rule or VIP address is left from the one before.

mod configs;
mod tools;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use keystone_lab::{
    Lab, LabBuilder, Mode, Probe, Protocol, Tenant, VIP4,
    cmd::{self, in_ns},
    lab::CLIENT4,
    wait_for,
};

use self::{
    configs::{Member, Ports},
    tools::{CpuTimes, Iperf, LinkCounters, Wrk},
};
use super::table::{self, Table, human, ratio};
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
enum Case {
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
    let lab = LabBuilder::new()
        .name(format!("bench-e2e-{}", std::process::id()))
        // DSR needs the VIP on the backends' `lo` (and no ARP answers for it); the
        // other cases never send to the VIP past the gateway, so one lab serves all.
        .mode(Mode::Dsr)
        .backends(&BACKENDS)
        .bins(util::bins()?)
        .build()?;
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
        programs,
        secs,
        connections: args.connections,
        pool,
    };
    println!(
        "bench e2e: lab {} (client {}, gateway {}, backends {}); {} s per measurement, weights {}, {} wrk connections",
        bench.lab.name(),
        bench.lab.client_ns(),
        bench.lab.gateway_ns(),
        BACKENDS.join(", "),
        secs,
        bench.weights_label(),
        args.connections
    );
    let runs = bench
        .run(&cases, args.rounds)
        .map_err(|e| anyhow!("{e:#}\n{}", bench.lab.diagnostics()))?;
    let results: Vec<CaseResult> = cases
        .iter()
        .map(|&c| {
            let of_case: Vec<&CaseResult> = runs.iter().filter(|r| r.case == c).collect();
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
}

/// Counters at one instant.
struct Marks {
    at: Instant,
    cpu: CpuTimes,
    backends: Vec<LinkCounters>,
    client: LinkCounters,
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
    close: (Wrk, Window),
    keepalive: (Wrk, Window),
    iperf: (Iperf, Window),
    /// `None` where the balancer does not balance UDP (HAProxy).
    pps: Option<(Pps, Window)>,
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
        }
    }
}

struct Bench {
    lab: Lab,
    programs: Programs,
    secs: u64,
    connections: u32,
    pool: Vec<Member>,
}

impl Bench {
    fn weights_label(&self) -> String {
        self.pool
            .iter()
            .map(|m| format!("{} {}", m.name, m.weight))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Every case `rounds` times, every other round in reverse order.
    fn run(&mut self, cases: &[Case], rounds: u32) -> Result<Vec<CaseResult>> {
        self.prepare()?;
        let mut results = Vec::new();
        for round in 1..=rounds {
            let mut order = cases.to_vec();
            if round % 2 == 0 {
                order.reverse();
            }
            for case in order {
                util::interrupted()?;
                self.check_plain_gateway()
                    .with_context(|| format!("before {}", case.label()))?;
                if rounds > 1 {
                    println!("\n== {} (round {round} of {rounds}) ==", case.label());
                } else {
                    println!("\n== {} ==", case.label());
                }
                results.push(self.run_case(case)?);
            }
        }
        Ok(results)
    }

    fn run_case(&mut self, case: Case) -> Result<CaseResult> {
        self.start_case(case)
            .with_context(|| format!("starting {}", case.label()))?;
        let r = self
            .measure(case)
            .with_context(|| format!("measuring {}", case.label()))?;
        self.end_case(case)
            .with_context(|| format!("stopping {}", case.label()))?;
        Ok(r)
    }

    /// Backends (nginx, iperf3 server, a sink for the generator's UDP), TCP settings
    /// for a client that opens tens of thousands of connections, and warm neighbours.
    fn prepare(&mut self) -> Result<()> {
        // Only locally opened connections use these (the client's; in the gateway only
        // HAProxy's to the backends): what anyone benchmarking either would set.
        for ns in [
            self.lab.client_ns().to_owned(),
            self.lab.gateway_ns().to_owned(),
        ] {
            self.lab.exec(
                &ns,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=1024 65535",
                ],
            )?;
        }
        for b in self.lab.backends().to_vec() {
            let dir = self.lab.state_dir().join(format!("nginx-{}", b.name));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir_s = dir.to_str().context("the lab's state dir is not UTF-8")?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, configs::nginx_config(&b.name, dir_s, PORTS.http))
                .with_context(|| format!("writing {}", conf.display()))?;
            let nginx = self.programs.nginx.clone();
            self.lab.spawn(
                &format!("nginx-{}", b.name),
                &b.ns,
                &nginx,
                &[
                    "-e".as_ref(),
                    dir.join("error.log").as_os_str(),
                    "-p".as_ref(),
                    dir.as_os_str(),
                    "-c".as_ref(),
                    conf.as_os_str(),
                ],
            )?;
            let iperf3 = self.programs.iperf3.clone();
            self.lab.spawn(
                &format!("iperf3-{}", b.name),
                &b.ns,
                &iperf3,
                &["--server", "--port", &PORTS.iperf.to_string()],
            )?;
            self.nft(
                &b.ns,
                &configs::udp_sink_ruleset(SINK_TABLE, LINK, PORTS.udp),
            )?;
        }
        for b in self.lab.backends().to_vec() {
            let url = format!("http://{}:{}/", b.ipv4, PORTS.http);
            let gw = self.lab.gateway_ns().to_owned();
            let nginx = format!("nginx-{}", b.name);
            wait_for(&format!("nginx in {} to answer", b.ns), READY, || {
                self.lab.ensure_running(&nginx)?;
                Ok(match http_get(&gw, &url) {
                    Ok(body) if body == b.name => Probe::Ready(()),
                    Ok(body) => Probe::NotYet(format!("answered {body:?}")),
                    Err(e) => Probe::NotYet(e.to_string()),
                })
            })?;
            let iperf = format!("iperf3-{}", b.name);
            let filter = format!("sport = :{}", PORTS.iperf);
            wait_for(&format!("iperf3 in {} to listen", b.ns), READY, || {
                self.lab.ensure_running(&iperf)?;
                let out = self.lab.exec(&b.ns, "ss", &["-Hltn", &filter])?;
                Ok(if out.trim().is_empty() {
                    Probe::NotYet("not listening".into())
                } else {
                    Probe::Ready(())
                })
            })?;
        }
        self.lab.warm_neighbours()?;
        Ok(())
    }

    /// `nft -f -` with `ruleset` inside `ns`.
    fn nft(&self, ns: &str, ruleset: &str) -> Result<()> {
        cmd::run_with_stdin(in_ns(ns, &self.programs.nft).args(["-f", "-"]), ruleset)
            .with_context(|| format!("loading into nftables in {ns}:\n{ruleset}"))?;
        Ok(())
    }

    /// No XDP program, no nftables ruleset and no VIP address in the gateway: what
    /// every case starts from, so none is helped or hurt by the one before.
    fn check_plain_gateway(&self) -> Result<()> {
        let gw = self.lab.gateway_ns();
        let xdp = self.xdp_interfaces()?;
        if !xdp.is_empty() {
            bail!(
                "an XDP program is still attached in the gateway on {}",
                xdp.join(", ")
            );
        }
        let rules = self
            .lab
            .exec(gw, &self.programs.nft, &["list", "ruleset"])?;
        if !rules.trim().is_empty() {
            bail!("the gateway still has nftables rules:\n{rules}");
        }
        let addrs = self.lab.exec(gw, "ip", &["-4", "-o", "addr", "show"])?;
        if addrs.contains(&format!(" {VIP4}/")) {
            bail!("the gateway still holds the VIP {VIP4}:\n{addrs}");
        }
        Ok(())
    }

    /// Gateway interfaces with an XDP program attached.
    fn xdp_interfaces(&self) -> Result<Vec<String>> {
        let out = cmd::run(std::process::Command::new("ip").args([
            "-j",
            "-n",
            self.lab.gateway_ns(),
            "link",
            "show",
        ]))?;
        let links: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("`ip -j link show`: {out}"))?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l.get("xdp").is_some())
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Where the client sends: the VIP, or for `direct` the first backend itself.
    fn target(&self, case: Case) -> Ipv4Addr {
        match case {
            Case::Direct => self.pool[0].addr,
            _ => VIP4,
        }
    }

    /// The agent's tenants, from the same backend list as the peers' configs.
    fn tenants(&self, mode: Mode) -> Result<Vec<Tenant>> {
        let weights: Vec<(&str, u32)> = self
            .pool
            .iter()
            .map(|m| (m.name.as_str(), m.weight))
            .collect();
        let first = [(self.pool[0].name.as_str(), 1)];
        let vip = |port| SocketAddr::new(IpAddr::V4(VIP4), port);
        Ok(vec![
            self.lab.tenant(
                "http",
                vip(PORTS.http),
                Protocol::Tcp,
                mode,
                PORTS.http,
                &weights,
            )?,
            self.lab.tenant(
                "iperf",
                vip(PORTS.iperf),
                Protocol::Tcp,
                mode,
                PORTS.iperf,
                &first,
            )?,
            self.lab.tenant(
                "udp",
                vip(PORTS.udp),
                Protocol::Udp,
                mode,
                PORTS.udp,
                &weights,
            )?,
        ])
    }

    fn start_case(&mut self, case: Case) -> Result<()> {
        let gw = self.lab.gateway_ns().to_owned();
        match case {
            Case::Direct => {}
            Case::Nat | Case::Dsr => {
                let mode = case.keystone_mode().expect("a Keystone case");
                let cfg = self.lab.agent_config(self.tenants(mode)?);
                self.lab.write_config(&cfg)?;
                self.lab.start_agent()?;
                let want = self.lab.gateway_interfaces();
                let xdp = self.xdp_interfaces()?;
                if let Some(missing) = want.iter().find(|i| !xdp.contains(i)) {
                    bail!("keystone-agent is up but {missing} has no XDP program");
                }
            }
            Case::Nftables => {
                let rules = configs::nft_ruleset(NFT_TABLE, VIP4, PORTS, &self.pool)?;
                self.nft(&gw, &rules)?;
            }
            Case::Haproxy => {
                self.lab.exec(
                    &gw,
                    "ip",
                    &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"],
                )?;
                let conf = self.lab.state_dir().join("haproxy.cfg");
                fs::write(&conf, configs::haproxy_config(VIP4, PORTS, &self.pool)?)
                    .with_context(|| format!("writing {}", conf.display()))?;
                let haproxy = self.programs.haproxy.clone();
                self.lab.exec(
                    &gw,
                    &haproxy,
                    &["-c".as_ref(), "-f".as_ref(), conf.as_os_str()],
                )?;
                self.lab.spawn(
                    "haproxy",
                    &gw,
                    &haproxy,
                    &["-db".as_ref(), "-f".as_ref(), conf.as_os_str()],
                )?;
            }
        }
        // The path works before anything is timed.
        let client = self.lab.client_ns().to_owned();
        let url = format!("http://{}:{}/", self.target(case), PORTS.http);
        let names: Vec<String> = self.pool.iter().map(|m| m.name.clone()).collect();
        wait_for(&format!("{url} to answer from the client"), READY, || {
            if case == Case::Haproxy {
                self.lab.ensure_running("haproxy")?;
            }
            Ok(match http_get(&client, &url) {
                Ok(body) if names.contains(&body) => Probe::Ready(()),
                Ok(body) => Probe::NotYet(format!("answered {body:?}")),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })?;
        Ok(())
    }

    fn end_case(&mut self, case: Case) -> Result<()> {
        let gw = self.lab.gateway_ns().to_owned();
        match case {
            Case::Direct => {}
            Case::Nat | Case::Dsr => {
                self.lab.stop_agent()?;
                wait_for("the agent's XDP program to be detached", READY, || {
                    Ok(match self.xdp_interfaces() {
                        Ok(xdp) if xdp.is_empty() => Probe::Ready(()),
                        Ok(xdp) => Probe::NotYet(format!("attached on {}", xdp.join(", "))),
                        Err(e) => Probe::NotYet(format!("{e:#}")),
                    })
                })?;
            }
            Case::Nftables => {
                self.lab.exec(
                    &gw,
                    &self.programs.nft,
                    &["delete", "table", "ip", NFT_TABLE],
                )?;
            }
            Case::Haproxy => {
                self.lab.stop("haproxy")?;
                self.lab.exec(
                    &gw,
                    "ip",
                    &["addr", "del", &format!("{VIP4}/32"), "dev", "lo"],
                )?;
            }
        }
        Ok(())
    }

    fn measure(&mut self, case: Case) -> Result<CaseResult> {
        let target = self.target(case);
        self.wrk(target, true, WARM_UP_SECS)?;
        let close = self.wrk(target, true, self.secs)?;
        println!(
            "new connection per request: {:.0} conn/s, p50 {}, p99 {}, {} errors; CPU {} (user/system/softirq/idle %)",
            close.0.requests_per_sec,
            human(close.0.p50),
            human(close.0.p99),
            close.0.errors,
            close.1.cpu
        );
        util::interrupted()?;
        let keepalive = self.wrk(target, false, self.secs)?;
        println!(
            "keep-alive: {:.0} req/s, p50 {}, p99 {}, {} errors; CPU {}",
            keepalive.0.requests_per_sec,
            human(keepalive.0.p50),
            human(keepalive.0.p99),
            keepalive.0.errors,
            keepalive.1.cpu
        );
        util::interrupted()?;
        let iperf = self.iperf(target)?;
        println!(
            "iperf3: {:.2} Gbit/s, {} retransmits; CPU {}",
            iperf.0.bits_per_second / 1e9,
            iperf.0.retransmits,
            iperf.1.cpu
        );
        util::interrupted()?;
        let pps = if case == Case::Haproxy {
            println!("packets/s: not measured (HAProxy does not balance UDP)");
            None
        } else {
            let p = self.pps(target)?;
            println!(
                "trafgen: {:.0} pps sent, {:.0} pps forwarded to the backends; CPU {}",
                p.0.sent, p.0.forwarded, p.1.cpu
            );
            Some(p)
        };
        Ok(CaseResult {
            case,
            close,
            keepalive,
            iperf,
            pps,
        })
    }

    fn link_counters(&self, ns: &str, dev: &str) -> Result<LinkCounters> {
        let out = cmd::run(
            std::process::Command::new("ip")
                .args(["-n", ns, "-j", "-s", "link", "show", "dev", dev]),
        )?;
        tools::parse_link_counters(&out)
    }

    fn marks(&self) -> Result<Marks> {
        let backends = self
            .lab
            .backends()
            .iter()
            .map(|b| self.link_counters(&b.ns, LINK))
            .collect::<Result<_>>()?;
        Ok(Marks {
            at: Instant::now(),
            cpu: CpuTimes::now()?,
            backends,
            client: self.link_counters(self.lab.client_ns(), LINK)?,
        })
    }

    /// `wrk` from the client for `secs` against `target`'s HTTP port; with `close`,
    /// every request on a new connection.
    fn wrk(&self, target: Ipv4Addr, close: bool, secs: u64) -> Result<(Wrk, Window)> {
        let url = format!("http://{target}:{}/", PORTS.http);
        let mut args: Vec<String> = [
            "-t",
            "2",
            "-c",
            &self.connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "2s",
            "--latency",
        ]
        .map(str::to_owned)
        .into();
        if close {
            args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
        }
        args.push(url);
        let before = self.marks()?;
        let out = self.bounded(self.lab.client_ns(), &self.programs.wrk, secs, &args)?;
        let window = before.window_to(&self.marks()?);
        let wrk = tools::parse_wrk(&out)?;
        if wrk.requests == 0 {
            bail!("wrk completed no request against {target}:\n{out}");
        }
        Ok((wrk, window))
    }

    /// One iperf3 TCP stream from the client to `target`'s iperf3 port (the first
    /// ramp-up second omitted).
    fn iperf(&self, target: Ipv4Addr) -> Result<(Iperf, Window)> {
        let args: Vec<String> = [
            "--client",
            &target.to_string(),
            "--port",
            &PORTS.iperf.to_string(),
            "--time",
            &self.secs.to_string(),
            "--omit",
            "1",
            "--connect-timeout",
            "3000",
            "--json",
        ]
        .map(str::to_owned)
        .into();
        let before = self.marks()?;
        let out = cmd::output(
            in_ns(self.lab.client_ns(), "timeout")
                .args(["-k", "5", &(self.secs + 20).to_string()])
                .arg(&self.programs.iperf3)
                .args(&args),
        )?;
        let window = before.window_to(&self.marks()?);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let iperf = tools::parse_iperf(&stdout).with_context(|| {
            format!(
                "iperf3 to {target} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok((iperf, window))
    }

    /// trafgen in the client sends 60-byte UDP frames to `target` as fast as one
    /// process can. The rate comes from a window of `secs` that opens once it sends;
    /// the share forwarded from the whole run, counted after the last packet landed.
    fn pps(&mut self, target: Ipv4Addr) -> Result<(Pps, Window)> {
        let gw_mac = mac(self.lab.gateway_ns(), GW_CLIENT_LINK)?;
        let client_mac = mac(self.lab.client_ns(), LINK)?;
        let conf = self.lab.state_dir().join("trafgen.cfg");
        fs::write(
            &conf,
            configs::trafgen_config(&gw_mac, &client_mac, CLIENT4, target, PORTS.udp, FLOWS),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        // Far more than one process sends in the window (the bench stops trafgen),
        // and yet a bound.
        let bound = (self.secs + 30) * 10_000_000;
        let client = self.lab.client_ns().to_owned();
        let trafgen = self.programs.trafgen.clone();
        let gw_napi = self.gateway_napi_thread()?;
        // A queue in front of the client's veth: when the gateway falls behind, veth
        // stops its queue and trafgen's frames wait or are dropped here (trafgen goes
        // on), instead of trafgen failing on a busy device.
        self.lab.exec(
            &client,
            "tc",
            &[
                "qdisc", "replace", "dev", LINK, "root", "pfifo", "limit", "10000",
            ],
        )?;
        let before = self.marks()?;
        let pid = self.lab.spawn(
            "trafgen",
            &client,
            &trafgen,
            &[
                "--dev".as_ref(),
                LINK.as_ref(),
                "--conf".as_ref(),
                conf.as_os_str(),
                "--cpus".as_ref(),
                "1".as_ref(),
                // Leave the host's socket memory sysctls and IRQ affinities alone.
                "--no-sock-mem".as_ref(),
                "--notouch-irq".as_ref(),
                // Blocking sendto(2) per frame (a gap of 0): it waits while the queue
                // is full, where the TX_RING path fails on a busy device.
                "--gap".as_ref(),
                "0".as_ref(),
                "--qdisc-path".as_ref(),
                "--num".as_ref(),
                bound.to_string().as_ref(),
            ],
        )?;
        let measured = (|| {
            wait_for("trafgen to send", READY, || {
                self.lab.ensure_running("trafgen")?;
                Ok(match self.link_counters(&client, LINK) {
                    Ok(c) if c.tx_packets > before.client.tx_packets + 10_000 => Probe::Ready(()),
                    Ok(c) => Probe::NotYet(format!(
                        "{} packets sent",
                        c.tx_packets.saturating_sub(before.client.tx_packets)
                    )),
                    Err(e) => Probe::NotYet(format!("{e:#}")),
                })
            })?;
            let begin = self.marks()?;
            let thread_begin = gw_napi.thread.map(tools::task_cpu_secs).transpose()?;
            let end_at = begin.at + Duration::from_secs(self.secs);
            // The window itself: the generator runs while the time passes.
            while Instant::now() < end_at {
                util::interrupted()?;
                self.lab.ensure_running("trafgen")?;
                thread::sleep((end_at - Instant::now()).min(Duration::from_millis(200)));
            }
            let thread_end = gw_napi.thread.map(tools::task_cpu_secs).transpose()?;
            let window = begin.window_to(&self.marks()?);
            let gateway_secs = thread_begin.zip(thread_end).map(|(a, b)| b - a);
            Ok::<_, anyhow::Error>((window, gateway_secs))
        })();
        // trafgen's sending processes are children of the one started, which only
        // waits for them: stop them first.
        for child in children_of(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        self.lab.stop("trafgen")?;
        self.restore_gateway_napi(gw_napi.gro_was_on)?;
        self.lab
            .exec(&client, "tc", &["qdisc", "del", "dev", LINK, "root"])?;
        let (window, gateway_secs) = measured?;
        let mut last = self.marks()?;
        wait_for("the last generated packets to land", READY, || {
            Ok(match self.marks() {
                Ok(now) => {
                    let settled = now.backends == last.backends;
                    last = now;
                    if settled {
                        Probe::Ready(())
                    } else {
                        Probe::NotYet("the backends still receive".into())
                    }
                }
                Err(e) => Probe::NotYet(format!("{e:#}")),
            })
        })?;
        let run = before.window_to(&last);
        let pps = Pps {
            sent: window.client_tx as f64 / window.secs,
            forwarded: window.backend_rx_total() as f64 / window.secs,
            forwarded_share: if run.client_tx > 0 {
                100.0 * run.backend_rx_total() as f64 / run.client_tx as f64
            } else {
                0.0
            },
            gateway_ns: gateway_secs
                .filter(|_| window.backend_rx_total() > 0)
                .map(|s| s * 1e9 / window.backend_rx_total() as f64),
        };
        Ok((pps, window))
    }

    /// Makes the gateway's receive side of the client link a NAPI instance polled by a
    /// kernel thread of its own (GRO on, which gives a veth NAPI without XDP, and
    /// `threaded`): the gateway's work then runs on whichever CPU the generator leaves
    /// free, instead of inline in the generator's system call, so the gateway can be
    /// the bottleneck, and that thread's CPU time is the gateway's cost. The same for
    /// every case.
    fn gateway_napi_thread(&self) -> Result<GatewayNapi> {
        let gw = self.lab.gateway_ns();
        let features = self.lab.exec(gw, "ethtool", &["-k", GW_CLIENT_LINK])?;
        let gro_was_on = features
            .lines()
            .any(|l| l.trim_start().starts_with("generic-receive-offload: on"));
        // Threads are named after the device only, and other labs have an eth-client
        // too: ours is the one that appears now.
        let before = napi_threads(GW_CLIENT_LINK);
        self.lab
            .exec(gw, "ethtool", &["-K", GW_CLIENT_LINK, "gro", "on"])?;
        let threaded = format!("echo 1 > /sys/class/net/{GW_CLIENT_LINK}/threaded");
        self.lab.exec(gw, "sh", &["-c", &threaded])?;
        let thread = wait_for(
            "the gateway's NAPI thread to start",
            Duration::from_secs(2),
            || {
                let new: Vec<u32> = napi_threads(GW_CLIENT_LINK)
                    .into_iter()
                    .filter(|p| !before.contains(p))
                    .collect();
                Ok(match new[..] {
                    [pid] => Probe::Ready(pid),
                    [] => Probe::NotYet("no new thread".into()),
                    _ => Probe::NotYet(format!("{} new threads: cannot tell ours", new.len())),
                })
            },
        );
        let thread = match thread {
            Ok(pid) => Some(pid),
            Err(e) => {
                eprintln!("bench e2e: no gateway CPU per packet in this case: {e}");
                None
            }
        };
        Ok(GatewayNapi { gro_was_on, thread })
    }

    fn restore_gateway_napi(&self, gro_was_on: bool) -> Result<()> {
        let gw = self.lab.gateway_ns();
        self.lab.exec(
            gw,
            "sh",
            &[
                "-c",
                &format!("echo 0 > /sys/class/net/{GW_CLIENT_LINK}/threaded"),
            ],
        )?;
        let flag = if gro_was_on { "on" } else { "off" };
        self.lab
            .exec(gw, "ethtool", &["-K", GW_CLIENT_LINK, "gro", flag])?;
        Ok(())
    }

    /// `program args…` in `ns`, killed if it runs 20 s past `secs`; its stdout.
    fn bounded(
        &self,
        ns: &str,
        program: &std::path::Path,
        secs: u64,
        args: &[String],
    ) -> Result<String> {
        let out = cmd::run(
            in_ns(ns, "timeout")
                .args(["-k", "5", &(secs + 20).to_string()])
                .arg(program)
                .args(args),
        )?;
        Ok(out)
    }

    fn report(&self, results: &[CaseResult]) {
        let find = |c: Case| results.iter().find(|r| r.case == c);
        let (nat, dsr) = (find(Case::Nat), find(Case::Dsr));
        let cpus = thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_head = "CPU usr/sys/irq/idle %";
        // Keystone's figure over this row's, for both modes (n/a where not run).
        let ratios = |f: &dyn Fn(&CaseResult) -> Option<f64>, r: &CaseResult| -> [String; 2] {
            [nat, dsr].map(|k| match (k.and_then(f), f(r)) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "n/a".into(),
            })
        };

        println!(
            "\n## New TCP connections per second: wrk, `Connection: close`, {} connections, {} s",
            self.connections, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "conn/s",
            "errors",
            &format!("{} share", self.pool[0].name),
            cpu_head,
            "CPU µs/conn",
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let conn = |r: &CaseResult| Some(r.close.0.requests_per_sec);
        for r in results {
            let [n, d] = ratios(&conn, r);
            t.row(&[
                r.case.label().to_owned(),
                thousands(r.close.0.requests_per_sec),
                r.close.0.errors.to_string(),
                format!("{:.1} %", r.close.1.first_share()),
                r.close.1.cpu.to_string(),
                per_unit(r.close.1.cpu.busy_secs() * 1e6, r.close.0.requests as f64),
                n,
                d,
            ]);
        }
        t.print();

        println!("\n## Request latency, new connection per request (same run; lower is better)");
        let mut t = Table::new(&["case", "p50", "p99", "nat p99 ÷ case", "dsr p99 ÷ case"]);
        let p99 = |r: &CaseResult| Some(r.close.0.p99.as_secs_f64());
        for r in results {
            let [n, d] = ratios(&p99, r);
            t.row(&[
                r.case.label().to_owned(),
                human(r.close.0.p50),
                human(r.close.0.p99),
                n,
                d,
            ]);
        }
        t.print();

        println!(
            "\n## Keep-alive requests: wrk, {} connections, {} s",
            self.connections, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "req/s",
            "p50",
            "p99",
            "errors",
            cpu_head,
            "nat ÷ case",
            "dsr ÷ case",
            "nat p99 ÷ case",
            "dsr p99 ÷ case",
        ]);
        let rps = |r: &CaseResult| Some(r.keepalive.0.requests_per_sec);
        let kp99 = |r: &CaseResult| Some(r.keepalive.0.p99.as_secs_f64());
        for r in results {
            let [n, d] = ratios(&rps, r);
            let [np, dp] = ratios(&kp99, r);
            t.row(&[
                r.case.label().to_owned(),
                thousands(r.keepalive.0.requests_per_sec),
                human(r.keepalive.0.p50),
                human(r.keepalive.0.p99),
                r.keepalive.0.errors.to_string(),
                r.keepalive.1.cpu.to_string(),
                n,
                d,
                np,
                dp,
            ]);
        }
        t.print();

        println!(
            "\n## Throughput: iperf3, one TCP stream to {}, {} s (first second omitted)",
            self.pool[0].name, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "Gbit/s",
            "retransmits",
            cpu_head,
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let bps = |r: &CaseResult| Some(r.iperf.0.bits_per_second);
        for r in results {
            let [n, d] = ratios(&bps, r);
            t.row(&[
                r.case.label().to_owned(),
                format!("{:.2}", r.iperf.0.bits_per_second / 1e9),
                r.iperf.0.retransmits.to_string(),
                r.iperf.1.cpu.to_string(),
                n,
                d,
            ]);
        }
        t.print();

        println!(
            "\n## Packets per second forwarded: trafgen, one process, {}-byte UDP frames over {FLOWS} flows, counted at the backends' links, {} s",
            configs::FRAME_BYTES,
            self.secs
        );
        let mut t = Table::new(&[
            "case",
            "sent pps",
            "forwarded pps",
            "forwarded %",
            cpu_head,
            "CPU ns/packet",
            "gateway ns/packet",
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let fwd = |r: &CaseResult| r.pps.as_ref().map(|p| p.0.forwarded);
        for r in results {
            let [n, d] = ratios(&fwd, r);
            match &r.pps {
                Some((p, w)) => t.row(&[
                    r.case.label().to_owned(),
                    thousands(p.sent),
                    thousands(p.forwarded),
                    format!("{:.1} %", p.forwarded_share),
                    w.cpu.to_string(),
                    per_unit(w.cpu.busy_secs() * 1e9, w.backend_rx_total() as f64),
                    p.gateway_ns
                        .map_or_else(|| "n/a".to_owned(), |ns| format!("{ns:.0}")),
                    n,
                    d,
                ]),
                None => t.row(&[
                    r.case.label().to_owned(),
                    "n/a (no UDP)".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    n,
                    d,
                ]),
            }
        }
        t.print();

        println!(
            "\nCPU: user/system/irq+softirq/idle, percent of all {cpus} CPUs of the machine over the measurement (/proc/stat);\n\
             client, gateway and backends share them. CPU µs/conn and ns/packet: busy CPU time of the whole machine\n\
             (client, gateway and backends together; on a quiet machine) per connection or per packet forwarded.\n\
             gateway ns/packet: CPU time of the kernel thread that polls the gateway's client link (the gateway's\n\
             forwarding work, up to handing each packet to a backend's link) per packet forwarded.\n\
             `x ÷ case`: Keystone's figure over the row's."
        );
        println!("\n## Targets (measured here, not asserted)");
        for k in [nat, dsr].into_iter().flatten() {
            let name = k.case.label();
            for (peer, target) in [(Case::Nftables, 1.1), (Case::Haproxy, 1.5)] {
                if let Some(p) = find(peer) {
                    let x = k.close.0.requests_per_sec / p.close.0.requests_per_sec;
                    println!(
                        "{name} ÷ {}, new connections/s: {x:.2}× (target ≥ {target:.1}×: {})",
                        peer.label(),
                        if x >= target { "met" } else { "missed" }
                    );
                }
            }
            if let Some(d) = find(Case::Direct) {
                let over =
                    100.0 * (k.close.0.p99.as_secs_f64() / d.close.0.p99.as_secs_f64() - 1.0);
                println!(
                    "{name} p99 vs direct, new connection per request: {over:+.1} % (target ≤ +10 %: {})",
                    if over <= 10.0 { "met" } else { "missed" }
                );
            }
        }
    }
}

/// What [`Bench::gateway_napi_thread`] changed and found.
struct GatewayNapi {
    gro_was_on: bool,
    /// The kernel thread polling the gateway's client link.
    thread: Option<u32>,
}

/// Pids of the NAPI kernel threads of devices named `dev` (in any namespace).
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Pids of the processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid …": comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .is_some_and(|ppid| ppid == pid.to_string())
            })
        })
        .collect()
}

/// `curl` from `ns`; the body, trimmed.
fn http_get(ns: &str, url: &str) -> Result<String> {
    let out = cmd::run(in_ns(ns, "curl").args(["-sS", "-m", "2", url]))?;
    Ok(out.trim().to_owned())
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let out = cmd::run(
        std::process::Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -j link show dev {dev}`: {out}"))?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{dev} in {ns} has no MAC address: {out}"))
}

/// `total / count` with one decimal, or n/a for no count.
fn per_unit(total: f64, count: f64) -> String {
    if count > 0.0 {
        format!("{:.1}", total / count)
    } else {
        "n/a".into()
    }
}

/// `12345.6` → `12,346`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12345.6), "12,346");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
