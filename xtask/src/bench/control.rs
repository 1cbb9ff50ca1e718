//! `cargo xtask bench control`: how fast an API call becomes the table the kernel
//! uses. The agent runs in a lab namespace; the bench reads the agent's pinned maps
//! itself and polls the VIP's entry (one map lookup per poll) until it flips, then
//! checks that the live table equals the one `keystone_common::maglev` predicts.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use keystone_api::{Accepted, DeployState, Deployment, Strategy, SwitchRequest, SwitchStrategy};
use keystone_common::{
    Endpoint, PROTO_TCP, VipInfo,
    maglev::{self, MaglevBackend},
};
use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, AgentConfig, HealthCheck, Lab, LabBuilder, Mode, Protocol, Service,
    SwitchConfig, Tenant, VIP4,
};

use super::{
    live::{self, Admin, InNetns, Pins},
    table::{Table, human, median, min, quantile, ratio},
};
use crate::{build, lab::BACKEND_PORT, util};

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions per case.
    #[arg(long, default_value_t = 7)]
    reps: usize,
}

/// The target: a weight change live within 5 ms for 1,000 backends at 65,537 entries.
const TARGET: Duration = Duration::from_millis(5);
const BACKEND_COUNTS: [u32; 3] = [2, 100, 1000];
const TABLE_SIZES: [u32; 2] = [65_537, 655_373];
const SMALL_TABLE: u32 = 1009;
const DEADLINE: Duration = Duration::from_secs(30);
/// The health check of the `hc` tenant's real backend.
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
const HEALTH_FALL: u32 = 2;

pub fn run(args: Args) -> Result<()> {
    build::build()?;
    let mut lab = LabBuilder::new()
        .name(format!("bctl{}", std::process::id()))
        .mode(Mode::Nat)
        .backends(&["blue", "green", "red"])
        .bins(util::bins()?)
        .build()?;
    lab.start_backends(BACKEND_PORT)?;
    measure(&mut lab, &args).map_err(|e| anyhow!("{e:#}\n{}", lab.diagnostics()))
}

fn ep(addr: SocketAddr) -> Endpoint {
    Endpoint::new(addr, PROTO_TCP)
}

/// `n` services that exist only in the table (no traffic is sent to them).
fn table_only_services(n: u32, weight_of_first: u32) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            name: format!("s{i}"),
            address: SocketAddr::new(IpAddr::from([198, 18, 200, 1]), 10_000 + i as u16),
            weight: if i == 0 { weight_of_first } else { 1 },
            environment: "web".into(),
            version: "1.0.0".into(),
            health: None,
        })
        .collect()
}

fn config(lab: &Lab, backends: u32, size: u32) -> Result<AgentConfig> {
    let web = Tenant {
        name: "web".into(),
        listen: SocketAddr::new(VIP4.into(), 80),
        protocol: Protocol::Tcp,
        mode: Mode::Nat,
        strategy: Strategy::Canary,
        services: table_only_services(backends, 1),
        canary: None,
        active_environment: None,
        switch: None,
        ring_size: Some(size),
    };
    let mut bg = lab
        .tenant(
            "bg",
            SocketAddr::new(VIP4.into(), 81),
            Protocol::Tcp,
            Mode::Nat,
            BACKEND_PORT,
            &[("blue", 1), ("green", 1)],
        )?
        .blue_green("blue", SwitchConfig::instant());
    bg.ring_size = Some(SMALL_TABLE);
    let mut hc = lab.tenant(
        "hc",
        SocketAddr::new(VIP4.into(), 82),
        Protocol::Tcp,
        Mode::Nat,
        BACKEND_PORT,
        &[("red", 1)],
    )?;
    hc.services[0].health = Some(HealthCheck {
        path: None,
        interval: format!("{}ms", HEALTH_INTERVAL.as_millis()),
        timeout: "150ms".into(),
        success_threshold: 1,
        failure_threshold: HEALTH_FALL,
    });
    // A second backend without a health check keeps the table non-empty.
    let mut other = table_only_services(1, 1).remove(0);
    other.address = SocketAddr::new(IpAddr::from([198, 18, 200, 2]), 9999);
    other.name = "spare".into();
    hc.services.push(other);
    hc.ring_size = Some(SMALL_TABLE);
    let mut cfg = lab.agent_config(vec![web, bg, hc]);
    let largest = *TABLE_SIZES.iter().max().expect("sizes");
    cfg.limits = vec![
        ("max_backends".into(), 2048),
        // Two tables per VIP, and room for `web` to change size on reload.
        ("ring_entries".into(), 4 * largest + 8 * SMALL_TABLE),
    ];
    Ok(cfg)
}

fn vip(port: u16) -> Endpoint {
    ep(SocketAddr::new(VIP4.into(), port))
}

/// Where the VIP's live table is: a flip changes it.
fn place(info: Option<VipInfo>) -> Option<(u32, u32, u32)> {
    info.map(|i| (i.ring_slot, i.ring_base, i.ring_size))
}

fn summary_row(
    t: &mut Table,
    case: &str,
    samples: &[Duration],
    target: Option<Duration>,
    floor: f64,
) {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let med = median(&ms).unwrap_or(0.0);
    let fmt = |v: Option<f64>| v.map_or("n/a".into(), |v| human(Duration::from_secs_f64(v / 1e3)));
    t.row(&[
        case.to_owned(),
        samples.len().to_string(),
        fmt(min(&ms)),
        fmt(Some(med)),
        fmt(quantile(&ms, 0.99)),
        target.map_or("".into(), |d| ratio(med, d.as_secs_f64() * 1e3)),
        ratio(med, floor),
    ]);
}

fn measure(lab: &mut Lab, args: &Args) -> Result<()> {
    let first = config(lab, BACKEND_COUNTS[0], TABLE_SIZES[0])?;
    lab.write_config(&first)?;
    let started = Instant::now();
    lab.start_agent()?;
    println!("bench control: agent ready in {}", human(started.elapsed()));
    println!(
        "bench control: load average at the start: {}",
        load_average()
    );
    let pins = Pins::open(&lab.pin_dir())?;
    let netns = InNetns::enter(lab.gateway_ns())?;
    let mut admin = Admin::connect(ADMIN_LISTEN, ADMIN_TOKEN)?;

    // The floor: an API call that changes nothing, on the same connection.
    let mut floor = Vec::new();
    for _ in 0..(args.reps * 4).max(20) {
        let t0 = Instant::now();
        admin.ok("GET", "/status", None)?;
        floor.push(t0.elapsed());
    }
    let floor_ms: Vec<f64> = floor.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let floor_med = median(&floor_ms).unwrap_or(0.0);
    let resolution = live::lookup_cost(&pins, &vip(80), 20_000);
    println!(
        "bench control: polling resolution {} per poll (one VIPS lookup and a yield, in a loop)",
        human(resolution)
    );

    let mut t = Table::new(&[
        "case",
        "n",
        "min",
        "median",
        "p99",
        "vs target 5 ms",
        "vs floor (GET /status)",
    ]);
    summary_row(
        &mut t,
        "floor: GET /status (answer)",
        &floor,
        None,
        floor_med,
    );

    let mut builds = Vec::new();
    for &backends in &BACKEND_COUNTS {
        for &size in &TABLE_SIZES {
            let cfg = config(lab, backends, size)?;
            lab.write_config(&cfg)?;
            admin.ok("POST", "/admin/reload", None)?;
            live::poll_vip(&pins, &vip(80), DEADLINE, |i| {
                i.is_some_and(|i| i.ring_size == size)
            })?;
            let changes = weight_changes(&pins, &mut admin, backends, size, args.reps)?;
            let case = format!("weights → live: {backends} backends, {size} entries");
            let target = (backends == 1000 && size == 65_537).then_some(TARGET);
            summary_row(&mut t, &case, &changes.live, target, floor_med);
            summary_row(&mut t, "  API answered", &changes.answered, None, floor_med);
            summary_row(
                &mut t,
                "  Maglev build alone (bench process)",
                &changes.build,
                None,
                floor_med,
            );
            for (stage, samples) in STAGES.iter().zip(&changes.stages) {
                summary_row(
                    &mut t,
                    &format!("  API stage: {stage}"),
                    samples,
                    None,
                    floor_med,
                );
            }
            summary_row(
                &mut t,
                "  HTTP + polling (live − queue − check − apply)",
                &changes.outside,
                None,
                floor_med,
            );
            for (phase, samples) in PHASES.iter().zip(&changes.phases) {
                summary_row(
                    &mut t,
                    &format!("  agent: {phase}"),
                    samples,
                    None,
                    floor_med,
                );
            }
            builds.push((case.clone(), changes.build_before, changes.build));
            let written: Vec<f64> = changes.written.iter().map(|&w| w as f64).collect();
            t.row(&[
                "  ring entries the agent rewrites (median)".to_owned(),
                written.len().to_string(),
                String::new(),
                format!("{:.0}", median(&written).unwrap_or(0.0)),
            ]);
        }
    }

    let flips = blue_green(&pins, &mut admin, lab, args.reps)?;
    summary_row(
        &mut t,
        "blue/green switch → VIP flipped",
        &flips,
        None,
        floor_med,
    );
    drop(admin);
    drop(netns);

    let removals = health_removal(&pins, lab, args.reps)?;
    let bound = HEALTH_INTERVAL * HEALTH_FALL;
    summary_row(
        &mut t,
        &format!(
            "backend stopped → out of the live table (interval {} × fall {HEALTH_FALL})",
            human(HEALTH_INTERVAL)
        ),
        &removals,
        None,
        floor_med,
    );
    t.print();
    print_builds(&builds);
    println!("bench control: load average at the end: {}", load_average());
    let ms: Vec<f64> = removals.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!(
        "health removal median vs interval × fall ({}): {}",
        human(bound),
        ratio(median(&ms).unwrap_or(0.0), bound.as_secs_f64() * 1e3)
    );
    Ok(())
}

/// The phases of `keystone_dataplane_last_apply_seconds`, in order.
const PHASES: [&str; 5] = ["prepare", "build", "write", "flip", "finish"];

/// The stages of `keystone_api_last_change_seconds` (without a fleet), in order:
/// `save` and `apply` overlap, `commit` is their wall time.
const STAGES: [&str; 6] = ["queue", "check", "save", "apply", "commit", "answer"];

/// `family{label="key"}` for each of `keys`, from the agent's `/metrics`.
fn metric_values<const N: usize>(
    metrics: &str,
    family: &str,
    label: &str,
    keys: &[&str; N],
) -> Result<[Duration; N]> {
    let mut values = [Duration::ZERO; N];
    for (key, d) in keys.iter().zip(&mut values) {
        let name = format!("{family}{{{label}=\"{key}\"}} ");
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .with_context(|| format!("/metrics has no {name}"))?;
        *d = Duration::from_secs_f64(
            value
                .trim()
                .parse()
                .with_context(|| format!("{name}{value}"))?,
        );
    }
    Ok(values)
}

/// The Maglev build before (`maglev::build_scan`) and now (`maglev::build`), timed
/// alternately in the bench process on each change's table.
fn print_builds(builds: &[(String, Vec<Duration>, Vec<Duration>)]) {
    let mut t = Table::new(&[
        "Maglev build in the bench process",
        "n",
        "before (scan)",
        "now",
        "now / before",
    ]);
    for (case, before, now) in builds {
        let ms = |d: &[Duration]| {
            median(&d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let (b, n) = (ms(before), ms(now));
        let fmt = |v: f64| human(Duration::from_secs_f64(v / 1e3));
        t.row(&[
            case.trim_start_matches("weights → live: ").to_owned(),
            now.len().to_string(),
            fmt(b),
            fmt(n),
            ratio(n, b),
        ]);
    }
    t.print();
}

/// `/proc/loadavg`'s first three fields: how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// What `weight_changes` measured, one sample per change.
struct Changes {
    /// API call sent → VIP entry flipped.
    live: Vec<Duration>,
    /// API call sent → answer read.
    answered: Vec<Duration>,
    /// The Maglev build of the same table in the bench process.
    build: Vec<Duration>,
    /// The same with the build as it was before (`maglev::build_scan`).
    build_before: Vec<Duration>,
    /// The agent's own account of each change, per phase (`PHASES`).
    phases: [Vec<Duration>; PHASES.len()],
    /// The same per stage of the API call (`STAGES`).
    stages: [Vec<Duration>; STAGES.len()],
    /// API call → live minus the agent's stages before the flip.
    outside: Vec<Duration>,
    /// Entries that differ from the table two changes before, which the inactive
    /// stripe holds: what the agent writes, one map update each.
    written: Vec<usize>,
}

/// Changes the first backend's weight (2, 3, …: each a new table) and times API call
/// → flip; checks each live table against the prediction. Two changes first are not
/// counted: after a table-size change both stripes are empty (a full write).
fn weight_changes(
    pins: &Pins,
    admin: &mut Admin,
    backends: u32,
    size: u32,
    reps: usize,
) -> Result<Changes> {
    const WARM_UP: usize = 2;
    let web = vip(80);
    let mut c = Changes {
        live: Vec::new(),
        answered: Vec::new(),
        build: Vec::new(),
        build_before: Vec::new(),
        phases: Default::default(),
        stages: Default::default(),
        outside: Vec::new(),
        written: Vec::new(),
    };
    let mut tables: Vec<Vec<Endpoint>> = Vec::new();
    for r in 0..reps + WARM_UP {
        let weight = 2 + r as u32;
        let services = table_only_services(backends, weight);
        let body = serde_json::json!({
            "weights": services.iter().map(|s| (s.name.clone(), s.weight)).collect::<std::collections::BTreeMap<_, _>>()
        })
        .to_string();
        let before = place(pins.vip(&web));
        let t0 = Instant::now();
        admin.send("POST", "/tenants/web/weights", Some(&body))?;
        let (flipped, _) = live::poll_vip(pins, &web, DEADLINE, |i| place(i) != before)?;
        let (status, text) = admin.receive()?;
        let t_answer = t0.elapsed();
        if status != 200 {
            bail!("POST /tenants/web/weights: HTTP {status}: {text}");
        }
        let info = pins.vip(&web).context("web VIP gone")?;
        let weights: Vec<(Endpoint, u32)> =
            services.iter().map(|s| (ep(s.address), s.weight)).collect();
        // Before and now alternate which goes first (caches, frequency).
        let timed = |build: fn(&[MaglevBackend], u32) -> Vec<u32>| {
            let b0 = Instant::now();
            let table = live::predicted_table_by(build, &weights, size);
            (table, b0.elapsed())
        };
        let ((want, build), (scanned, build_before)) = if r % 2 == 0 {
            (timed(maglev::build), timed(maglev::build_scan))
        } else {
            let before = timed(maglev::build_scan);
            (timed(maglev::build), before)
        };
        if scanned != want {
            bail!("maglev::build and maglev::build_scan differ for {backends} backends × {size}");
        }
        let metrics = admin.ok("GET", "/metrics", None)?;
        let phases = metric_values(
            &metrics,
            "keystone_dataplane_last_apply_seconds",
            "phase",
            &PHASES,
        )?;
        let stages = metric_values(
            &metrics,
            "keystone_api_last_change_seconds",
            "stage",
            &STAGES,
        )?;
        if pins.live_table(&info)? != want {
            bail!(
                "the live table of web ({backends} backends, weight {weight}) differs from the Maglev prediction"
            );
        }
        if r >= WARM_UP {
            c.live.push(flipped - t0);
            c.answered.push(t_answer);
            c.build.push(build);
            c.build_before.push(build_before);
            for (samples, d) in c.phases.iter_mut().zip(phases) {
                samples.push(d);
            }
            for (samples, d) in c.stages.iter_mut().zip(stages) {
                samples.push(d);
            }
            // Before the flip the agent spent queue + check + apply (which ends just
            // after it): the rest of API call → live is HTTP and the bench's polling.
            let [queue, check, _, apply, ..] = stages;
            c.outside
                .push((flipped - t0).saturating_sub(queue + check + apply));
            let two_before = &tables[r - 2];
            c.written
                .push(two_before.iter().zip(&want).filter(|(a, b)| a != b).count());
        }
        tables.push(want);
    }
    Ok(c)
}

/// Switches `bg` between blue and green; times API call → VIP flipped, checks the
/// live table is all the new side, and waits for each switch to finish.
fn blue_green(pins: &Pins, admin: &mut Admin, lab: &Lab, reps: usize) -> Result<Vec<Duration>> {
    let bg = vip(81);
    let side = |name: &str| -> Result<Endpoint> {
        let b = lab.backend(name)?;
        Ok(ep(SocketAddr::new(b.ipv4.into(), BACKEND_PORT)))
    };
    let mut flips = Vec::new();
    for r in 0..reps {
        let (from, to) = if r % 2 == 0 {
            ("blue", "green")
        } else {
            ("green", "blue")
        };
        let body = serde_json::to_string(&SwitchRequest {
            service: "bg".into(),
            from: Some(from.into()),
            to: to.into(),
            strategy: Some(SwitchStrategy::Instant),
            ..SwitchRequest::default()
        })?;
        let before = place(pins.vip(&bg));
        let t0 = Instant::now();
        admin.send("POST", "/deployments/blue-green/switch", Some(&body))?;
        let (flipped, _) = live::poll_vip(pins, &bg, DEADLINE, |i| place(i) != before)?;
        flips.push(flipped - t0);
        let (status, text) = admin.receive()?;
        if status != 202 {
            bail!("switch {from} → {to}: HTTP {status}: {text}");
        }
        let id = serde_json::from_str::<Accepted>(&text)?.deployment_id;
        let info = pins.vip(&bg).context("bg VIP gone")?;
        let want = side(to)?;
        if pins.live_table(&info)?.iter().any(|e| *e != want) {
            bail!("after the switch to {to} the live table of bg is not all {to}");
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let d: Deployment =
                serde_json::from_str(&admin.ok("GET", &format!("/deployments/{id}"), None)?)?;
            if d.state == DeployState::Completed {
                break;
            }
            if !d.is_running() {
                bail!("switch {from} → {to} ended {}", d.summary());
            }
            if Instant::now() > deadline {
                bail!("switch {from} → {to} still {} after {DEADLINE:?}", d.state);
            }
        }
    }
    Ok(flips)
}

/// Stops `red` (the `hc` tenant's health-checked backend) and times until its
/// entries leave the live table; restarts it and waits until it is back.
fn health_removal(pins: &Pins, lab: &mut Lab, reps: usize) -> Result<Vec<Duration>> {
    let hc = vip(82);
    let b = lab.backend("red")?;
    let red = ep(SocketAddr::new(b.ipv4.into(), BACKEND_PORT));
    let has_red = |pins: &Pins| -> Result<Option<bool>> {
        let Some(info) = pins.vip(&hc) else {
            return Ok(None);
        };
        Ok(Some(pins.live_table(&info)?.contains(&red)))
    };
    let mut removals = Vec::new();
    for _ in 0..reps {
        let deadline = Instant::now() + DEADLINE;
        while has_red(pins)? != Some(true) {
            if Instant::now() > deadline {
                bail!("red did not come back into the hc table");
            }
        }
        let before = place(pins.vip(&hc));
        lab.stop_backend("red")?;
        let t0 = Instant::now();
        let mut seen = before;
        loop {
            let (flipped, _) = live::poll_vip(pins, &hc, DEADLINE, |i| place(i) != seen)?;
            seen = place(pins.vip(&hc));
            if has_red(pins)? == Some(false) {
                removals.push(flipped - t0);
                break;
            }
        }
        lab.start_backend("red", BACKEND_PORT)?;
    }
    Ok(removals)
}
