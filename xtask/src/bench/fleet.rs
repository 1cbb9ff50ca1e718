//! `cargo xtask bench fleet`: what a gateway leaving or joining a fleet costs, with
//! the agents announcing (agent → routes file → `birdc configure` → BGP → the
//! router's ECMP route; BFD 100 ms × 3). In the fleet lab (a router running BIRD in
//! front of three gateways, backends blue 40, green 30, red 30), under held echo
//! connections and new connections without pause, each round runs: a drain
//! (`keystone-ctl drain`, then `undrain`), a hard kill (links down, then SIGKILL to
//! agent and BIRD), a join (the killed gateway's BIRD back, then its agent), and a
//! churn (every gateway reloads without red, then a gateway is killed hard; then all
//! is restored). Per round and as medians; printed, not asserted.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use keystone_lab::{Churn, Fleet, FleetBuilder, LoadReport, VIP4};

use super::table::{Table, human, median, ratio};
use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Which fleet to measure: behind a BGP router (`bgp`), through etcd (`etcd`), or both.
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Measure the release binaries as they are (no `cargo xtask build` first).
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    etcd: super::fleet_etcd::Args,
    /// Held echo connections during each event.
    #[arg(long, default_value_t = 100)]
    held: u32,
    /// Rounds of every event (figures per round, then medians); through etcd, the
    /// leader failovers timed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const WEIGHTS: &[(&str, u32)] = &[("blue", 40), ("green", 30), ("red", 30)];
/// The backends a churn keeps (red leaves the config).
const KEPT: &[&str] = &["blue", "green"];
const ALL: &[usize] = &[1, 2, 3];
/// The gateway drained, and the one killed (and joining again).
const DRAINED: usize = 2;
const KILLED: usize = 3;
const LOAD: Duration = Duration::from_secs(180);
const ROUTER: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    Bgp,
    Etcd,
    All,
}

pub fn run(args: Args) -> Result<()> {
    if !args.no_build {
        build::build()?;
    }
    if args.part != Part::Bgp {
        super::fleet_etcd::run(&args.etcd, args.rounds)?;
    }
    if args.part == Part::Etcd {
        return Ok(());
    }
    let mut fleet = FleetBuilder::new()
        .name(format!("bfleet{}", std::process::id()))
        .bins(util::bins()?)
        .backends(&["blue", "green", "red"])
        .build()?;
    measure(&mut fleet, &args).map_err(|e| anyhow!("{e:#}\n{}", fleet.diagnostics()))
}

/// One event's figures.
struct Event {
    name: &'static str,
    /// What the event's time runs to, and how long it took.
    until: &'static str,
    took: Duration,
    /// The same run's baseline for `took`, if the event has one.
    baseline: Option<(&'static str, Duration)>,
    report: LoadReport,
}

/// One round: every event once.
struct Round {
    events: Vec<Event>,
    churn: Churn,
}

fn measure(fleet: &mut Fleet, args: &Args) -> Result<()> {
    let load_before = util::loadavg();
    fleet.start_web(WEIGHTS, ALL)?;
    let vip = SocketAddr::new(VIP4.into(), 80);
    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        let events = vec![
            drain(fleet, vip, args)?,
            leave(fleet, vip, args)?,
            join(fleet, vip, args)?,
        ];
        let churn = churn(fleet, args)?;
        let round = Round { events, churn };
        print_round(r, &round, args);
        rounds.push(round);
    }
    print_medians(&rounds, args);
    println!(
        "machine load (1, 5, 15 min): {load_before} at the start, {} at the end",
        util::loadavg()
    );
    Ok(())
}

/// `keystone-ctl drain` on a gateway (it returns once drained), then `undrain`.
fn drain(fleet: &mut Fleet, vip: SocketAddr, args: &Args) -> Result<Event> {
    let load = fleet.start_load(vip, args.held, LOAD)?;
    let t = Instant::now();
    ctl(fleet, DRAINED, "drain")?;
    let drained = t.elapsed();
    let others: Vec<usize> = ALL.iter().copied().filter(|&i| i != DRAINED).collect();
    fleet.wait_vip_next_hops(VIP4.into(), &others, ROUTER)?;
    let event = Event {
        name: "drain (keystone-ctl drain)",
        until: "drained",
        took: drained,
        baseline: None,
        report: load.finish(fleet, t)?,
    };
    ctl(fleet, DRAINED, "undrain")?;
    fleet.wait_announced(ALL)?;
    Ok(event)
}

fn ctl(fleet: &Fleet, i: usize, verb: &str) -> Result<()> {
    let out = fleet.gateway(i).ctl(&[verb])?;
    if !out.status.success() {
        bail!("keystone-ctl {verb} on gateway {i}: {out:?}");
    }
    Ok(())
}

/// A gateway killed hard; BFD's detection (the router's BIRD shows the session
/// down) is the baseline of the router's withdraw.
fn leave(fleet: &mut Fleet, vip: SocketAddr, args: &Args) -> Result<Event> {
    let load = fleet.start_load(vip, args.held, LOAD)?;
    let t = Instant::now();
    fleet.kill_gateway(KILLED)?;
    let bfd_down = fleet.wait_bfd_down(KILLED, ROUTER)?;
    let others: Vec<usize> = ALL.iter().copied().filter(|&i| i != KILLED).collect();
    let withdrawn = fleet.wait_vip_next_hops(VIP4.into(), &others, ROUTER)?;
    Ok(Event {
        name: "leave (links down, SIGKILL)",
        until: "router withdrew",
        took: withdrawn - t,
        baseline: Some(("BFD down", bfd_down - t)),
        report: load.finish(fleet, withdrawn)?,
    })
}

/// The killed gateway back: its links and BIRD (peering again), then its agent,
/// timed from the agent's start.
fn join(fleet: &mut Fleet, vip: SocketAddr, args: &Args) -> Result<Event> {
    fleet.revive_gateway(KILLED)?;
    let load = fleet.start_load(vip, args.held, LOAD)?;
    let t = Instant::now();
    fleet.start_web_agent(KILLED, WEIGHTS)?;
    let joined = fleet.wait_announced(ALL)?;
    Ok(Event {
        name: "join (agent start)",
        until: "router added it",
        took: joined - t,
        baseline: None,
        report: load.finish(fleet, t)?,
    })
}

/// Red removed on every gateway and a gateway killed at once; then everything back
/// (the gateway revived with the full config, the others reloaded with it).
fn churn(fleet: &mut Fleet, args: &Args) -> Result<Churn> {
    let churn = fleet.churn(WEIGHTS, KEPT, KILLED, args.held)?;
    fleet.revive_gateway(KILLED)?;
    fleet.start_web_agent(KILLED, WEIGHTS)?;
    for i in ALL.iter().copied().filter(|&i| i != KILLED) {
        let gw = fleet.gateway(i);
        gw.write_config_text(&fleet.web_config(i, WEIGHTS)?)?;
        gw.reload()?;
    }
    fleet.wait_announced(ALL)?;
    Ok(churn)
}

const HEADER: &[&str] = &[
    "event",
    "until",
    "took",
    "baseline",
    "ratio",
    "held broken",
    "new tried",
    "new failed",
    "new failed after",
];

fn print_round(r: usize, round: &Round, args: &Args) {
    let mut table = Table::new(HEADER);
    for e in &round.events {
        let (base, vs) = match e.baseline {
            Some((what, d)) => (
                format!("{what} {}", human(d)),
                ratio(e.took.as_secs_f64(), d.as_secs_f64()),
            ),
            None => (String::new(), String::new()),
        };
        table.row(&[
            e.name.to_owned(),
            e.until.to_owned(),
            human(e.took),
            base,
            vs,
            format!("{} of {}", e.report.held_broken.len(), e.report.held),
            e.report.new_attempted.to_string(),
            e.report.new_failed.to_string(),
            e.report.new_failed_after.to_string(),
        ]);
    }
    println!(
        "\nround {r} of {}: fleet of 3 gateways, {} held echo connections per event",
        args.rounds, args.held
    );
    println!("{}", table.render());
    for e in round.events.iter().filter(|e| !e.report.errors.is_empty()) {
        println!("{}: failures {:?}", e.name, e.report.errors);
    }
    println!(
        "churn (red removed, gateway {KILLED} killed): {}",
        round.churn.line()
    );
}

fn print_medians(rounds: &[Round], args: &Args) {
    let secs = |f: &dyn Fn(&Event) -> Option<Duration>, i: usize| -> Option<f64> {
        let v: Vec<f64> = rounds
            .iter()
            .filter_map(|r| f(&r.events[i]).map(|d| d.as_secs_f64()))
            .collect();
        median(&v)
    };
    let mut table = Table::new(HEADER);
    for (i, e) in rounds[0].events.iter().enumerate() {
        let took = secs(&|e| Some(e.took), i).unwrap_or_default();
        let base = secs(&|e| e.baseline.map(|b| b.1), i);
        let sum = |f: fn(&LoadReport) -> u64| -> u64 {
            rounds.iter().map(|r| f(&r.events[i].report)).sum()
        };
        table.row(&[
            e.name.to_owned(),
            e.until.to_owned(),
            human(Duration::from_secs_f64(took)),
            base.map_or(String::new(), |b| {
                format!(
                    "{} {}",
                    e.baseline.map_or("", |b| b.0),
                    human(Duration::from_secs_f64(b))
                )
            }),
            base.map_or(String::new(), |b| ratio(took, b)),
            format!(
                "{} of {}",
                sum(|r| r.held_broken.len() as u64),
                sum(|r| u64::from(r.held))
            ),
            sum(|r| r.new_attempted).to_string(),
            sum(|r| r.new_failed).to_string(),
            sum(|r| r.new_failed_after).to_string(),
        ]);
    }
    println!(
        "\nmedians of {} rounds (times), counts summed over the rounds ({} held per event):",
        rounds.len(),
        args.held
    );
    println!("{}", table.render());
    let mut churn = Table::new(&["churn: held flows", "flows", "broken"]);
    for (k, (what, _)) in rounds[0].churn.by_cause().iter().enumerate() {
        let (flows, broken) = rounds.iter().fold((0, 0), |(f, b), r| {
            let c = r.churn.by_cause()[k].1;
            (f + c.flows, b + c.broken)
        });
        churn.row(&[(*what).to_owned(), flows.to_string(), broken.to_string()]);
    }
    println!(
        "churn (red removed on every gateway, then gateway {KILLED} killed), summed over the rounds:"
    );
    println!("{}", churn.render());
}
