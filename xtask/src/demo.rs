//! `cargo xtask demo`: traffic shifted by hand (weights and reloads), then by the
//! deployment engine: a canary that promotes itself, one that rolls itself back when
//! its backend fails, and a blue/green switch — every step measured with new
//! connections from the client namespace.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use keystone_api::{DeployState, SwitchStrategy};
use keystone_lab::{
    CanaryConfig, Deployment, HealthCheck, Lab, LabBuilder, Mode, Protocol, ROLLOUT, Summary,
    SwitchConfig, VIP4, VIP6,
};

use crate::{build, lab, util};

pub fn demo(connections: u32, mode: Mode) -> Result<()> {
    util::require_root("`cargo xtask demo`")?;
    build::build()?;
    // Ctrl-C stops the demo between steps, and the lab is still torn down.
    util::stop_on_signals()?;

    let started = Instant::now();
    let mut lab = LabBuilder::new()
        .name(format!("demo-{}", std::process::id()))
        .mode(mode)
        .backends(&["blue", "green", "red"])
        .bins(util::bins()?)
        .build()?;
    println!(
        "demo: lab {} up ({} mode): client {}, gateway {}, backends blue, green and red",
        lab.name(),
        mode.as_str(),
        lab.client_ns(),
        lab.gateway_ns()
    );
    let (_, blue, green) = ROLLOUT[0];
    let weights = [("blue", blue), ("green", green)];
    lab::start(&mut lab, &weights)?;
    let port = if mode == Mode::Nat {
        80
    } else {
        lab::BACKEND_PORT
    };
    let vip = SocketAddr::new(IpAddr::V4(VIP4), port);
    println!("demo: keystone-agent is up; {connections} new TCP connections to {vip} per step\n");
    println!("== 1. weights by hand: edit the config, keystone-ctl reload ==\n");

    for (i, (what, blue, green)) in ROLLOUT.iter().enumerate() {
        util::interrupted()?;
        let weights = [("blue", *blue), ("green", *green)];
        if i > 0 {
            let cfg = lab.agent_config(lab::tenants(&lab, &weights)?);
            lab.write_config(&cfg)?;
            lab.reload()
                .map_err(|e| anyhow!("{e}\n{}", lab.diagnostics()))?;
        }
        let summary = lab
            .tcp_connections(vip, connections)
            .map_err(|e| anyhow!("{e}\n{}", lab.diagnostics()))?;
        println!("step {}: {what} (blue {blue} / green {green})", i + 1);
        println!("{}\n", summary.table(&weights));
    }

    let vip6 = SocketAddr::new(IpAddr::V6(VIP6), port);
    engine(&mut lab, vip, vip6, connections, mode)
        .map_err(|e| anyhow!("{e:#}\n{}", lab.diagnostics()))?;

    let status = lab.ctl(&["status"])?;
    println!(
        "keystone-ctl status:\n{}",
        String::from_utf8_lossy(&status.stdout)
    );
    println!(
        "demo: done in {:.1} s; tearing the lab down",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How long one phase of the engine demo may take before the demo gives up.
const PHASE: Duration = Duration::from_secs(60);
/// The canaries' step interval.
const INTERVAL: &str = "3s";

/// `keystone-ctl canary start web --version <version>`: 10 %, then +30 % every
/// [`INTERVAL`].
fn start_web_canary(lab: &Lab, version: &str) -> Result<String> {
    let args = CanaryConfig::ten_plus_thirty(INTERVAL).ctl_start_args("web", version);
    ctl(lab, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `keystone-ctl <args>`, its output printed under the command; an error if it fails.
fn ctl(lab: &Lab, args: &[&str]) -> Result<String> {
    println!("$ keystone-ctl {}", args.join(" "));
    let out = lab.ctl(args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    if !out.status.success() {
        bail!("keystone-ctl {} failed ({})", args.join(" "), out.status);
    }
    Ok(text)
}

/// The newest deployment of `tenant`.
fn newest(lab: &Lab, tenant: &str) -> Result<Deployment> {
    lab.deployments()?
        .into_iter()
        .find(|d| d.tenant == tenant)
        .with_context(|| format!("no deployment of {tenant}"))
}

/// Polls the deployment until `done` holds for it (or `PHASE` passes).
fn until(
    lab: &Lab,
    id: &str,
    what: &str,
    done: impl Fn(&Deployment) -> bool,
) -> Result<Deployment> {
    let deadline = Instant::now() + PHASE;
    loop {
        util::interrupted()?;
        let d = lab.deployment(id)?;
        if done(&d) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            bail!(
                "deployment {id} did not {what} within {PHASE:?}: {}",
                d.summary()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn split_line(s: &Summary, names: &[&str]) -> String {
    let parts: Vec<String> = names
        .iter()
        .map(|n| format!("{n} {:.1}%", s.share(n)))
        .collect();
    format!(
        "{} ({} new connections, {} failed)",
        parts.join(" / "),
        s.answered(),
        s.failed
    )
}

/// The deployment engine: a canary that promotes itself, one that rolls itself back,
/// and a blue/green switch, each measured with `connections` new connections.
fn engine(
    lab: &mut Lab,
    vip: SocketAddr,
    vip6: SocketAddr,
    connections: u32,
    mode: Mode,
) -> Result<()> {
    println!("== 2. the deployment engine ==\n");
    let health = HealthCheck::fast_http();
    let web = lab
        .tenant(
            "web",
            vip,
            Protocol::Tcp,
            mode,
            lab::BACKEND_PORT,
            &[("blue", 100), ("green", 0), ("red", 0)],
        )?
        .with_health(health.clone());
    let web6 = lab
        .tenant(
            "web6",
            vip6,
            Protocol::Tcp,
            mode,
            lab::BACKEND_PORT,
            &[("blue", 1), ("green", 1)],
        )?
        .with_health(health)
        .with_canary(CanaryConfig::ten_plus_thirty("2s"))
        .blue_green("blue", SwitchConfig::instant());
    lab.write_config(&lab.agent_config(vec![web, web6]))?;
    lab.reload()?;
    println!(
        "config reloaded: tenant web on {vip} (canary: blue 1.0.0 stable, green 1.1.0, red 1.2.0),\n\
         tenant web6 on {vip6} (blue/green, blue active); HTTP health checks every 200 ms\n"
    );

    // A canary that promotes itself.
    println!("-- a canary that promotes itself: 10 % + 30 % every {INTERVAL} while healthy --");
    start_web_canary(lab, "1.1.0")?;
    let id = newest(lab, "web")?.id;
    let batch = (connections / 4).max(100);
    let deadline = Instant::now() + PHASE;
    let mut step: Option<(f64, Summary)> = None;
    loop {
        util::interrupted()?;
        if Instant::now() >= deadline {
            bail!("the canary did not finish within {PHASE:?}");
        }
        let before = lab.deployment(&id)?;
        if !before.is_running() && before.state != DeployState::Completed {
            bail!("the healthy canary ended {}", before.summary());
        }
        if let Some((p, s)) = &step
            && before.state == DeployState::Completed
            && *p >= 100.0
            && s.answered() >= u64::from(connections)
        {
            println!("canary at {p:>3}%: {}", split_line(s, &["blue", "green"]));
            break;
        }
        let s = lab.tcp_connections(vip, batch)?;
        let after = lab.deployment(&id)?;
        if after.canary_percent != before.canary_percent {
            continue; // this batch straddled a step: measure again
        }
        match &mut step {
            Some((p, acc)) if *p == before.canary_percent => acc.merge(&s),
            _ => {
                if let Some((p, acc)) = step.take() {
                    println!(
                        "canary at {p:>3}%: {}",
                        split_line(&acc, &["blue", "green"])
                    );
                }
                step = Some((before.canary_percent, s));
            }
        }
    }
    ctl(lab, &["deployments", &id])?;
    println!();

    // A canary that rolls itself back.
    println!("-- a canary that rolls itself back: red 1.2.0, whose server stops mid-rollout --");
    start_web_canary(lab, "1.2.0")?;
    let id = newest(lab, "web")?.id;
    let d = until(lab, &id, "reach 40 %", |d| {
        d.canary_percent >= 40.0 || !d.is_running()
    })?;
    if d.state != DeployState::Progressing {
        bail!("the red canary ended before 40 %: {}", d.summary());
    }
    let s = lab.tcp_connections(vip, connections)?;
    println!(
        "canary at {:>3}%: {}",
        d.canary_percent,
        split_line(&s, &["green", "red"])
    );
    let red_ns = lab.backend("red")?.ns.clone();
    println!("stopping red's server (ks-backend in {red_ns}): its health checks fail from now on");
    let failed = Instant::now();
    lab.stop_backend("red")?;
    let d = until(lab, &id, "end", |d| !d.is_running())?;
    println!(
        "deployment {id} is {} at {}% after {:.1} s; reason: {}",
        d.state,
        d.canary_percent,
        failed.elapsed().as_secs_f64(),
        d.history.last().map_or("", |s| s.reason.as_str())
    );
    let s = lab.tcp_connections(vip, connections)?;
    println!(
        "after the rollback: {}\n",
        split_line(&s, &["green", "red"])
    );

    // A blue/green switch.
    println!("-- a blue/green switch of web6 ({vip6}) from blue to green --");
    let s = lab.tcp_connections(vip6, connections)?;
    println!("before: {}", split_line(&s, &["blue", "green"]));
    ctl(
        lab,
        &[
            "switch",
            "web6",
            "--to",
            "green",
            "--strategy",
            SwitchStrategy::Instant.name(),
        ],
    )?;
    let id = newest(lab, "web6")?.id;
    ctl(
        lab,
        &["wait", &id, "--timeout", "60s", "--interval", "500ms"],
    )?;
    let s = lab.tcp_connections(vip6, connections)?;
    println!("after:  {}\n", split_line(&s, &["blue", "green"]));
    Ok(())
}
