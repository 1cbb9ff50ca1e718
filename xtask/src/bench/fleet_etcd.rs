//! `cargo xtask bench fleet --part etcd`: what sharing one rollout through etcd costs.
//! A 3-member etcd on the loopback of one lab's gateway namespace and three gateways
//! in one fleet (`keystone_lab::etcd`: the lab's agent `a` and two more, `b` and
//! `c`). The bench watches the fleet's prefix itself (`watch`) and prints:
//! - a weight change on one gateway → every gateway's confirmation (its member
//!   record with the new revision and table hash), beside etcd's own put → watch
//!   event measured in the same run (`confirm`);
//! - leader failover after SIGKILL of the leader's agent, against the lease TTL
//!   (`failover`);
//! - etcd writes per canary step and the size of the shared state (`writes`).
//!
//! Printed, not asserted. The lab (etcd, agents) goes when `Lab` drops, also on an
//! error or Ctrl-C.

mod confirm;
mod failover;
mod watch;
mod writes;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use keystone_lab::{
    ADMIN_TOKEN, AgentConfig, CanaryConfig, HealthCheck, Lab, Mode, Protocol, VIP4,
    fleet_etcd::{Fleet, PREFIX, TTL_SECS},
    ok,
};
use serde_json::Value;

use super::live::{Admin, InNetns};
use crate::{lab::BACKEND_PORT, util};

#[derive(clap::Args)]
pub struct Args {
    /// Weight changes timed (each through the next gateway in turn), and as many
    /// bare etcd puts for the baseline.
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

/// The baseline's key lies beside the fleet's prefix, outside what agents watch; the
/// bench watches both.
const BASELINE_KEY: &str = "/keystone/bench-baseline";
const WATCHED: &str = "/keystone/";
const IDS: [&str; 3] = ["a", "b", "c"];
/// Tenant whose weights are changed (`confirm`, `failover`) …
const WEIGHTS_TENANT: &str = "web";
/// … and tenant that runs the canary (`writes`), so neither disturbs the other.
const CANARY_TENANT: &str = "shop";
/// The canary's steps (10, 40, 70, 100 %) and their interval.
const CANARY_STEPS: usize = 4;
const STEP_INTERVAL: &str = "2s";
/// Bound of every wait (a confirmation, a takeover).
const WAIT: Duration = Duration::from_secs(60);

/// `rounds`: leader failovers timed (SIGKILL of the leader's agent).
pub fn run(args: &Args, rounds: usize) -> Result<()> {
    util::stop_on_signals()?;
    // Panics (with the lab's diagnostics) if the fleet does not form; the lab still
    // goes as the panic unwinds.
    let mut fleet = Fleet::start_with(
        &["blue", "green"],
        &IDS,
        |lab| ok(lab, "the bench's config", config(lab)),
        "",
    );
    measure(&mut fleet, args, rounds).map_err(|e| anyhow!("{e:#}\n{}", fleet.diagnostics()))
}

fn measure(fleet: &mut Fleet, args: &Args, rounds: usize) -> Result<()> {
    let watch = watch::Watch::start(
        fleet.lab.gateway_ns(),
        &fleet.etcd.endpoints("127.0.0.1")[0],
        WATCHED,
    )?;
    let changes = confirm::measure(fleet, &watch, args.changes)?;
    let failovers = failover::measure(fleet, &watch, rounds)?;
    let writes = writes::measure(fleet, &watch)?;
    println!(
        "\nfleet of 3 gateways through a 3-member etcd {} (lease TTL {TTL_SECS} s):",
        etcd_version(),
    );
    confirm::print(&changes);
    failover::print(&failovers, Duration::from_secs(TTL_SECS));
    writes::print(&writes);
    Ok(())
}

/// A keep-alive connection to gateway `i`'s admin API.
fn admin(fleet: &Fleet, i: usize) -> Result<Admin> {
    let _in = InNetns::enter(fleet.lab.gateway_ns())?;
    Admin::connect(&fleet.gateways[i].admin, ADMIN_TOKEN)
}

/// A keep-alive connection to etcd member `member`'s HTTP gateway.
fn etcd_http(fleet: &Fleet, member: usize) -> Result<Admin> {
    let url = &fleet.etcd.endpoints("127.0.0.1")[member];
    let addr = url.trim_start_matches("http://");
    let _in = InNetns::enter(fleet.lab.gateway_ns())?;
    Admin::without_token(addr)
}

/// Tenant `web` (VIP port 80, blue 100 %) for weight changes and tenant `shop` (port
/// 81, blue 1.0.0 → green 1.1.0 by 10 + 30 % steps, health-checked) for the canary.
/// No traffic is sent: `web`'s backends are table entries on a port nothing serves
/// (in nat mode each VIP needs backend ports of its own).
fn config(lab: &Lab) -> Result<AgentConfig> {
    let tenant = |name: &str, vip_port: u16, backend_port: u16| {
        lab.tenant(
            name,
            SocketAddr::new(VIP4.into(), vip_port),
            Protocol::Tcp,
            Mode::Nat,
            backend_port,
            &[("blue", 100), ("green", 0)],
        )
    };
    let shop = tenant(CANARY_TENANT, 81, BACKEND_PORT)?
        .with_health(HealthCheck::fast_http())
        .with_canary(CanaryConfig::ten_plus_thirty(STEP_INTERVAL));
    let web = tenant(WEIGHTS_TENANT, 80, BACKEND_PORT + 1)?;
    Ok(lab.agent_config(vec![web, shop]))
}

/// `method path` with `body` on `conn`, failing unless the answer is 2xx; the body.
fn call(conn: &mut Admin, method: &str, path: &str, body: Option<&str>) -> Result<Value> {
    let text = conn.ok(method, path, body)?;
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
}

/// The `status.fleet` of the gateway behind `conn`.
fn fleet_status(conn: &mut Admin) -> Result<Value> {
    Ok(call(conn, "GET", "/status", None)?["fleet"].take())
}

/// A member record's (applied revision, table hash of `tenant`), if `value` is one.
fn confirmation(value: &[u8], tenant: &str) -> Option<(i64, String)> {
    let record: Value = serde_json::from_slice(value).ok()?;
    let hash = record["table_hashes"][tenant].as_str().unwrap_or("");
    Some((record["applied_revision"].as_i64()?, hash.to_owned()))
}

/// The member id in a `<prefix>/members/<id>` key.
fn member_of(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?.strip_prefix("/members/")
}

fn gateway_index(id: &str) -> Result<usize> {
    match IDS.iter().position(|g| *g == id) {
        Some(i) => Ok(i),
        None => bail!("unknown gateway {id:?}"),
    }
}

/// `etcd --version`'s first line's version, for the header.
fn etcd_version() -> String {
    let out = std::process::Command::new("etcd").arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .unwrap_or_default()
}
