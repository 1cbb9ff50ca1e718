//! `cargo xtask lab up|down`: a lab that stays up after xtask exits.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, Fleet, FleetBuilder, Lab, LabBuilder, LabError, Mode, Protocol,
    VIP4, VIP6,
};

use crate::{build, util};

/// The lab's VIPs: TCP on v4 and v6, UDP on v4. DSR keeps the backend port
/// (only MACs are rewritten), NAT shows port translation (80 → 8080).
pub fn tenants(lab: &Lab, weights: &[(&str, u32)]) -> Result<Vec<keystone_lab::Tenant>> {
    let mode = lab.mode();
    let port = match mode {
        Mode::Nat => 80,
        Mode::Dsr => BACKEND_PORT,
    };
    let v4 = IpAddr::V4(VIP4);
    let v6 = IpAddr::V6(VIP6);
    Ok(vec![
        lab.tenant(
            "web",
            SocketAddr::new(v4, port),
            Protocol::Tcp,
            mode,
            BACKEND_PORT,
            weights,
        )?,
        lab.tenant(
            "web6",
            SocketAddr::new(v6, port),
            Protocol::Tcp,
            mode,
            BACKEND_PORT,
            weights,
        )?,
        lab.tenant(
            "udp",
            SocketAddr::new(v4, BACKEND_PORT),
            Protocol::Udp,
            mode,
            BACKEND_PORT,
            weights,
        )?,
    ])
}

/// The port every ks-backend serves on.
pub const BACKEND_PORT: u16 = 8080;

/// Starts backends and the agent with `weights` in a fresh lab.
pub fn start(lab: &mut Lab, weights: &[(&str, u32)]) -> Result<()> {
    let tenants = tenants(lab, weights)?;
    lab.start_with_config(BACKEND_PORT, &[], |lab| Ok(lab.agent_config(tenants)))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", lab.diagnostics()))?;
    Ok(())
}

pub fn up(name: &str, mode: Mode) -> Result<()> {
    util::require_root("`cargo xtask lab up`")?;
    build::build()?;
    let mut lab = LabBuilder::new()
        .name(name)
        .mode(mode)
        .bins(util::bins()?)
        .detach_processes(true)
        .build()?;
    start(&mut lab, &[("blue", 90), ("green", 10)])?;
    let state = lab.keep()?;
    let ctl = util::bins()?.ctl;
    let (gw, client) = (&state.gateway_ns, &state.client_ns);
    let port = if mode == Mode::Nat { 80 } else { BACKEND_PORT };
    let cfg = state.notes.get("config").cloned().unwrap_or_default();
    println!(
        "\nlab {name:?} is up ({} mode); state and logs in /run/keystone-lab/{name}/",
        mode.as_str()
    );
    println!("  client   {client}  (198.18.1.2, 2001:2:0:1::2)");
    println!(
        "  gateway  {gw}  (XDP + keystone-agent, admin http://127.0.0.1:9100, token {ADMIN_TOKEN})"
    );
    for b in &state.backends {
        println!(
            "  backend  {}  ({}, {}; ks-backend on :{BACKEND_PORT})",
            b.ns, b.ipv4, b.ipv6
        );
    }
    println!(
        "  VIPs     tcp {VIP4}:{port}, tcp [{VIP6}]:{port}, udp {VIP4}:{BACKEND_PORT}; weights blue 90, green 10"
    );
    println!("\ntry:");
    println!("  ip netns exec {client} curl -s http://{VIP4}:{port}/");
    println!("  ip netns exec {client} curl -s 'http://[{VIP6}]:{port}/'");
    println!(
        "  ip netns exec {client} {} --target {VIP4}:{port} --connections 1000",
        util::bins()?.client.display()
    );
    println!(
        "  ip netns exec {gw} {} --token {ADMIN_TOKEN} status",
        ctl.display()
    );
    println!(
        "  edit the weights in {cfg}, then: ip netns exec {gw} {} --token {ADMIN_TOKEN} reload",
        ctl.display()
    );
    println!("\ntear down: cargo xtask lab down --name {name}");
    Ok(())
}

/// Takes lab `name` down, or with `all`/`run` every lab left behind (of that run).
pub fn down(name: &str, all: bool, run: Option<&str>) -> Result<()> {
    util::require_root("`cargo xtask lab down`")?;
    let names = if all || run.is_some() {
        Lab::left_behind(run)
    } else {
        vec![name.to_owned()]
    };
    if all || run.is_some() {
        for n in Lab::list().iter().filter(|n| !names.contains(n)) {
            println!("lab {n:?} stays: its creator still runs, or it is another run's");
        }
    }
    if names.is_empty() {
        println!("no lab was left behind");
    }
    for n in names {
        // A fleet's gateways are labs of their own, taken down with their fleet.
        let removed = match Fleet::down(&n) {
            Err(LabError::NoState { .. }) if all || run.is_some() => continue,
            r => r.with_context(|| format!("taking lab {n:?} down"))?,
        };
        println!("lab {n:?} is down; removed: {}", removed.join(", "));
    }
    Ok(())
}

/// The weights of `lab up --gateways`.
const FLEET_WEIGHTS: &[(&str, u32)] = &[("blue", 70), ("green", 30)];

/// A fleet of `gateways` that stays up: every agent running tenant `web` on
/// 198.18.0.10:80 and announcing it.
pub fn fleet_up(name: &str, gateways: usize) -> Result<()> {
    util::require_root("`cargo xtask lab up --gateways`")?;
    build::build()?;
    let mut fleet = FleetBuilder::new()
        .name(name)
        .gateways(gateways)
        .bins(util::bins()?)
        .detach_processes(true)
        .build()?;
    let all: Vec<usize> = (1..=gateways).collect();
    fleet
        .start_web(FLEET_WEIGHTS, &all)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.diagnostics()))?;
    let client = fleet.base().client_ns().to_owned();
    let router = fleet.router_ns().to_owned();
    let gw_ns: Vec<String> = fleet
        .gateways()
        .iter()
        .map(|g| g.gateway_ns().to_owned())
        .collect();
    let router_socket = fleet.base().bird_socket();
    fleet.keep()?;
    let bins = util::bins()?;
    println!("\nfleet {name:?} is up (nat); state and logs in /run/keystone-lab/{name}*/");
    println!("  client   {client}  (198.18.1.2, 2001:2:0:1::2)");
    println!(
        "  router   {router}  (BIRD: BGP + BFD to every gateway, ECMP; socket {})",
        router_socket.display()
    );
    for (i, ns) in (1..).zip(&gw_ns) {
        println!(
            "  gateway  {ns}  ({}, XDP + keystone-agent + BIRD, admin http://{ADMIN_LISTEN}, token {ADMIN_TOKEN})",
            keystone_lab::gateway4(i)
        );
    }
    println!("  VIP      tcp {VIP4}:80 announced by every gateway; weights blue 70, green 30");
    println!("\ntry:");
    println!("  ip netns exec {router} ip route show {VIP4}");
    println!("  birdc -s {} show protocols", router_socket.display());
    println!(
        "  ip netns exec {client} {} --target {VIP4}:80 --connections 1000",
        bins.client.display()
    );
    if let Some(gw) = gw_ns.first() {
        let ctl = bins.ctl.display();
        println!("  ip netns exec {gw} {ctl} --token {ADMIN_TOKEN} status");
        println!("  ip netns exec {gw} {ctl} --token {ADMIN_TOKEN} drain   (then: undrain)");
    }
    println!("\ntear down: cargo xtask lab down --name {name}");
    Ok(())
}
