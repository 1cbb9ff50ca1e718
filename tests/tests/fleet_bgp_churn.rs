//! The backend set and the gateway set changing at once (issue 11, the case Katran
//! added a global LRU for), in the namespace fleet lab: 100 held echo connections
//! over three gateways and three backends; every gateway reloads without one
//! backend, then one gateway is killed hard.
//!
//! What a user can rely on, checked flow by flow:
//! * a flow to a kept backend that stays on its gateway never breaks (that gateway's
//!   connection table holds it);
//! * a flow that moves to another gateway (the dead one's, or one the router's
//!   rehash moves) is re-picked through the new table there: it breaks exactly when
//!   the new table sends its hash to another backend, which is always the case for
//!   the removed backend and for a few of the kept ones' (the Maglev entries that
//!   moved).
//!
//! The test predicts each flow's backend from the kernel's own flow hash and the
//! Maglev tables built from the config, as every gateway does.

use std::net::SocketAddr;

use keystone_common::{
    Endpoint, PROTO_TCP,
    flow::FlowKey,
    hash::flow_hash,
    limits::ring::DEFAULT_RING_SIZE,
    maglev::{self, MaglevBackend},
};
use keystone_lab::{Churn, Fleet, FleetBuilder, VIP4, lab::CLIENT4};

const WEIGHTS: &[(&str, u32)] = &[("blue", 40), ("green", 30), ("red", 30)];
const KEPT: &[&str] = &["blue", "green"];
const HELD: u32 = 100;
const KILLED: usize = 3;

/// The backend (by name) a new flow from the client's `port` to the VIP goes to
/// with `weights`' backends.
struct Picker {
    table: Vec<u32>,
    names: Vec<String>,
}

impl Picker {
    fn new(fleet: &Fleet, weights: &[(&str, u32)]) -> Self {
        let ids = weights
            .iter()
            .map(|(name, weight)| {
                let b = fleet.base().backend(name).expect("a fleet backend");
                MaglevBackend {
                    id: Endpoint::new(SocketAddr::new(b.ipv4.into(), 8080), PROTO_TCP).identity(),
                    weight: *weight,
                }
            })
            .collect::<Vec<_>>();
        Picker {
            table: maglev::build(&ids, DEFAULT_RING_SIZE),
            names: weights.iter().map(|(n, _)| (*n).to_owned()).collect(),
        }
    }

    /// The share of `self`'s entries of backends `other` keeps that `other` gives to
    /// another backend: what a moved flow to a kept backend risks.
    fn moved_share(&self, other: &Picker) -> f64 {
        let name = |p: &Picker, e: usize| p.names[p.table[e] as usize].clone();
        let kept: Vec<usize> = (0..self.table.len())
            .filter(|&e| other.names.contains(&name(self, e)))
            .collect();
        let moved = kept
            .iter()
            .filter(|&&e| name(self, e) != name(other, e))
            .count();
        moved as f64 / kept.len() as f64
    }

    fn pick(&self, port: u16) -> &str {
        let client = Endpoint::new(SocketAddr::new(CLIENT4.into(), port), PROTO_TCP);
        let vip = Endpoint::new(SocketAddr::new(VIP4.into(), 80), PROTO_TCP);
        let flow = FlowKey {
            src: client.addr,
            dst: vip.addr,
            src_port: client.port,
            dst_port: vip.port,
            proto: PROTO_TCP,
            family: client.family,
            ..FlowKey::default()
        };
        let entry = flow_hash(&flow, false) % DEFAULT_RING_SIZE;
        &self.names[self.table[entry as usize] as usize]
    }
}

#[test]
fn a_backend_removed_while_a_gateway_dies_breaks_only_the_flows_the_new_table_moves() {
    let mut fleet = FleetBuilder::new()
        .bins(keystone_lab::test_bins!())
        .backends(&["blue", "green", "red"])
        .build()
        .unwrap_or_else(|e| panic!("building the fleet lab: {e}"));
    let r = fleet.start_web(WEIGHTS, &[1, 2, 3]);
    r.unwrap_or_else(|e| panic!("starting the fleet: {e}\n{}", fleet.diagnostics()));
    let (old, new) = (Picker::new(&fleet, WEIGHTS), {
        let kept: Vec<(&str, u32)> = WEIGHTS
            .iter()
            .filter(|(b, _)| KEPT.contains(b))
            .copied()
            .collect();
        Picker::new(&fleet, &kept)
    });
    let r = fleet.churn(WEIGHTS, KEPT, KILLED, HELD);
    let churn: Churn = r.unwrap_or_else(|e| panic!("the churn: {e}\n{}", fleet.diagnostics()));
    eprintln!(
        "backend red removed and gateway {KILLED} killed: {}; the new table gives {:.2} % \
         of the kept backends' entries to another backend",
        churn.line(),
        100.0 * old.moved_share(&new)
    );
    for f in &churn.before {
        assert_eq!(
            old.pick(f.port),
            f.backend,
            "port {}: the gateway picked what the config's table says",
            f.port
        );
    }
    let [(_, stayed), (_, moved), (_, removed)] = churn.by_cause();
    assert_eq!(
        stayed.broken,
        0,
        "flows to kept backends that stayed on their gateway: {}",
        churn.line()
    );
    assert!(
        moved.flows > 0 && removed.flows > 0,
        "the churn moves flows and removes some flows' backend: {}",
        churn.line()
    );
    let want: Vec<u16> = churn
        .before
        .iter()
        .filter(|f| (churn.moved(f) || churn.removed(f)) && new.pick(f.port) != f.backend)
        .map(|f| f.port)
        .collect();
    let got: Vec<u16> = churn
        .before
        .iter()
        .filter(|f| churn.broken(f))
        .map(|f| f.port)
        .collect();
    assert_eq!(
        got,
        want,
        "broken flows are those re-picked onto another backend: {}",
        churn.line()
    );
    assert_eq!(
        churn.held_broken.len(),
        got.len(),
        "the hold saw as many broken connections: {:?}",
        churn.held_broken
    );
}
