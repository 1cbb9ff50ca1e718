//! The next-hop cache (`keystone_common::NextHopCache`).

use super::*;

/// Where one established packet of `f` goes: (action, destination MAC).
fn hop_of(gw: &Gateway, f: &Flow) -> (u32, [u8; 6]) {
    let input = frame(
        f,
        &Shape {
            tcp_flags: ACK,
            ..Shape::default()
        },
    );
    let (action, out) = gw.run(&input, gw.in_index);
    (action, out[0..6].try_into().unwrap())
}

/// Polls (sending one packet per look) until `f`'s packets go to `want`; panics
/// after a deadline far beyond `limits::forward::NEXT_HOP_TTL_NS`.
fn wait_for_hop(gw: &Gateway, f: &Flow, what: &str, want: (u32, [u8; 6])) {
    keystone_lab::wait_for(what, std::time::Duration::from_secs(5), || {
        let got = hop_of(gw, f);
        Ok(if got == want {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(format!(
                "{} to {}",
                keystone_common::xdp_action_name(got.0),
                mac_str(got.1)
            ))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cached_next_hops_follow_neighbour_changes_and_backend_replacement() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let only = |i: u8| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                vec![backend("b", ep(backend4(i), 8080, PROTO_TCP), 1)],
            )]
        };
        gw.apply(&only(0));
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(0)));

        // The backend now answers at another MAC: its packets follow.
        let moved = [0x02, 0, 0, 0, 2, 0x10];
        set_neighbour(backend4(0), moved, OUT_IF);
        wait_for_hop(&gw, &f, "the new neighbour MAC", (XDP_REDIRECT, moved));

        // The neighbour is gone: the rewritten packet goes to the kernel to resolve
        // it (its MACs untouched).
        sh(&[
            "ip",
            "neigh",
            "del",
            &backend4(0).to_string(),
            "dev",
            OUT_IF,
        ]);
        let before = gw.counters();
        wait_for_hop(&gw, &f, "no neighbour: XDP_PASS", (XDP_PASS, IN_MAC));
        assert!(
            gw.counters().reasons[Reason::FibNoNeighbour as usize]
                > before.reasons[Reason::FibNoNeighbour as usize]
        );
        set_neighbour(backend4(0), backend_mac(0), OUT_IF);
        wait_for_hop(
            &gw,
            &f,
            "the neighbour back",
            (XDP_REDIRECT, backend_mac(0)),
        );

        // The route to the backend changes to another interface (IN_IF, where the
        // packet came from): XDP_TX with that interface's next hop.
        sh(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", backend4(0)),
            "dev",
            IN_IF,
        ]);
        set_neighbour(backend4(0), moved, IN_IF);
        wait_for_hop(&gw, &f, "the route via IN_IF", (XDP_TX, moved));
        sh(&[
            "ip",
            "route",
            "del",
            &format!("{}/32", backend4(0)),
            "dev",
            IN_IF,
        ]);
        wait_for_hop(&gw, &f, "the route back", (XDP_REDIRECT, backend_mac(0)));

        // Another backend in the flow's place takes effect with the very next
        // packet, well within the cache's lifetime: a new slot has no entry, and a
        // slot given to another backend has a new generation, which the entry of its
        // previous owner does not match.
        let slot_of =
            |gw: &Gateway, i: u8| gw.dp.backend_slot(&v, &ep(backend4(i), 8080, PROTO_TCP));
        let first_slot = slot_of(&gw, 0);
        gw.apply(&only(1));
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(1)));
        gw.apply(&only(2));
        assert_eq!(
            slot_of(&gw, 2),
            first_slot,
            "the third backend should reuse the first one's slot (what this step tests)"
        );
        assert_eq!(hop_of(&gw, &f), (XDP_REDIRECT, backend_mac(2)));
    });
}
