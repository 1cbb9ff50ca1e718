//! `cargo xtask demo`: a canary rollout and a blue/green flip, measured.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Result, anyhow, bail};
use keystone_lab::{LabBuilder, Mode, ROLLOUT, VIP4};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::{lab, util};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn demo(connections: u32, mode: Mode) -> Result<()> {
    util::require_root("`cargo xtask demo`")?;
    util::build()?;
    // Ctrl-C stops the demo between steps, and the lab is still torn down.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }?;
    }

    let started = Instant::now();
    let mut lab = LabBuilder::new()
        .name(format!("demo-{}", std::process::id()))
        .mode(mode)
        .bins(util::bins()?)
        .build()?;
    println!(
        "demo: lab {} up ({} mode): client {}, gateway {}, backends blue and green",
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

    for (i, (what, blue, green)) in ROLLOUT.iter().enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted; the lab is being torn down");
        }
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
