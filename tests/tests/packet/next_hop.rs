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

/// Where one reply `f` from backend 0, arriving on `OUT_IF`, goes: (action,
/// destination MAC).
fn reply_hop_of(gw: &Gateway, f: &Flow) -> (u32, [u8; 6]) {
    let input = frame(
        f,
        &Shape {
            tcp_flags: ACK,
            dst_mac: OUT_MAC,
            src_mac: backend_mac(0),
            ..Shape::default()
        },
    );
    let (action, out) = gw.run(&input, gw.out_index);
    (action, out[0..6].try_into().unwrap())
}

/// Polls (sending one packet per look) until `f`'s packets go to `want`; panics
/// after a deadline far beyond `limits::forward::NEXT_HOP_TTL_NS`.
fn wait_for_hop(gw: &Gateway, f: &Flow, what: &str, want: (u32, [u8; 6])) {
    wait_for_where(gw, f, what, want, hop_of);
}

/// As `wait_for_hop`, for packets `send` sends.
fn wait_for_where(
    gw: &Gateway,
    f: &Flow,
    what: &str,
    want: (u32, [u8; 6]),
    send: fn(&Gateway, &Flow) -> (u32, [u8; 6]),
) {
    keystone_lab::wait_for(what, std::time::Duration::from_secs(5), || {
        let got = send(gw, f);
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
        // The caches are per CPU: on one CPU, each wait below sees the entry that
        // the next packet uses (a thread moved between CPUs would see another
        // CPU's entry, still valid for its lifetime).
        keystone_lab::cpus::pin_to(0);
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

/// `nat` replies keep their next hop in the reply cache (`ReplyHopCache`), per
/// (VIP, client), with the guarantees of the backend direction: a changed
/// neighbour MAC, a lost neighbour and a changed route towards the client take
/// effect within the cache's lifetime, and another client never uses the entry.
#[test]
fn reply_next_hops_are_cached_per_client_and_follow_neighbour_and_route_changes() {
    in_netns(|| {
        // The caches are per CPU: on one CPU, each wait below sees the entry that
        // the next packet uses (a thread moved between CPUs would see another
        // CPU's entry, still valid for its lifetime).
        keystone_lab::cpus::pin_to(0);
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        gw.apply(&[vip(
            "v",
            v,
            mode::NAT,
            vec![backend("b", ep(backend4(0), 8080, PROTO_TCP), 1)],
        )]);
        let reply = flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP);
        assert_eq!(reply_hop_of(&gw, &reply), (XDP_REDIRECT, CLIENT_MAC));
        let client = ep(CLIENT4, 0, PROTO_TCP).addr;
        let entries = gw.dp.reply_hops().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            entries.iter().any(|e| e.dst == client
                && e.src == v.addr
                && e.hop.dmac == CLIENT_MAC
                && e.hop.egress_ifindex == gw.in_index),
            "no cached hop for the client in {} entries",
            entries.len()
        );

        // The client now answers at another MAC: its replies follow.
        let moved = [0x02, 0, 0, 0, 0, 0x12];
        set_neighbour(CLIENT4, moved, IN_IF);
        wait_for_where(
            &gw,
            &reply,
            "the new MAC",
            (XDP_REDIRECT, moved),
            reply_hop_of,
        );

        // The neighbour is gone: the translated reply goes to the kernel (MACs as
        // they came) to resolve it.
        sh(&["ip", "neigh", "del", &CLIENT4.to_string(), "dev", IN_IF]);
        let before = gw.counters();
        wait_for_where(
            &gw,
            &reply,
            "no neighbour: XDP_PASS",
            (XDP_PASS, OUT_MAC),
            reply_hop_of,
        );
        assert!(
            gw.counters().reasons[Reason::FibNoNeighbour as usize]
                > before.reasons[Reason::FibNoNeighbour as usize]
        );
        set_neighbour(CLIENT4, CLIENT_MAC, IN_IF);
        wait_for_where(
            &gw,
            &reply,
            "the neighbour back",
            (XDP_REDIRECT, CLIENT_MAC),
            reply_hop_of,
        );

        // The route to the client moves to OUT_IF (where the reply came from):
        // XDP_TX with that interface's neighbour; then back.
        let host_route = format!("{CLIENT4}/32");
        sh(&["ip", "route", "add", &host_route, "dev", OUT_IF]);
        set_neighbour(CLIENT4, moved, OUT_IF);
        wait_for_where(
            &gw,
            &reply,
            "the route via OUT_IF",
            (XDP_TX, moved),
            reply_hop_of,
        );
        sh(&["ip", "route", "del", &host_route, "dev", OUT_IF]);
        wait_for_where(
            &gw,
            &reply,
            "the route back",
            (XDP_REDIRECT, CLIENT_MAC),
            reply_hop_of,
        );

        // Another client, with a MAC of its own, gets its own hop at once.
        let other = std::net::Ipv4Addr::new(198, 18, 0, 3);
        let other_mac = [0x02, 0, 0, 0, 0, 0x03];
        set_neighbour(other, other_mac, IN_IF);
        let to_other = flow("198.18.1.10:8080", "198.18.0.3:40000", PROTO_TCP);
        assert_eq!(reply_hop_of(&gw, &to_other), (XDP_REDIRECT, other_mac));
        assert_eq!(reply_hop_of(&gw, &reply), (XDP_REDIRECT, CLIENT_MAC));
    });
}
