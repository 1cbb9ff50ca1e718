//! The kernel's choice against the agent's prediction; flow stickiness across
//! weight changes.

use super::*;

#[test]
fn kernel_choice_matches_prediction_for_random_flows() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v4 = ep(vip4(100), 80, PROTO_TCP);
        let v6 = ep(vip6(0x100), 53, PROTO_UDP);
        let mut sticky = vip(
            "sticky",
            ep(vip4(110), 443, PROTO_TCP),
            mode::NAT,
            (0..3)
                .map(|i| backend("s", ep(backend4(5 + i), 8443, PROTO_TCP), 1))
                .collect(),
        );
        sticky.flags = vip_flags::SOURCE_STICKY;
        sticky.ring_size = 1009;
        gw.apply(&[
            vip(
                "v4",
                v4,
                mode::NAT,
                (0..4)
                    .map(|i| {
                        backend(
                            "b",
                            ep(backend4(i), 8080, PROTO_TCP),
                            [50, 30, 15, 5][i as usize],
                        )
                    })
                    .collect(),
            ),
            vip(
                "v6",
                v6,
                mode::NAT,
                (0..3)
                    .map(|i| backend("b", ep(backend6(i), 5353, PROTO_UDP), 1))
                    .collect(),
            ),
            sticky.clone(),
        ]);
        let mut rng = Rng(0x6b65_7973_746f_6e65);
        let mut hits = std::collections::HashMap::new();
        for i in 0..10_000 {
            let (vip, proto) = match i % 3 {
                0 | 1 => (v4, PROTO_TCP),
                _ => (v6, PROTO_UDP),
            };
            let f = random_flow(&mut rng, vip.socket_addr(), proto);
            let got = send(&gw, &f);
            let want = gw
                .dp
                .predict(&vip, &f.key())
                .unwrap_or_else(|| panic!("no prediction for {f:?}"));
            assert_eq!(
                got,
                want.socket_addr(),
                "flow #{i} {f:?}: kernel picked {got}, agent predicts {}",
                want.socket_addr()
            );
            *hits.entry(got).or_insert(0u32) += 1;
        }
        // Weights 50/30/15/5 over ~6,667 IPv4 flows: each backend gets its share.
        for (i, w) in [50.0, 30.0, 15.0, 5.0].iter().enumerate() {
            let got = hits
                .get(&SocketAddr::new(backend4(i as u8).into(), 8080))
                .copied()
                .unwrap_or(0) as f64
                / 6667.0;
            assert!(
                (got - w / 100.0).abs() < 0.03,
                "backend {i} got {got:.3} of flows, weight share {}",
                w / 100.0
            );
        }
        // Source stickiness: one client, many ports, one backend (as predicted).
        let client: IpAddr = Ipv4Addr::new(198, 19, 7, 7).into();
        let first = send(
            &gw,
            &Flow {
                src: SocketAddr::new(client, 1000),
                dst: sticky.vip.socket_addr(),
                proto: PROTO_TCP,
            },
        );
        for port in 1001..1100 {
            let f = Flow {
                src: SocketAddr::new(client, port),
                dst: sticky.vip.socket_addr(),
                proto: PROTO_TCP,
            };
            assert_eq!(send(&gw, &f), first, "sticky VIP moved client port {port}");
            assert_eq!(
                gw.dp
                    .predict(&sticky.vip, &f.key())
                    .map(|e| e.socket_addr()),
                Some(first)
            );
        }
        let c = gw.counters();
        let new_flows: u64 = c.vips.iter().map(|(_, t)| t.new_flows).sum();
        assert_eq!(
            new_flows, 10_100,
            "every random flow is a new flow: {:?}",
            c.vips
        );
    });
}

#[test]
fn weight_changes_keep_established_flows_and_removal_repicks() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let spec = |weights: &[u32]| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        backend(&format!("b{i}"), ep(backend4(i as u8), 8080, PROTO_TCP), w)
                    })
                    .collect(),
            )]
        };
        let b0: SocketAddr = SocketAddr::new(backend4(0).into(), 8080);
        gw.apply(&spec(&[1, 1, 1, 1]));
        let mut rng = Rng(42);
        let flows: Vec<Flow> = (0..400)
            .map(|_| random_flow(&mut rng, v.socket_addr(), PROTO_TCP))
            .collect();
        let first: Vec<SocketAddr> = flows.iter().map(|f| send(&gw, f)).collect();
        assert!(first.contains(&b0), "some flow lands on b0");
        // The connection table pins each flow to the slot of the backend it went to.
        for (f, to) in flows.iter().zip(&first).take(20) {
            let state = gw
                .dp
                .conn(&f.key())
                .expect("read CONNS")
                .expect("flow is in CONNS");
            let slot = gw.dp.backend_slot(&v, &Endpoint::new(*to, PROTO_TCP));
            assert_eq!(Some(state.backend), slot, "CONNS entry of {f:?}");
        }

        // Canary-style step: b0 drops to weight 0, b1 doubles. Established flows stay.
        gw.apply(&spec(&[0, 2, 1, 1]));
        for (f, want) in flows.iter().zip(&first) {
            assert_eq!(
                send_established(&gw, f),
                *want,
                "established flow {f:?} moved after a weight change"
            );
        }
        // New flows follow the new weights (never b0) and the prediction.
        for _ in 0..400 {
            let f = random_flow(&mut rng, v.socket_addr(), PROTO_TCP);
            let got = send(&gw, &f);
            assert_ne!(got, b0, "new flow {f:?} went to a weight-0 backend");
            assert_eq!(
                Some(got),
                gw.dp.predict(&v, &f.key()).map(|e| e.socket_addr())
            );
        }

        // Removing b0 re-picks exactly its flows.
        let mut specs = spec(&[0, 2, 1, 1]);
        specs[0].backends.remove(0);
        gw.apply(&specs);
        for (f, was) in flows.iter().zip(&first) {
            let got = send_established(&gw, f);
            if *was == b0 {
                assert_ne!(got, b0, "flow {f:?} still goes to removed b0");
                assert_eq!(
                    Some(got),
                    gw.dp.predict(&v, &f.key()).map(|e| e.socket_addr()),
                    "re-picked flow {f:?}"
                );
            } else {
                assert_eq!(
                    got, *was,
                    "flow {f:?} of a remaining backend moved when b0 was removed"
                );
            }
        }

        // Marking b1 down re-picks its flows too; it keeps its slot.
        let b1: SocketAddr = SocketAddr::new(backend4(1).into(), 8080);
        let slot = gw.dp.backend_slot(&v, &ep(backend4(1), 8080, PROTO_TCP));
        specs[0].backends[0].up = false;
        gw.apply(&specs);
        assert_eq!(
            gw.dp.backend_slot(&v, &ep(backend4(1), 8080, PROTO_TCP)),
            slot
        );
        for f in &flows {
            assert_ne!(
                send_established(&gw, f),
                b1,
                "flow {f:?} still goes to down b1"
            );
        }

        // All backends gone: new flows are dropped and counted.
        specs[0].backends.clear();
        gw.apply(&specs);
        let before = gw.counters();
        let (action, _) = gw.run(&frame(&flows[0], &Shape::default()), gw.in_index);
        assert_eq!(action, XDP_DROP);
        let after = gw.counters();
        assert_eq!(reason_deltas(&before, &after), vec![(Reason::NoBackend, 1)]);
    });
}
