//! Config helpers: the agent's `VipSpec`/`BackendSpec` in a line, and which
//! counters moved between two reads.

use std::net::{IpAddr, SocketAddr};

use keystone_agent::dataplane::{BackendSpec, Counters, VipSpec};
use keystone_common::{Endpoint, Event, Reason};

pub fn ep(addr: impl Into<IpAddr>, port: u16, proto: u8) -> Endpoint {
    Endpoint::new(SocketAddr::new(addr.into(), port), proto)
}

pub fn backend(name: &str, endpoint: Endpoint, weight: u32) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        endpoint,
        weight,
        up: true,
    }
}

pub fn vip(name: &str, vip: Endpoint, mode: u32, backends: Vec<BackendSpec>) -> VipSpec {
    VipSpec {
        name: name.into(),
        vip,
        mode,
        flags: 0,
        ring_size: 65_537,
        backends,
    }
}

/// The reason counters that moved between `before` and `after`, by how much.
pub fn reason_deltas(before: &Counters, after: &Counters) -> Vec<(Reason, u64)> {
    deltas(&Reason::ALL, &before.reasons, &after.reasons, |r| {
        r as usize
    })
}

/// The event counters that moved between `before` and `after`, by how much.
pub fn event_deltas(before: &Counters, after: &Counters) -> Vec<(Event, u64)> {
    deltas(&Event::ALL, &before.events, &after.events, |e| e as usize)
}

fn deltas<T: Copy>(
    all: &[T],
    before: &[u64],
    after: &[u64],
    index: fn(T) -> usize,
) -> Vec<(T, u64)> {
    all.iter()
        .filter_map(|&c| {
            let d = after[index(c)] - before[index(c)];
            (d != 0).then_some((c, d))
        })
        .collect()
}
