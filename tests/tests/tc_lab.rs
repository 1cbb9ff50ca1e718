//! The program at the tc hook (`attach: tc`, `auto`, per interface) in the
//! namespace lab: real connections split 90/10 with the senders' transmit checksum
//! offload ON (every veth's default, which the lab otherwise turns off because XDP
//! cannot complete partial checksums), and `attach:` per interface. Root, like the
//! other lab tests (`cargo xtask test -- tc_lab`).

use std::{collections::BTreeMap, net::SocketAddr};

use keystone_agent::dataplane::Hook;
use keystone_lab::{
    Lab, Mode, Protocol,
    cmd::{self, in_ns},
    helpers::{BACKEND_PORT, FLOWS, W90_10, assert_split, new_flows, new_lab, tcp, v4, v6},
    ok,
};

/// Transmit checksum offload on again for the client and the backends: their
/// packets reach the gateway with partial checksums (`CHECKSUM_PARTIAL`).
fn offload_on(lab: &Lab) {
    let namespaces =
        std::iter::once(lab.client_ns()).chain(lab.backends().iter().map(|b| b.ns.as_str()));
    for ns in namespaces {
        let r = cmd::run(in_ns(ns, "ethtool").args(["-K", "eth-gw", "tx", "on"]));
        ok(lab, "ethtool -K eth-gw tx on", r);
    }
}

/// The hook each gateway interface runs the program at: `xdp` when `ip link` shows
/// an XDP program, `tc` when the agent pinned a tcx link for it.
fn hooks(lab: &Lab) -> BTreeMap<String, &'static str> {
    ok(lab, "ip link show", lab.xdp_programs())
        .into_iter()
        .map(|(iface, xdp)| {
            let tc = Hook::Tc.link_pin(&lab.pin_dir(), &iface).exists();
            let hook = match (xdp.is_some(), tc) {
                (true, false) => "xdp",
                (false, true) => "tc",
                (false, false) => "none",
                (true, true) => "both",
            };
            (iface, hook)
        })
        .collect()
}

/// Every gateway interface at `hook` (as `hooks` names them).
fn every_interface_at(lab: &Lab, hook: &'static str) -> BTreeMap<String, &'static str> {
    lab.gateway_interfaces()
        .into_iter()
        .map(|i| (i, hook))
        .collect()
}

/// A lab in `mode` with its backends serving and the agent's config written: one
/// tenant on `vip` over blue and green 90/10, with `config` turning the agent's
/// YAML into the one to run (its `interfaces:` line is the first line starting so).
fn lab_configured(
    mode: Mode,
    vip: SocketAddr,
    protocol: Protocol,
    config: impl FnOnce(&str) -> String,
) -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), mode, &["blue", "green"]);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    ok(&lab, "warming the neighbours", lab.warm_neighbours());
    let tenant = ok(
        &lab,
        "tenant",
        lab.tenant("web", vip, protocol, mode, BACKEND_PORT, W90_10),
    );
    let text = config(&lab.agent_config(vec![tenant]).to_yaml());
    ok(&lab, "writing the config", lab.write_config_text(&text));
    lab
}

/// `lab_configured` with the senders' checksum offload on and the agent running.
fn lab_running(
    mode: Mode,
    vip: SocketAddr,
    protocol: Protocol,
    config: impl FnOnce(&str) -> String,
) -> Lab {
    let mut lab = lab_configured(mode, vip, protocol, config);
    offload_on(&lab);
    let r = lab.start_agent();
    ok(&lab, "starting keystone-agent", r);
    lab
}

/// The agent's start, told the kernel is Linux 6.1 (no tcx).
const KERNEL_6_1: [&str; 2] = ["/usr/bin/env", "KEYSTONE_KERNEL_VERSION=6.1.0"];

/// On a kernel without tcx `attach: tc` is refused at start, naming the interface,
/// the kernel it needs, the one it found and the workaround, with nothing attached.
#[test]
fn attach_tc_on_a_kernel_without_tcx_is_refused_naming_the_kernel_and_the_workaround() {
    let mut lab = lab_configured(Mode::Nat, v4(80), Protocol::Tcp, |yaml| {
        format!("attach: tc\n{yaml}")
    });
    let started = lab.start_agent_wrapped(&KERNEL_6_1, &[]);
    let stderr = lab
        .stderr_of(keystone_lab::agent::AGENT)
        .unwrap_or_default();
    assert!(started.is_err(), "the agent started; stderr:\n{stderr}");
    let first = &lab.gateway_interfaces()[0];
    let want = format!(
        "interface {first}: `attach: tc` needs the tcx hook of Linux 6.6 or later, and this \
         kernel is 6.1.0: use `attach: xdp-generic` (or `xdp`) for it"
    );
    assert!(stderr.contains(&want), "want {want:?} in stderr:\n{stderr}");
    let none = every_interface_at(&lab, "none");
    assert_eq!(hooks(&lab), none, "nothing attached after the refusal");
}

/// On a kernel without tcx `attach: auto` picks XDP on every veth (tc would be
/// refused), and the split holds (n = FLOWS, tolerance in `assert_split`).
#[test]
fn auto_picks_xdp_on_a_kernel_without_tcx() {
    let mut lab = lab_configured(Mode::Nat, v4(80), Protocol::Tcp, |yaml| {
        format!("attach: auto\n{yaml}")
    });
    let r = lab.start_agent_wrapped(&KERNEL_6_1, &[]);
    ok(&lab, "starting keystone-agent (kernel 6.1)", r);
    let want = every_interface_at(&lab, "xdp");
    assert_eq!(hooks(&lab), want, "every veth at XDP without tcx");
    let s = tcp(&lab, v4(80), FLOWS);
    assert_split(&lab, "nat, auto without tcx (XDP)", &s, W90_10);
}

/// `attach: tc` for every interface: no XDP program anywhere, and the split holds
/// with no failed connection although every sender leaves partial checksums.
fn splits_at_tc(mode: Mode, vip: SocketAddr, protocol: Protocol) {
    let lab = lab_running(mode, vip, protocol, |yaml| format!("attach: tc\n{yaml}"));
    let want = every_interface_at(&lab, "tc");
    assert_eq!(hooks(&lab), want, "every interface at tc, none at XDP");
    let s = new_flows(&lab, vip, protocol, FLOWS);
    assert_split(
        &lab,
        &format!(
            "{} {} {vip} at tc, checksum offload on",
            mode.as_str(),
            protocol
        ),
        &s,
        W90_10,
    );
}

#[test]
fn nat_ipv4_tcp_splits_90_10_at_tc_with_checksum_offload_on() {
    splits_at_tc(Mode::Nat, v4(80), Protocol::Tcp);
}

#[test]
fn nat_ipv6_tcp_splits_90_10_at_tc_with_checksum_offload_on() {
    splits_at_tc(Mode::Nat, v6(80), Protocol::Tcp);
}

#[test]
fn nat_ipv4_udp_splits_90_10_at_tc_with_checksum_offload_on() {
    splits_at_tc(Mode::Nat, v4(53), Protocol::Udp);
}

#[test]
fn dsr_ipv4_tcp_splits_90_10_at_tc_with_checksum_offload_on() {
    splits_at_tc(Mode::Dsr, v4(BACKEND_PORT), Protocol::Tcp);
}

/// `attach: auto` puts every veth at tc, and an interface's own `attach: xdp` wins:
/// the client side at XDP, the backends' links at tc, and the split holds across the
/// two hooks (XDP replies into the tc side go through the kernel).
#[test]
fn auto_picks_tc_for_veths_and_an_interface_can_say_xdp() {
    let lab = lab_running(Mode::Nat, v4(80), Protocol::Tcp, |yaml| {
        let per_interface =
            "interfaces:\n  - name: eth-client\n    attach: xdp\n  - eth-blue\n  - eth-green";
        let mut lines: Vec<&str> = yaml.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("interfaces:"))
            .expect("an interfaces: line");
        lines[at] = per_interface;
        format!("attach: auto\n{}\n", lines.join("\n"))
    });
    let want: BTreeMap<String, &str> = [
        ("eth-blue".to_owned(), "tc"),
        ("eth-client".to_owned(), "xdp"),
        ("eth-green".to_owned(), "tc"),
    ]
    .into();
    assert_eq!(hooks(&lab), want);
    // The client's packets arrive at XDP: with its partial checksums counted (and
    // forwarded) there, so only the backends' side keeps offload on.
    let r = cmd::run(in_ns(lab.client_ns(), "ethtool").args(["-K", "eth-gw", "tx", "off"]));
    ok(&lab, "ethtool -K eth-gw tx off (client)", r);
    let s = tcp(&lab, v4(80), FLOWS);
    assert_split(&lab, "nat, client at XDP, backends at tc", &s, W90_10);
}
