//! What the lab test files (`tests/tests/*.rs`) share: the backends' port, the VIP
//! addresses, a lab with the agent running, and traffic whose failure panics with
//! the lab's diagnostics. The binaries come from the test crate
//! ([`crate::test_bins!`]), so the functions that build a lab take them.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    AgentConfig, Batch, Bins, ClientLoop, HoldEvent, Lab, LabBuilder, Mode, Protocol, Summary,
    Tenant, VIP4, VIP6, ok,
};

/// The port every ks-backend serves on.
pub const BACKEND_PORT: u16 = 8080;
/// New connections (or datagrams) per split measurement.
pub const FLOWS: u32 = 2000;
/// The split most traffic tests measure.
pub const W90_10: &[(&str, u32)] = &[("blue", 90), ("green", 10)];

/// The IPv4 VIP on `port`.
pub fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), port)
}

/// The IPv6 VIP on `port`.
pub fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), port)
}

/// Seconds since the Unix epoch, as the agent's timestamps count them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The IPv4 VIP on port 80.
pub fn vip() -> SocketAddr {
    v4(80)
}

/// A lab in `mode` with `backends`, nothing running yet.
pub fn new_lab(bins: Bins, mode: Mode, backends: &[&str]) -> Lab {
    LabBuilder::new()
        .mode(mode)
        .backends(backends)
        .bins(bins)
        .build()
        .unwrap_or_else(|e| panic!("building the lab: {e}"))
}

/// How [`lab_with_agent`] starts its lab.
#[derive(Clone, Copy, Debug)]
pub struct Setup<'a> {
    pub mode: Mode,
    pub backends: &'a [&'a str],
    /// Extra keystone-agent arguments (e.g. `--keep-forwarding`).
    pub agent_args: &'a [&'a str],
    /// Whether the gateway learns its neighbours' MACs before the agent starts (off:
    /// the data plane meets cold neighbours).
    pub warm: bool,
}

impl<'a> Setup<'a> {
    /// A nat lab over `backends`, neighbours warm, no extra agent arguments.
    pub fn nat(backends: &'a [&'a str]) -> Self {
        Setup {
            mode: Mode::Nat,
            backends,
            agent_args: &[],
            warm: true,
        }
    }
}

/// A lab as `setup` says with its backends serving on [`BACKEND_PORT`] and the agent
/// running `cfg(lab)`; returns the lab and that config.
pub fn lab_with_agent(
    bins: Bins,
    setup: Setup<'_>,
    cfg: impl FnOnce(&Lab) -> AgentConfig,
) -> (Lab, AgentConfig) {
    let mut lab = new_lab(bins, setup.mode, setup.backends);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    if setup.warm {
        ok(
            &lab,
            "warming the gateway's neighbours",
            lab.warm_neighbours(),
        );
    }
    let cfg = cfg(&lab);
    ok(&lab, "writing the agent config", lab.write_config(&cfg));
    let r = lab.start_agent_with(setup.agent_args);
    ok(&lab, "starting keystone-agent", r);
    (lab, cfg)
}

/// [`lab_with_agent`] in nat with warm neighbours, its backends `weights`' names in
/// that order, the agent running one tenant `web` on `vip` over `weights`
/// ([`tcp_tenant`]).
pub fn web_lab(bins: Bins, vip: SocketAddr, weights: &[(&str, u32)]) -> (Lab, AgentConfig) {
    let backends: Vec<&str> = weights.iter().map(|(b, _)| *b).collect();
    lab_with_agent(bins, Setup::nat(&backends), |lab| {
        lab.agent_config(vec![tcp_tenant(lab, "web", vip, weights)])
    })
}

/// Tenant `name` on `vip` over `weights`' backends: TCP, nat, the backends on
/// [`BACKEND_PORT`], no health checks.
pub fn tcp_tenant(lab: &Lab, name: &str, vip: SocketAddr, weights: &[(&str, u32)]) -> Tenant {
    ok(
        lab,
        "tenant",
        lab.tenant(name, vip, Protocol::Tcp, Mode::Nat, BACKEND_PORT, weights),
    )
}

/// `n` new TCP connections to `vip` from the client.
pub fn tcp(lab: &Lab, vip: SocketAddr, n: u32) -> Summary {
    ok(
        lab,
        &format!("{n} TCP connections to {vip}"),
        lab.tcp_connections(vip, n),
    )
}

/// `n` UDP datagrams (new flows) to `vip` from the client.
pub fn udp(lab: &Lab, vip: SocketAddr, n: u32) -> Summary {
    ok(
        lab,
        &format!("{n} UDP datagrams to {vip}"),
        lab.udp_datagrams(vip, n),
    )
}

/// `n` new flows of `protocol` to `vip`: TCP connections or UDP datagrams.
pub fn new_flows(lab: &Lab, vip: SocketAddr, protocol: Protocol, n: u32) -> Summary {
    match protocol {
        Protocol::Tcp => tcp(lab, vip, n),
        Protocol::Udp => udp(lab, vip, n),
        Protocol::Unknown => panic!("new flows of an unknown protocol"),
    }
}

/// The measured split `s` is `weights` within [`crate::traffic::split_tolerance`];
/// printed either way.
pub fn assert_split(lab: &Lab, what: &str, s: &Summary, weights: &[(&str, u32)]) {
    if let Err(table) = s.check_split(weights) {
        panic!("{what}: {table}\n{}", lab.test_diagnostics());
    }
    eprintln!("{what}:\n{}", s.table(weights));
}

/// Asserts that `s` has no failure and only `backend` answered.
pub fn assert_all_on(lab: &Lab, what: &str, s: &Summary, backend: &str) {
    let others: Vec<(&String, &u64)> = s.by_backend.iter().filter(|(b, _)| *b != backend).collect();
    assert!(
        s.failed == 0 && others.is_empty() && s.answered() > 0,
        "{what}: expected every new connection on {backend}, got {:?} ({} failed: {:?})\n{}",
        s.by_backend,
        s.failed,
        s.errors,
        lab.agent_diagnostics()
    );
}

/// No held connection failed (cut, refused, echoed wrong bytes); else panics with
/// `what`, the failures and the lab's diagnostics.
pub fn assert_holds_unbroken(lab: &Lab, what: &str, events: &[HoldEvent]) {
    let errors = HoldEvent::failures(events);
    assert!(
        errors.is_empty(),
        "{what}: {errors:?}\n{}",
        lab.test_diagnostics()
    );
}

/// What the `ks-client --hold` process `name` has reported so far.
pub fn hold_events(lab: &Lab, name: &str) -> Vec<HoldEvent> {
    ok(lab, "hold output", lab.hold_events(name))
}

/// Waits (30 s at most) until the loop has finished `n` batches that started after
/// `since`.
pub fn batches_after(lab: &Lab, traffic: &ClientLoop, since: Instant, n: usize) {
    let bound = Duration::from_secs(30);
    ok(lab, "traffic", traffic.wait_batches_since(since, n, bound));
}

/// Everything the batches that started at or after `since` saw.
pub fn summed_since(batches: &[Batch], since: Instant) -> Summary {
    let mut s = Summary::default();
    for b in batches.iter().filter(|b| b.started >= since) {
        s.merge(&b.summary);
    }
    s
}

/// Some new connections of `total` were answered and none failed; else panics with
/// `what`, the counts, the errors and `diagnostics()`.
pub fn assert_none_failed(what: &str, total: &Summary, diagnostics: impl FnOnce() -> String) {
    assert!(
        total.failed == 0 && total.answered() > 0,
        "{what}: {} of {} failed ({:?})\n{}",
        total.failed,
        total.attempted,
        total.errors,
        diagnostics()
    );
}

/// SIGKILLs the agent: nothing of its own cleanup runs.
pub fn kill_agent(lab: &mut Lab) {
    let r = lab.kill("agent");
    ok(lab, "killing the agent", r);
}

/// Stops the agent with SIGTERM; it must exit 0.
pub fn stop_agent_cleanly(lab: &mut Lab) {
    let r = lab.stop_agent();
    let status = ok(lab, "stopping the agent", r);
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent stopped with SIGTERM exited {status:?}\n{}",
        lab.agent_diagnostics()
    );
}
