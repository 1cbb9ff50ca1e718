//! Packet tests (`BPF_PROG_TEST_RUN`) for where the program may send a packet
//! (`iface_flags`: at XDP redirect only into devices that take XDP frames, else the
//! kernel forwards it; at tc into any device) and for the SYN checksum check
//! (partial checksums from senders with transmit offload: counted at XDP, which
//! cannot complete them, not at tc, where the skb keeps them right). Run as root,
//! like `packet.rs`.

use keystone_common::{Event, PROTO_TCP, Reason, checksum, iface_flags, mode, tcp_flags::ACK};
use keystone_lab::xdp::*;

/// One nat and one dsr VIP on IPv4, one nat VIP on IPv6, a backend each behind OUT_IF.
fn gateway() -> Gateway {
    let mut gw = Gateway::new();
    gw.apply(&[
        vip(
            "nat",
            ep(vip4(100), 80, PROTO_TCP),
            mode::NAT,
            vec![backend("n", ep(backend4(0), 8080, PROTO_TCP), 1)],
        ),
        vip(
            "dsr",
            ep(vip4(101), 80, PROTO_TCP),
            mode::DSR,
            vec![backend("d", ep(backend4(2), 80, PROTO_TCP), 1)],
        ),
        vip(
            "nat6",
            ep(vip6(0x100), 80, PROTO_TCP),
            mode::NAT,
            vec![backend("n6", ep(backend6(0), 8080, PROTO_TCP), 1)],
        ),
    ]);
    gw
}

fn set_flags(gw: &mut Gateway, ifindex: u32, flags: u32) {
    gw.dp
        .set_iface_flags(ifindex, flags)
        .unwrap_or_else(|e| panic!("set_iface_flags: {e}"));
}

fn reason_count(gw: &Gateway, r: Reason) -> u64 {
    gw.counters().reasons[r as usize]
}

fn event_count(gw: &Gateway, e: Event) -> u64 {
    gw.counters().events[e as usize]
}

#[test]
fn an_egress_device_that_takes_no_xdp_frames_gets_packets_through_the_kernel() {
    in_netns_at(&[Hook::Xdp], || {
        let mut gw = gateway();
        let (inn, out) = (gw.in_index, gw.out_index);
        let d = Shape::default();
        // OUT_IF as a bridge would be: the program is not attached to it natively.
        set_flags(&mut gw, out, 0);

        let f = flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP);
        let to = flow("198.18.0.2:42000", "198.18.1.10:8080", PROTO_TCP);
        let (action, frame_out) = gw.run(&frame(&f, &d), inn);
        assert_eq!(action, XDP_PASS, "nat into a non-XDP egress");
        assert_eq!(
            hex(&frame_out),
            hex(&natted(to, &d, IN_MAC, CLIENT_MAC)),
            "nat: rewritten, MACs as they came (the kernel forwards it)"
        );
        assert_eq!(reason_count(&gw, Reason::EgressNotXdp), 1);

        let f = flow("198.18.0.2:42001", "198.18.0.101:80", PROTO_TCP);
        let input = frame(&f, &d);
        let (action, frame_out) = gw.run(&input, inn);
        assert_eq!(action, XDP_PASS, "dsr into a non-XDP egress");
        assert_eq!(hex(&frame_out), hex(&input), "dsr: untouched");
        assert_eq!(reason_count(&gw, Reason::EgressNotXdp), 2);

        // A reply towards an unmarked client side goes through the kernel too.
        set_flags(&mut gw, out, iface_flags::REDIRECT_TARGET);
        set_flags(&mut gw, inn, 0);
        let reply = flow("198.18.1.10:8080", "198.18.0.2:42000", PROTO_TCP);
        let translated = flow("198.18.0.100:80", "198.18.0.2:42000", PROTO_TCP);
        let s = Shape {
            tcp_flags: ACK,
            ..d.clone()
        };
        let (action, frame_out) = gw.run(&frame(&reply, &s), out);
        assert_eq!(action, XDP_PASS, "nat reply into a non-XDP egress");
        assert_eq!(
            hex(&frame_out),
            hex(&natted(translated, &s, IN_MAC, CLIENT_MAC)),
            "reply: source back to the VIP, MACs as they came"
        );
        assert_eq!(reason_count(&gw, Reason::EgressNotXdp), 3);

        // From an interface the program runs on in generic mode, every device takes
        // the redirect (the kernel's transmit path), marked or not.
        set_flags(&mut gw, inn, iface_flags::GENERIC);
        set_flags(&mut gw, out, 0);
        let f = flow("198.18.0.2:42002", "198.18.0.101:80", PROTO_TCP);
        let input = frame(&f, &d);
        let (action, frame_out) = gw.run(&input, inn);
        assert_eq!(action, XDP_REDIRECT, "dsr from a generic-mode ingress");
        assert_eq!(
            hex(&frame_out),
            hex(&with_macs(input, backend_mac(2), OUT_MAC))
        );
        assert_eq!(reason_count(&gw, Reason::EgressNotXdp), 3);
    });
}

/// At tc the packet is an skb, which `bpf_redirect` takes to any device: a nat or dsr
/// packet, and a reply, go straight to a device without an XDP program (a bridge).
#[test]
fn at_tc_an_egress_device_that_takes_no_xdp_frames_gets_the_redirect() {
    in_netns_at(&[Hook::Tc], || {
        let mut gw = gateway();
        let (inn, out) = (gw.in_index, gw.out_index);
        let d = Shape::default();
        set_flags(&mut gw, inn, 0);
        set_flags(&mut gw, out, 0);

        let f = flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP);
        let to = flow("198.18.0.2:42000", "198.18.1.10:8080", PROTO_TCP);
        let (action, frame_out) = gw.run(&frame(&f, &d), inn);
        assert_eq!(action, XDP_REDIRECT, "nat into a non-XDP egress");
        assert_eq!(
            hex(&frame_out),
            hex(&natted(to, &d, backend_mac(0), OUT_MAC))
        );

        let f = flow("198.18.0.2:42001", "198.18.0.101:80", PROTO_TCP);
        let input = frame(&f, &d);
        let (action, frame_out) = gw.run(&input, inn);
        assert_eq!(action, XDP_REDIRECT, "dsr into a non-XDP egress");
        assert_eq!(
            hex(&frame_out),
            hex(&with_macs(input, backend_mac(2), OUT_MAC))
        );

        let reply = flow("198.18.1.10:8080", "198.18.0.2:42000", PROTO_TCP);
        let translated = flow("198.18.0.100:80", "198.18.0.2:42000", PROTO_TCP);
        let s = Shape {
            tcp_flags: ACK,
            ..d.clone()
        };
        let (action, frame_out) = gw.run(&frame(&reply, &s), out);
        assert_eq!(action, XDP_REDIRECT, "nat reply into a non-XDP egress");
        assert_eq!(
            hex(&frame_out),
            hex(&natted(translated, &s, CLIENT_MAC, IN_MAC))
        );
        assert_eq!(reason_count(&gw, Reason::EgressNotXdp), 0);
    });
}

/// `frame` with its TCP checksum replaced by `check` (raw, as stored).
fn with_tcp_check(mut frame: Vec<u8>, v4: bool, check: u16) -> Vec<u8> {
    let at = l3_offset(&frame) + if v4 { 20 } else { 40 } + 16;
    frame[at..at + 2].copy_from_slice(&check.to_ne_bytes());
    frame
}

/// `f`'s frame with the partial checksum a sender with transmit offload leaves: the
/// pseudo-header's sum, not inverted.
fn partial(f: &Flow, s: &Shape, v4: bool) -> Vec<u8> {
    let tcp_len = 20 + s.payload;
    with_tcp_check(frame(f, s), v4, checksum::folded(pseudo_sum(f, tcp_len)))
}

#[test]
fn syns_with_partial_or_bad_checksums_are_counted_and_forwarded_as_usual() {
    in_netns(|| {
        let gw = gateway();
        let inn = gw.in_index;
        let d = Shape::default();
        // Partial checksums count at XDP only (tc completes them: none counted).
        let partials = |n: u64| if gw.hook == Hook::Tc { 0 } else { n };
        let counts = |gw: &Gateway| {
            (
                event_count(gw, Event::SynChecksumPartial),
                event_count(gw, Event::SynChecksumBad),
            )
        };

        let f = flow("198.18.0.2:43000", "198.18.0.100:80", PROTO_TCP);
        assert_eq!(gw.run(&frame(&f, &d), inn).0, XDP_REDIRECT);
        assert_eq!(counts(&gw), (0, 0), "a right checksum counts nothing");

        assert_eq!(gw.run(&partial(&f, &d, true), inn).0, XDP_REDIRECT);
        assert_eq!(counts(&gw), (partials(1), 0), "partial IPv4 SYN");

        let f6 = flow("[2001:db8::2]:43000", "[2001:db8::100]:80", PROTO_TCP);
        assert_eq!(gw.run(&partial(&f6, &d, false), inn).0, XDP_REDIRECT);
        assert_eq!(counts(&gw), (partials(2), 0), "partial IPv6 SYN");

        let bad = with_tcp_check(frame(&f, &d), true, 0x1234);
        assert_eq!(gw.run(&bad, inn).0, XDP_REDIRECT);
        assert_eq!(counts(&gw), (partials(2), 1), "corrupt SYN");

        // Not checked: segments that are not SYNs, and SYNs longer than the check.
        let ack = Shape {
            tcp_flags: ACK,
            ..d.clone()
        };
        gw.run(&partial(&f, &ack, true), inn);
        let long = Shape {
            payload: 42,
            ..d.clone()
        };
        gw.run(&partial(&f, &long, true), inn);
        assert_eq!(
            counts(&gw),
            (partials(2), 1),
            "ACKs and long SYNs are not checked"
        );
    });
}

/// An older agent pinned the reason and event counters with fewer entries (before
/// `EgressNotXdp` and the checksum events): the new program gets maps of its own
/// size, so every counter can be read and counts.
#[test]
fn counter_maps_pinned_smaller_by_an_older_agent_are_replaced() {
    use aya::maps::PerCpuArray;
    use keystone_agent::dataplane::{AyaDataplane, Dataplane, LoadOptions};
    use keystone_common::names;

    // (The maps are the same at both hooks; the counters it reads count at XDP.)
    in_netns_at(&[Hook::Xdp], || {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        std::fs::create_dir_all(&pin_dir).unwrap();
        for (map, entries) in [
            (names::REASON_STATS, Reason::COUNT - 1),
            (names::EVENT_STATS, Event::COUNT - 2),
        ] {
            let old = PerCpuArray::<_, u64>::create(entries, 0).expect("create an old map");
            old.pin(pin_dir.join(map)).expect("pin it");
        }
        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over smaller counter maps: {e}"));
        let mut gw = Gateway::with(dp, bpffs);
        gw.apply(&[vip(
            "nat",
            ep(vip4(100), 80, PROTO_TCP),
            mode::NAT,
            vec![backend("n", ep(backend4(0), 8080, PROTO_TCP), 1)],
        )]);
        let out = gw.out_index;
        set_flags(&mut gw, out, 0);
        let f = flow("198.18.0.2:44000", "198.18.0.100:80", PROTO_TCP);
        let input = partial(&f, &Shape::default(), true);
        assert_eq!(gw.run(&input, gw.in_index).0, XDP_PASS);
        let c = gw.dp.counters().unwrap_or_else(|e| panic!("counters: {e}"));
        assert_eq!(c.reasons[Reason::EgressNotXdp as usize], 1);
        assert_eq!(c.events[Event::SynChecksumPartial as usize], 1);
    });
}

/// The agent writes each interface's flags after attaching, keeps them pinned across a
/// restart, and an agent taking over the links of an older one that wrote none infers
/// them from the device (a veth has native XDP: a redirect target).
#[test]
fn interface_flags_are_written_on_attach_and_inferred_for_links_of_older_agents() {
    use aya::maps::{Array, Map, MapData};
    use keystone_agent::dataplane::{AyaDataplane, Dataplane, LoadOptions};
    use keystone_common::names;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let opts = LoadOptions {
            interfaces: vec![IN_IF.into()],
            ..LoadOptions::new(&pin_dir)
        };
        let flags_of = |ifindex: u32| -> u32 {
            let map = Map::from_map_data(MapData::from_pin(pin_dir.join(names::IFACES)).unwrap())
                .unwrap();
            let array: Array<MapData, u32> = map.try_into().unwrap();
            array.get(&ifindex, 0).unwrap()
        };
        let (inn, out) = (ifindex(IN_IF), ifindex(OUT_IF));
        for round in ["fresh", "restart", "older agent's pins"] {
            if round == "older agent's pins" {
                std::fs::remove_file(pin_dir.join(names::IFACES)).unwrap();
            }
            let mut dp =
                AyaDataplane::load(opts.clone()).unwrap_or_else(|e| panic!("{round}: load: {e}"));
            assert_eq!(flags_of(inn), iface_flags::REDIRECT_TARGET, "{round}");
            assert_eq!(flags_of(out), 0, "{round}: not attached, not a target");
            dp.shutdown(true).unwrap();
        }
        AyaDataplane::load(opts).unwrap().detach().unwrap();
    });
}
