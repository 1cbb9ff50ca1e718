//! `cargo xtask bench scale`: kernel memory per tracked flow and per VIP, 1,000,000
//! tracked flows, and 1,000 VIPs × 100 backends (memory, load time, agent RSS), each
//! against a baseline of 1 VIP × 2 backends at the default limits, in one run. The
//! agent runs in a lab namespace; memory is what the kernel accounts for each map of
//! the pinned program (`memlock` in its fdinfo), plus the change of /proc/meminfo's
//! kernel lines.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    maps::{HashMap, Map, MapData, MapInfo},
    programs::{ProgramInfo, TestRun, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use keystone_api::Strategy;
use keystone_common::{FlowKey, FlowState, names};
use keystone_lab::{AgentConfig, Lab, LabBuilder, Mode, Protocol, Service, Tenant, VIP4};

use super::{
    live::{self, InNetns, Pins},
    table::{Table, human, ratio},
};
use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Flows to put in the connection table.
    #[arg(long, default_value_t = 1_000_000)]
    flows: u32,
    /// VIPs in the large case.
    #[arg(long, default_value_t = 1000)]
    vips: u32,
    /// Backends per VIP in the large case.
    #[arg(long, default_value_t = 100)]
    backends: u32,
    /// Maglev table size per VIP in the large case (a prime ≥ 10 × backends keeps
    /// each backend's share within a few % of its weight).
    #[arg(long, default_value_t = 1009)]
    ring_size: u32,
}

/// The lab's VIP address serves every VIP, one port each.
const FIRST_PORT: u16 = 1000;

pub fn run(args: Args) -> Result<()> {
    build::build()?;
    let mut lab = LabBuilder::new()
        .name(format!("bscl{}", std::process::id()))
        .mode(Mode::Nat)
        .backends(&["blue", "green"])
        .bins(util::bins()?)
        .build()?;
    measure(&mut lab, &args).map_err(|e| anyhow!("{e:#}\n{}", lab.diagnostics()))
}

/// `vips` tenants with `backends` services each, on addresses nothing answers
/// (no traffic is sent to them; the XDP program only needs a route to try).
fn tenants(vips: u32, backends: u32, ring_size: Option<u32>) -> Vec<Tenant> {
    (0..vips)
        .map(|v| Tenant {
            name: format!("t{v}"),
            listen: SocketAddr::new(VIP4.into(), FIRST_PORT + v as u16),
            protocol: Protocol::Tcp,
            mode: Mode::Nat,
            strategy: Strategy::Canary,
            services: (0..backends)
                .map(|b| Service {
                    name: format!("s{b}"),
                    // One address per backend index, one port per VIP: a nat backend
                    // endpoint serves one VIP.
                    address: SocketAddr::new(
                        IpAddr::from([198, 18, 200, b as u8 + 1]),
                        10_000 + v as u16,
                    ),
                    weight: 1,
                    environment: "prod".into(),
                    version: "1.0.0".into(),
                    health: None,
                })
                .collect(),
            canary: None,
            active_environment: None,
            switch: None,
            ring_size,
        })
        .collect()
}

/// One agent run's figures.
struct Run {
    label: String,
    vips: u32,
    /// (map, memlock bytes, max entries) per map of the program.
    maps: Vec<(String, u64, u32)>,
    /// Start of the agent process → every VIP's table live in the kernel.
    load: Duration,
    rss: u64,
    /// Change of the kernel lines of /proc/meminfo across the run (noisy).
    meminfo_delta: i64,
}

impl Run {
    fn total(&self) -> u64 {
        self.maps.iter().map(|m| m.1).sum()
    }

    fn map(&self, name: &str) -> (u64, u32) {
        self.maps
            .iter()
            .find(|m| m.0 == name)
            .map_or((0, 0), |m| (m.1, m.2))
    }
}

/// Kernel memory lines of /proc/meminfo (kB → bytes): slab, per-CPU, vmalloc, page
/// tables, kernel stacks. BPF maps live in these.
fn kernel_meminfo() -> Result<i64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let mut total = 0i64;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if matches!(
            key,
            "Slab" | "Percpu" | "VmallocUsed" | "PageTables" | "KernelStack"
        ) {
            let kb: i64 = value.trim().trim_end_matches("kB").trim().parse()?;
            total += kb * 1024;
        }
    }
    Ok(total)
}

/// (name, memlock, max entries) of every map the pinned program uses: the pinned
/// ones by their pinned name, the others (the per-CPU next-hop cache, the object's
/// data sections) by the kernel's name, which keeps 15 characters.
fn program_maps(dir: &Path) -> Result<Vec<(String, u64, u32)>> {
    let mut maps = Vec::new();
    let mut pinned_ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("KS_") {
            continue; // the program and the links
        }
        let info = MapInfo::from_pin(entry.path())
            .with_context(|| format!("map {}", entry.path().display()))?;
        let (memlock, entries) = live::map_memory(&info)?;
        pinned_ids.push(info.id());
        maps.push((name, memlock, entries));
    }
    let program = ProgramInfo::from_pin(dir.join(names::PROGRAM))
        .with_context(|| format!("program {}/{}", dir.display(), names::PROGRAM))?;
    let ids = program
        .map_ids()
        .context("the program's map ids")?
        .context("the kernel did not report the program's map ids")?;
    for id in ids.into_iter().filter(|id| !pinned_ids.contains(id)) {
        let info = MapInfo::from_id(id).with_context(|| format!("map id {id}"))?;
        let (memlock, entries) = live::map_memory(&info)?;
        let name = info.name_as_str().unwrap_or("?").to_owned();
        maps.push((format!("{name} (not pinned)"), memlock, entries));
    }
    maps.sort();
    Ok(maps)
}

/// Starts the agent on `cfg`, waits until every VIP has a live table, and measures.
fn agent_run(lab: &mut Lab, label: &str, cfg: &AgentConfig) -> Result<(Run, Pins)> {
    lab.write_config(cfg)?;
    let before = kernel_meminfo()?;
    let t0 = Instant::now();
    lab.start_agent()?;
    let pins = Pins::open(&lab.pin_dir())?;
    let vips = cfg.tenants.len();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let live = pins
            .all_vips()?
            .iter()
            .filter(|(_, i)| i.ring_size > 0)
            .count();
        if live == vips {
            break;
        }
        if Instant::now() > deadline {
            bail!("{label}: only {live} of {vips} VIPs live after 600 s");
        }
    }
    let load = t0.elapsed();
    let pid = lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == keystone_lab::agent::AGENT)
        .context("agent process")?
        .pid;
    let run = Run {
        label: label.to_owned(),
        vips: vips as u32,
        maps: program_maps(pins.dir())?,
        load,
        rss: live::rss(pid)?,
        meminfo_delta: kernel_meminfo()? - before,
    };
    Ok((run, pins))
}

/// A TCP SYN from `src` to VIP4:1000 as an Ethernet frame (checksums are not checked
/// on the way in, and the program fixes them up incrementally).
fn syn_frame(src: Ipv4Addr, src_port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&VIP4.octets());
    let check =
        keystone_common::checksum::finish(keystone_common::checksum::sum(&f[ip_start..], 0));
    f[ip_start + 10..ip_start + 12].copy_from_slice(&check.to_ne_bytes());
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&FIRST_PORT.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// Runs `flows` SYNs of distinct 5-tuples through the pinned program
/// (BPF_PROG_TEST_RUN), from the gateway namespace so its routes apply; returns the
/// connection table's entry count afterwards and the time taken.
fn fill_flows(lab: &Lab, pins: &Pins, flows: u32) -> Result<(u64, Duration)> {
    let _netns = InNetns::enter(lab.gateway_ns())?;
    let interface = lab
        .gateway_interfaces()
        .into_iter()
        .next()
        .context("gateway interface")?;
    let ifindex = nix::net::if_::if_nametoindex(interface.as_str())?;
    let program = Xdp::from_pin(pins.dir().join(names::PROGRAM), XdpAttachType::Interface)
        .context("opening the pinned XDP program")?;
    let t0 = Instant::now();
    let mut out = vec![0u8; 256];
    for i in 0..flows {
        // Clients across 198.19.0.0/16, 16 source ports each: distinct 5-tuples.
        let src = Ipv4Addr::new(198, 19, (i >> 12) as u8, (i >> 4) as u8);
        let frame = syn_frame(src, 20_000 + (i & 15) as u16);
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let result = program.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        // 2 PASS (rewritten, neighbour unknown), 3 TX, 4 REDIRECT: forwarded to a
        // backend. DROP or ABORTED would mean no flow was tracked.
        if !(2..=4).contains(&result.return_value) {
            bail!("flow #{i}: XDP action {}", result.return_value);
        }
    }
    let took = t0.elapsed();
    let conns: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(pins.dir().join(names::CONNS))?,
    ))?;
    let count = conns.keys().count() as u64;
    Ok((count, took))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn measure(lab: &mut Lab, args: &Args) -> Result<()> {
    if u32::from(u16::MAX - FIRST_PORT) < args.vips || args.backends > 250 {
        bail!(
            "at most {} VIPs and 250 backends per VIP",
            u16::MAX - FIRST_PORT
        );
    }
    let mut runs = Vec::new();

    // Baseline: 1 VIP × 2 backends, default limits.
    let cfg = lab.agent_config(tenants(1, 2, None));
    let (base, _pins) = agent_run(lab, "baseline: 1 VIP × 2 backends, default limits", &cfg)?;
    lab.stop_agent()?;
    runs.push(base);

    // The connection table sized for the flows, then filled through the program.
    let conn_entries = args.flows.next_power_of_two();
    let mut cfg = lab.agent_config(tenants(1, 2, None));
    cfg.limits = vec![("conn_table_entries".into(), conn_entries)];
    let (flows_run, pins) = agent_run(
        lab,
        &format!("1 VIP × 2 backends, conn_table_entries {conn_entries}"),
        &cfg,
    )?;
    let before_fill = kernel_meminfo()?;
    let (tracked, fill_time) = fill_flows(lab, &pins, args.flows)?;
    let fill_delta = kernel_meminfo()? - before_fill;
    drop(pins);
    lab.stop_agent()?;
    runs.push(flows_run);

    // Many VIPs.
    let mut cfg = lab.agent_config(tenants(args.vips, args.backends, Some(args.ring_size)));
    cfg.limits = vec![
        ("max_vips".into(), args.vips),
        ("max_backends".into(), args.vips * args.backends),
        ("ring_entries".into(), 2 * args.vips * args.ring_size),
    ];
    let (big, _pins) = agent_run(
        lab,
        &format!(
            "{} VIPs × {} backends, tables of {}",
            args.vips, args.backends, args.ring_size
        ),
        &cfg,
    )?;
    lab.stop_agent()?;
    runs.push(big);

    let base = &runs[0];
    let mut t = Table::new(&[
        "case",
        "kernel memory (maps)",
        "vs baseline",
        "meminfo kernel Δ",
        "load → all live",
        "vs baseline",
        "agent RSS",
        "vs baseline",
    ]);
    for r in &runs {
        t.row(&[
            r.label.clone(),
            mib(r.total()),
            ratio(r.total() as f64, base.total() as f64),
            format!("{:.1} MiB", r.meminfo_delta as f64 / (1024.0 * 1024.0)),
            human(r.load),
            ratio(r.load.as_secs_f64(), base.load.as_secs_f64()),
            mib(r.rss),
            ratio(r.rss as f64, base.rss as f64),
        ]);
    }
    t.print();
    println!();

    let (conn_mem, conn_max) = runs[1].map(names::CONNS);
    let (base_conn_mem, base_conn_max) = base.map(names::CONNS);
    let mut f = Table::new(&["connection table", "figure"]);
    f.row(&[
        "flows sent through the program (BPF_PROG_TEST_RUN, fresh 5-tuples)".to_owned(),
        args.flows.to_string(),
    ]);
    f.row(&[
        "entries in the table afterwards".to_owned(),
        tracked.to_string(),
    ]);
    f.row(&["time to send them".to_owned(), human(fill_time)]);
    f.row(&[
        "table capacity (conn_table_entries)".to_owned(),
        conn_max.to_string(),
    ]);
    f.row(&["table memory (memlock)".to_owned(), mib(conn_mem)]);
    f.row(&[
        "bytes per flow slot (memlock / capacity)".to_owned(),
        format!("{:.1}", conn_mem as f64 / f64::from(conn_max.max(1))),
    ]);
    f.row(&[
        format!("bytes per flow slot (Δ memlock vs the default {base_conn_max})"),
        if conn_max == base_conn_max {
            "(same size)".to_owned()
        } else {
            format!(
                "{:.1}",
                (conn_mem as f64 - base_conn_mem as f64)
                    / (f64::from(conn_max) - f64::from(base_conn_max))
            )
        },
    ]);
    f.row(&[
        "meminfo kernel Δ while filling (preallocated: ≈ 0 expected)".to_owned(),
        format!("{:.1} MiB", fill_delta as f64 / (1024.0 * 1024.0)),
    ]);
    f.print();
    println!();

    let big = &runs[2];
    let mut m = Table::new(&[
        format!("map ({}-VIP case)", big.vips).as_str(),
        "entries",
        "memlock",
        "bytes/entry",
        "per VIP",
    ]);
    for (name, memlock, entries) in &big.maps {
        m.row(&[
            name.clone(),
            entries.to_string(),
            mib(*memlock),
            format!("{:.1}", *memlock as f64 / f64::from((*entries).max(1))),
            format!("{:.0} B", *memlock as f64 / f64::from(big.vips)),
        ]);
    }
    let per_vip = |r: &Run| (r.total() - r.map(names::CONNS).0) as f64 / f64::from(r.vips);
    m.row(&[
        "all but the connection table, per VIP".to_owned(),
        String::new(),
        mib(big.total() - big.map(names::CONNS).0),
        String::new(),
        format!("{:.0} B", per_vip(big)),
    ]);
    m.print();
    println!(
        "per VIP ({} backends, 2 tables of {}): {:.1} KiB; the baseline's capacity for {} VIPs costs {:.1} KiB per VIP slot",
        args.backends,
        args.ring_size,
        per_vip(big) / 1024.0,
        base.map(names::VIPS).1,
        (base.total() - base.map(names::CONNS).0) as f64
            / f64::from(base.map(names::VIPS).1.max(1))
            / 1024.0
    );
    Ok(())
}
