//! A fleet of gateways behind a router (issue 11), in the namespace fleet lab
//! ([`keystone_lab::Fleet`]): BIRD on the router (BGP and BFD to every gateway, ECMP)
//! and on each gateway, keystone-agent announcing its VIP through its BIRD.
//!
//! * The lab itself: every gateway's announcement becomes one next hop of the VIP's
//!   route, the return path goes through every live gateway, a dead gateway leaves
//!   both within BFD's detection time.
//! * New connections spread over the gateways and split by weight; every gateway
//!   has the same table.
//! * A gateway killed, drained, or joining under load breaks no held connection; new
//!   ones fail only until the router withdraws a dead gateway (none for a drain or a
//!   join).
//! * A gateway that sees every backend down withdraws; the others keep serving.
//! * A gateway whose backend side is a Linux bridge: the same split and tables, and
//!   a gateway killed next to it breaks nothing.
//!
//! Every test builds its own fleet (unique names, removed on drop) and waits by
//! polling with deadlines.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use keystone_api::AnnounceReason;
use keystone_lab::{
    Announce, CLIENT_NET4, CLIENT_NET6, Fleet, FleetBuilder, RETURN_TABLE, VIP4, VIP6, cmd,
    helpers::FLOWS,
};

const WEIGHTS: &[(&str, u32)] = &[("blue", 70), ("green", 30)];
const ALL: &[usize] = &[1, 2, 3];
/// Held connections under load.
const HELD: u32 = 100;
/// Longest a load runs (it is stopped as soon as the test has seen enough).
const LOAD: Duration = Duration::from_secs(120);
/// Bound for the router to follow a change (BFD detects in 300 ms).
const ROUTER: Duration = Duration::from_secs(30);

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

/// Unwraps `r`, or panics with `what`, the error and the fleet's diagnostics.
fn ok<T, E: std::fmt::Display>(fleet: &Fleet, what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.diagnostics()))
}

fn builder() -> FleetBuilder {
    FleetBuilder::new().bins(keystone_lab::test_bins!())
}

/// The standard fleet with the agents of `started` running, the VIP announced as
/// `announce` says.
fn web_fleet_announced(started: &[usize], announce: Announce) -> Fleet {
    web_fleet_of(builder(), started, announce)
}

/// The standard fleet of `builder`, with the agents of `started` running.
fn web_fleet_of(builder: FleetBuilder, started: &[usize], announce: Announce) -> Fleet {
    let mut fleet = ok_build(builder.backends(&["blue", "green"]).build());
    fleet.set_announce(announce);
    let r = fleet.start_web(WEIGHTS, started);
    ok(&fleet, "starting the fleet", r);
    fleet
}

/// The standard fleet with the agents of `started` announcing.
fn web_fleet(started: &[usize]) -> Fleet {
    web_fleet_announced(started, Announce::Agent)
}

/// `keystone_vip_new_connections_total` of tenant `web` on gateway `i`.
fn vip_new_connections(fleet: &Fleet, i: usize) -> u64 {
    let (_, metrics) = ok(
        fleet,
        "GET /metrics",
        fleet.gateway(i).admin_get("/metrics"),
    );
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("keystone_vip_new_connections_total{") && l.contains("tenant=\"web\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn the_lab_routes_each_vip_through_every_announcing_gateway_and_back() {
    let fleet = ok_build(builder().build());
    ok(&fleet, "BGP sessions", fleet.wait_sessions(ALL, ROUTER));
    let vips: [IpAddr; 2] = [VIP4.into(), VIP6.into()];
    for i in ALL {
        let r = fleet.gateway(*i).announce_by_hand(&vips);
        ok(&fleet, "announcing by hand", r);
    }
    for v in vips {
        ok(&fleet, "ECMP", fleet.wait_vip_next_hops(v, ALL, ROUTER));
    }
    ok(&fleet, "return path", fleet.wait_return_path(ALL, ROUTER));
    for (net, like) in [(CLIENT_NET4, vips[0]), (CLIENT_NET6, vips[1])] {
        let hops = ok(&fleet, "return path", fleet.next_hops(RETURN_TABLE, net));
        assert_eq!(
            hops,
            Fleet::gateway_back_addrs(ALL, like),
            "{net} in table 100"
        );
    }
    let policy = cmd::run(cmd::in_ns(fleet.router_ns(), "sysctl").args([
        "-n",
        "net.ipv4.fib_multipath_hash_policy",
        "net.ipv6.fib_multipath_hash_policy",
    ]));
    assert_eq!(
        ok(&fleet, "sysctl", policy)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1", "1"]
    );
    // BIRD never puts the gateway's own routes into its kernel.
    let gw_routes = cmd::run(cmd::in_ns(fleet.gateway(1).gateway_ns(), "ip").args(["route"]));
    assert!(!ok(&fleet, "ip route", gw_routes).contains(&VIP4.to_string()));

    let mut fleet = fleet;
    let killed = Instant::now();
    let r = fleet.kill_gateway(2);
    ok(&fleet, "killing gateway 2", r);
    ok(
        &fleet,
        "withdraw",
        fleet.wait_vip_next_hops(vips[0], &[1, 3], ROUTER),
    );
    eprintln!(
        "the router stopped sending to the dead gateway after {:?}",
        killed.elapsed()
    );
    let r = keystone_lab::wait_for("the return path to leave gateway 2", ROUTER, || {
        let hops = fleet.next_hops(RETURN_TABLE, CLIENT_NET4)?;
        Ok(if hops == Fleet::gateway_back_addrs(&[1, 3], vips[0]) {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(format!("{hops:?}"))
        })
    });
    ok(&fleet, "return path", r);
}

fn ok_build(r: keystone_lab::Result<Fleet>) -> Fleet {
    r.unwrap_or_else(|e| panic!("building the fleet lab: {e}"))
}

#[test]
fn new_connections_spread_over_every_gateway_and_split_by_weight() {
    spread_and_split(&web_fleet(ALL));
}

/// Gateway 2's backend side is a Linux bridge (its agent given `eth-up` and the
/// bridge, generic XDP there): the same split, spread and table, and its traffic
/// went through the bridge.
#[test]
fn with_a_bridged_gateway_new_connections_spread_and_split_by_weight() {
    let fleet = web_fleet_of(builder().bridged(&[2]), ALL, Announce::Agent);
    spread_and_split(&fleet);
    assert_bridged(&fleet, 2);
}

/// Gateway `i`'s translated packets went through its bridge: the program handed
/// them to the kernel to forward (the bridge takes no XDP frames).
fn assert_bridged(fleet: &Fleet, i: usize) {
    let (_, metrics) = ok(
        fleet,
        "GET /metrics",
        fleet.gateway(i).admin_get("/metrics"),
    );
    let handed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keystone_xdp_exceptions_total{reason=\"egress_not_xdp\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        handed.is_some_and(|n| n > 0.0),
        "gateway {i} handed its translated packets to the kernel for its bridge: {handed:?}\n{}",
        fleet.diagnostics()
    );
}

/// New connections spread over every gateway, split by weight, one table everywhere.
fn spread_and_split(fleet: &Fleet) {
    let before: Vec<u64> = ALL.iter().map(|&i| vip_new_connections(fleet, i)).collect();
    let s = ok(
        fleet,
        "new connections",
        fleet.base().tcp_connections(vip(), 3 * FLOWS),
    );
    if let Err(table) = s.check_split(WEIGHTS) {
        panic!("split over the fleet: {table}\n{}", fleet.diagnostics());
    }
    eprintln!("split over the fleet:\n{}", s.table(WEIGHTS));
    let per_gateway: Vec<u64> = ALL
        .iter()
        .zip(&before)
        .map(|(&i, b)| vip_new_connections(fleet, i) - b)
        .collect();
    eprintln!("new connections per gateway: {per_gateway:?}");
    let total: u64 = per_gateway.iter().sum();
    assert!(
        total >= s.answered() && per_gateway.iter().all(|&n| n * 5 >= total),
        "every gateway takes at least a fifth of {} new connections: {per_gateway:?}\n{}",
        s.answered(),
        fleet.diagnostics()
    );
    let hashes: Vec<_> = ALL
        .iter()
        .map(|&i| ok(fleet, "GET /status", fleet.table_hashes(i)))
        .collect();
    assert!(
        !hashes[0].is_empty() && hashes[0].iter().all(|(_, hash)| hash.is_some()),
        "gateway 1 reports tenants[].table_hash: {hashes:?}"
    );
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "one table on every gateway: {hashes:?}"
    );
}

#[test]
fn a_gateway_killed_under_load_breaks_no_connection() {
    // A dead gateway's agent does nothing: who announced its VIP does not matter.
    kill_under_load(&mut web_fleet_announced(ALL, Announce::ByHand), 2);
}

/// The flows of a gateway killed next to the bridged one move to it (and to gateway
/// 1): re-picked through its table, none breaks.
#[test]
fn with_a_bridged_gateway_a_gateway_killed_under_load_breaks_no_connection() {
    let mut fleet = web_fleet_of(builder().bridged(&[2]), ALL, Announce::Agent);
    kill_under_load(&mut fleet, 3);
    assert_bridged(&fleet, 2);
}

/// Gateway `killed` killed hard under load: no held connection breaks, no new
/// connection fails once the router withdrew it.
fn kill_under_load(fleet: &mut Fleet, killed: usize) {
    let r = fleet.start_load(vip(), HELD, LOAD);
    let load = ok(fleet, "load", r);
    let t = Instant::now();
    let r = fleet.kill_gateway(killed);
    ok(fleet, &format!("killing gateway {killed}"), r);
    let others: Vec<usize> = ALL.iter().copied().filter(|&i| i != killed).collect();
    let withdrawn = ok(
        fleet,
        "withdraw",
        fleet.wait_vip_next_hops(VIP4.into(), &others, ROUTER),
    );
    eprintln!(
        "the router stopped sending new connections to the killed gateway after {:?}",
        withdrawn - t
    );
    let r = load.finish(fleet, withdrawn);
    let report = ok(fleet, "the load", r);
    eprintln!("gateway {killed} killed: {}", report.line());
    assert!(
        report.held_broken.is_empty() && report.new_failed_after == 0,
        "no held connection broken, no new connection failed once the router withdrew: {report:?}\n{}",
        fleet.diagnostics()
    );
}

#[test]
fn a_drained_gateway_under_load_fails_nothing_and_comes_back() {
    let mut fleet = web_fleet(ALL);
    let r = fleet.start_load(vip(), HELD, LOAD);
    let load = ok(&fleet, "load", r);
    let started = Instant::now();
    let out = ok(
        &fleet,
        "keystone-ctl drain",
        fleet.gateway(2).ctl(&["drain"]),
    );
    assert!(
        out.status.success(),
        "keystone-ctl drain: {out:?}\n{}",
        fleet.diagnostics()
    );
    eprintln!("keystone-ctl drain took {:?}", started.elapsed());
    let r = fleet.wait_vip_next_hops(VIP4.into(), &[1, 3], ROUTER);
    ok(&fleet, "drained gateway withdrawn", r);
    let r = load.finish(&mut fleet, started);
    let report = ok(&fleet, "the load", r);
    eprintln!("gateway drained: {}", report.line());
    assert!(
        report.held_broken.is_empty() && report.new_failed == 0,
        "a drain fails no new connection and breaks no held one: {report:?}\n{}",
        fleet.diagnostics()
    );
    let out = ok(
        &fleet,
        "keystone-ctl undrain",
        fleet.gateway(2).ctl(&["undrain"]),
    );
    assert!(out.status.success(), "keystone-ctl undrain: {out:?}");
    ok(&fleet, "undrained gateway back", fleet.wait_announced(ALL));
}

#[test]
fn a_gateway_joining_under_load_refuses_nothing() {
    let mut fleet = web_fleet(&[1, 2]);
    let r = fleet.start_load(vip(), HELD, LOAD);
    let load = ok(&fleet, "load", r);
    let started = Instant::now();
    let r = fleet.start_web_agent(3, WEIGHTS);
    ok(&fleet, "starting gateway 3", r);
    let joined = ok(&fleet, "gateway 3 announced", fleet.wait_announced(ALL));
    eprintln!(
        "gateway 3 announced {:?} after its agent started",
        joined - started
    );
    let r = load.finish(&mut fleet, started);
    let report = ok(&fleet, "the load", r);
    eprintln!("gateway joined: {}", report.line());
    assert!(
        report.held_broken.is_empty() && report.new_failed == 0,
        "a joining gateway refuses no new connection and breaks no held one: {report:?}\n{}",
        fleet.diagnostics()
    );
}

#[test]
fn a_gateway_that_sees_every_backend_down_withdraws_and_the_others_serve() {
    let fleet = web_fleet(ALL);
    // Gateway 2's health checks (its own connections to the backends' port) vanish;
    // traffic it forwards in XDP never reaches netfilter.
    let block = "add table inet ksblock\n\
                 add chain inet ksblock out { type filter hook output priority 0; }\n\
                 add rule inet ksblock out tcp dport 8080 drop\n";
    let r = cmd::run_with_stdin(
        cmd::in_ns(fleet.gateway(2).gateway_ns(), "nft").args(["-f", "-"]),
        block,
    );
    ok(&fleet, "blocking gateway 2's health checks", r);
    let r = fleet.wait_vip_next_hops(VIP4.into(), &[1, 3], ROUTER);
    ok(&fleet, "gateway 2 withdraws", r);
    // The router can see the withdrawal a moment before gateway 2 records it.
    let r = keystone_lab::wait_for(
        "gateway 2's status to say the VIP is withdrawn and why",
        ROUTER,
        || {
            let announce = fleet.announce_status(2)?;
            let vip_line = announce
                .vips
                .iter()
                .find(|v| v.address == VIP4.to_string())
                .cloned();
            Ok(match vip_line {
                Some(v) if !v.announced && v.reason != AnnounceReason::Unknown => {
                    keystone_lab::Probe::Ready(v)
                }
                _ => keystone_lab::Probe::NotYet(format!("{announce:?}")),
            })
        },
    );
    let vip_line = ok(&fleet, "gateway 2's status", r);
    eprintln!("gateway 2: {vip_line:?}");
    let s = ok(
        &fleet,
        "new connections",
        fleet.base().tcp_connections(vip(), FLOWS),
    );
    if let Err(table) = s.check_split(WEIGHTS) {
        panic!(
            "gateways 1 and 3 serve every connection: {table}\n{}",
            fleet.diagnostics()
        );
    }
}

/// The same gateway killed, revived (its BIRD, then its agent) and killed again,
/// three times: every kill breaks no held connection, and the router withdraws it
/// because BFD saw it die, not when the BGP hold timer ran out (`bench fleet` once
/// saw a third kill take 9.2 s and break all 100 held connections). The router's
/// view at each step is in the failure message.
#[test]
fn a_gateway_killed_again_after_a_revive_breaks_no_connection() {
    const X: usize = 3;
    let mut fleet = web_fleet(ALL);
    let mut steps = String::new();
    for kill in 1..=3 {
        steps.push_str(&format!("=== before kill {kill}\n{}", fleet.router_view()));
        let bfd = ok(&fleet, "show bfd sessions", fleet.router_bfd_sessions());
        eprintln!("before kill {kill}: the router's BFD sessions {bfd:?}");
        let r = fleet.start_load(vip(), HELD, LOAD);
        let load = ok(&fleet, "load", r);
        let t = Instant::now();
        let r = fleet.kill_gateway(X);
        ok(&fleet, &format!("kill {kill} of gateway {X}"), r);
        let withdrawn = ok(
            &fleet,
            "withdraw",
            fleet.wait_vip_next_hops(VIP4.into(), &[1, 2], ROUTER),
        );
        let r = load.finish(&mut fleet, withdrawn);
        let report = ok(&fleet, "the load", r);
        let why = router_protocol_info(&fleet, &format!("gw{X}v4"));
        steps.push_str(&format!(
            "=== kill {kill}: withdrawn after {:?} ({why}); {}\n{}",
            withdrawn - t,
            report.line(),
            fleet.router_view()
        ));
        eprintln!(
            "kill {kill}: the router withdrew gateway {X} after {:?} ({why}); {}",
            withdrawn - t,
            report.line()
        );
        assert!(
            report.held_broken.is_empty() && report.new_failed_after == 0,
            "kill {kill}: no held connection broken, no new one failed once withdrawn: \
             {report:?}\n{steps}\n{}",
            fleet.diagnostics()
        );
        assert!(
            why.contains("BFD session down"),
            "kill {kill}: the router's BGP session to gateway {X} went down by BFD: {why}\n{steps}"
        );
        if kill < 3 {
            let r = fleet.revive_gateway(X);
            ok(&fleet, "reviving", r);
            let r = fleet.start_web_agent(X, WEIGHTS);
            ok(&fleet, "restarting the agent", r);
            ok(&fleet, "announced again", fleet.wait_announced(ALL));
        }
    }
}

/// The info column of the router's BIRD protocol `name` (`show protocols`).
fn router_protocol_info(fleet: &Fleet, name: &str) -> String {
    let protocols = ok(fleet, "show protocols", fleet.base().bird_protocols());
    protocols
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, state, info)| format!("{state} {info}"))
        .unwrap_or_else(|| format!("no protocol {name}"))
}
