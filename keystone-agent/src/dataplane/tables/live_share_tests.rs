use keystone_common::{PROTO_TCP, mode};

use super::*;
use crate::dataplane::BackendSpec;

const V: &str = "198.18.0.100:80";
const B: [&str; 3] = ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.1.12:8080"];

fn ep(s: &str) -> Endpoint {
    Endpoint::new(s.parse().expect("socket address"), PROTO_TCP)
}

fn spec(weights: &[(Endpoint, u32)]) -> Vec<VipSpec> {
    vec![VipSpec {
        name: "web".into(),
        vip: ep(V),
        mode: mode::NAT,
        flags: 0,
        ring_size: 1009,
        backends: weights
            .iter()
            .map(|&(endpoint, weight)| BackendSpec {
                name: endpoint.socket_addr().to_string(),
                endpoint,
                weight,
                up: true,
            })
            .collect(),
    }]
}

/// Share of the VIP's live table per backend, as the kernel would split new flows.
fn split(maps: &FakeMaps) -> HashMap<Endpoint, f64> {
    let info = maps.vips[&ep(V)];
    let mut split = HashMap::new();
    for i in 0..info.ring_size {
        let b = maps.backends[&maps.rings[&(info.ring_base + i)]];
        *split.entry(b.endpoint).or_default() += 1.0 / f64::from(info.ring_size);
    }
    split
}

/// A pinned table, read back after a restart and rebuilt from the shares it gives,
/// splits new flows as the pinned one did (±2 points), with backends in their slots.
#[test]
fn shares_read_back_rebuild_the_pinned_split() {
    let pinned_weights: [&[u32]; 3] = [&[0, 1, 0], &[1, 3, 0], &[5, 3, 2]];
    for pinned in pinned_weights {
        let mut t = Tables::recover(FakeMaps::default(), Limits::default()).expect("empty");
        let weights: Vec<(Endpoint, u32)> = B
            .iter()
            .map(|b| ep(b))
            .zip(pinned.iter().copied())
            .collect();
        // Two applies: the live table is in the second stripe.
        t.apply(&spec(&[(ep(B[0]), 1), (ep(B[1]), 1)]))
            .expect("apply");
        t.apply(&spec(&weights)).expect("apply");
        let before = split(t.maps());
        let t2 = Tables::recover(t.maps().clone(), Limits::default()).expect("recover");
        let shares = t2.live_shares().expect("read back");
        assert_eq!(shares.len(), 1, "{shares:?}");
        let recovered = shares[0].entries.clone();
        assert_eq!(
            recovered.iter().map(|(e, _)| *e).collect::<HashSet<_>>(),
            before.keys().copied().collect::<HashSet<_>>(),
            "exactly the backends the pinned table sends to, for {pinned:?}"
        );
        let mut t2 = t2;
        t2.apply(&spec(&recovered)).expect("apply recovered shares");
        assert!(
            t2.live_shares().expect("read").is_empty(),
            "only before the first apply"
        );
        let after = split(t2.maps());
        for (backend, share) in &before {
            let now = after.get(backend).copied().unwrap_or(0.0);
            assert!(
                (now - share).abs() <= 0.02,
                "{pinned:?}: {backend:?} had {share:.3} of new flows, now {now:.3}"
            );
            assert_eq!(
                t2.backend_slot(&ep(V), backend),
                t.backend_slot(&ep(V), backend),
                "same slot, so established flows stay"
            );
        }
        assert!(after.keys().all(|b| before.contains_key(b)), "{after:?}");
    }
}
