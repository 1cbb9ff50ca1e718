//! Integration tests: real TCP and UDP traffic through real XDP, in network
//! namespaces each test creates and removes (see `keystone_lab`). They need root
//! and the agent and ctl binaries: run them with `cargo xtask test`.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
};

use keystone_lab::{Bins, Lab, LabBuilder, Mode};

/// The lab binaries: ours from Cargo, the agent's and ctl's from the same target dir.
fn bins() -> Bins {
    let mut bins = Bins::beside_current_exe().expect("target dir");
    bins.backend = env!("CARGO_BIN_EXE_ks-backend").into();
    bins.client = env!("CARGO_BIN_EXE_ks-client").into();
    bins
}

fn lab(mode: Mode) -> Lab {
    LabBuilder::new()
        .mode(mode)
        .bins(bins())
        .build()
        .unwrap_or_else(|e| panic!("building the lab: {e}"))
}

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The topology alone (no agent): backends answer TCP and UDP over IPv4 and IPv6
/// from the gateway namespace, and dropping the lab leaves no namespace behind.
#[test]
fn lab_topology_serves_and_cleans_up() {
    let mut lab = lab(Mode::Nat);
    lab.start_backends(8080)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.diagnostics()));
    let client = lab.bins().client.clone();
    let gw = lab.gateway_ns().to_owned();
    for b in lab.backends() {
        for ip in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
            let target = SocketAddr::new(ip, 8080).to_string();
            for mode in ["--connections", "--udp"] {
                let out = lab
                    .exec(&gw, &client, &["--target", &target, mode, "20"])
                    .unwrap_or_else(|e| panic!("{e}\n{}", lab.diagnostics()));
                let s = keystone_lab::traffic::parse_summary("ks-client", &out).unwrap();
                assert_eq!(s.failed, 0, "{mode} to {target}: {s:?}");
                assert_eq!(
                    s.by_backend.get(&b.name),
                    Some(&20),
                    "{mode} to {target}: {s:?}"
                );
            }
        }
    }
    let prefix = lab.gateway_ns().trim_end_matches("-gw").to_owned();
    assert!(namespaces().contains(&prefix));
    let dir = lab.state_dir().to_owned();
    drop(lab);
    let left = namespaces();
    assert!(
        !left.contains(&format!("{prefix}-")),
        "namespaces left behind: {left}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}
