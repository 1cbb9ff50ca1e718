//! Integration tests: real TCP and UDP traffic through real XDP, in network
//! namespaces each test creates and removes (see `keystone_lab`). They need root
//! and the agent and ctl binaries in the same target directory: run them with
//! `cargo xtask test`, which builds everything first.
//!
//! Every test builds its own lab (unique names, so they run side by side), starts
//! `keystone-agent` in the gateway namespace, and panics with the agent's output
//! and counters when something is off.
//!
//! One file per topic: `splits`, `agent`, `weights`, `flows`, `lab`.

mod agent;
mod flows;
mod lab;
mod splits;
mod weights;

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use keystone_lab::{
    Bins, Lab, LabBuilder, Mode, Protocol, ROLLOUT, Summary, VIP4,
    helpers::{
        BACKEND_PORT, FLOWS, Setup, W90_10, assert_holds_unbroken, assert_split, hold_events,
        lab_with_agent, new_flows, new_lab, stop_agent_cleanly, tcp, tcp_tenant, v4, v6, web_lab,
    },
    ok,
    traffic::parse_summary,
};
