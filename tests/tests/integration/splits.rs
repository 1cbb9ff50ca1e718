//! The 90/10 split of new TCP connections and UDP flows, nat and dsr, IPv4 and IPv6,
//! with warm and cold neighbours.

use super::*;

/// Measures a 90/10 split of `FLOWS` new flows to one VIP.
fn split_90_10(mode: Mode, vip: SocketAddr, protocol: Protocol) {
    split_90_10_warm(mode, vip, protocol, true);
}

fn split_90_10_warm(mode: Mode, vip: SocketAddr, protocol: Protocol, warm: bool) {
    let setup = Setup {
        mode,
        warm,
        ..Setup::nat(&["blue", "green"])
    };
    let (lab, _) = lab_with_agent(keystone_lab::test_bins!(), setup, |lab| {
        lab.agent_config(vec![ok(
            lab,
            "tenant",
            lab.tenant("web", vip, protocol, mode, BACKEND_PORT, W90_10),
        )])
    });
    let s = new_flows(&lab, vip, protocol, FLOWS);
    assert_split(
        &lab,
        &format!("{} {} {vip}", mode.as_str(), protocol),
        &s,
        W90_10,
    );
}

#[test]
fn nat_ipv4_tcp_splits_90_10() {
    split_90_10(Mode::Nat, v4(80), Protocol::Tcp);
}

/// The gateway starts knowing no neighbour: the first packets go through the
/// kernel's forwarding (NAT over IPv4 only; see `Lab::warm_neighbours`).
#[test]
fn nat_ipv4_tcp_splits_90_10_with_cold_neighbours() {
    split_90_10_warm(Mode::Nat, v4(80), Protocol::Tcp, false);
}

/// dsr cannot fall back to the kernel (the destination is the VIP): the agent
/// itself makes the gateway learn the backends' MACs before it serves.
#[test]
fn dsr_ipv4_tcp_splits_90_10_with_cold_neighbours() {
    split_90_10_warm(Mode::Dsr, v4(BACKEND_PORT), Protocol::Tcp, false);
}

#[test]
fn dsr_ipv4_tcp_splits_90_10() {
    // DSR rewrites only MACs: the VIP port is the backend port.
    split_90_10(Mode::Dsr, v4(BACKEND_PORT), Protocol::Tcp);
}

#[test]
fn nat_ipv6_tcp_splits_90_10() {
    split_90_10(Mode::Nat, v6(80), Protocol::Tcp);
}

#[test]
fn dsr_ipv6_tcp_splits_90_10() {
    split_90_10(Mode::Dsr, v6(BACKEND_PORT), Protocol::Tcp);
}

#[test]
fn nat_ipv4_udp_splits_90_10() {
    split_90_10(Mode::Nat, v4(53), Protocol::Udp);
}

#[test]
fn dsr_ipv4_udp_splits_90_10() {
    split_90_10(Mode::Dsr, v4(BACKEND_PORT), Protocol::Udp);
}

#[test]
fn nat_ipv6_udp_splits_90_10() {
    split_90_10(Mode::Nat, v6(53), Protocol::Udp);
}

#[test]
fn dsr_ipv6_udp_splits_90_10() {
    split_90_10(Mode::Dsr, v6(BACKEND_PORT), Protocol::Udp);
}
