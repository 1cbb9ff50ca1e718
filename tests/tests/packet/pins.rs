//! Pinned maps: reuse, removal, migration of older layouts, configured sizes,
//! and loads that fail part way.

use super::*;
use crate::{
    conns::Pair,
    l4_counters::{l4, l4_deltas},
};

#[test]
fn pinned_maps_are_reused_and_removed_on_detach() {
    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let v = ep(vip4(100), 80, PROTO_TCP);
        let spec = vec![vip(
            "v",
            v,
            mode::NAT,
            (0..3)
                .map(|i| backend("b", ep(backend4(i), 8080, PROTO_TCP), 1))
                .collect(),
        )];
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let opts = LoadOptions {
            interfaces: vec![IN_IF.into()],
            xdp_mode: attach_mode(),
            ..LoadOptions::new(&pin_dir)
        };

        let mut dp = AyaDataplane::load(opts.clone()).unwrap_or_else(|e| panic!("first load: {e}"));
        assert!(!dp.reused_maps());
        dp.apply(&spec).unwrap();
        let slots: Vec<_> = spec[0]
            .backends
            .iter()
            .map(|b| dp.backend_slot(&v, &b.endpoint))
            .collect();
        let link = hook().link_pin(&pin_dir, IN_IF);
        assert!(link.exists(), "link pinned at {}", link.display());
        dp.shutdown(true).unwrap();
        drop(dp);
        assert_eq!(
            attached_programs(IN_IF, hook()),
            1,
            "kept forwarding: the program stays attached"
        );

        // A second agent picks up the pins (and the pinned link) and the same slots.
        let mut dp = AyaDataplane::load(opts).unwrap_or_else(|e| panic!("second load: {e}"));
        assert!(dp.reused_maps(), "maps from the first run are reused");
        dp.apply(&spec).unwrap();
        let again: Vec<_> = spec[0]
            .backends
            .iter()
            .map(|b| dp.backend_slot(&v, &b.endpoint))
            .collect();
        assert_eq!(slots, again, "backend slots survive an agent restart");
        assert!(dp.predict(&v, &f.key()).is_some());
        dp.detach().unwrap_or_else(|e| panic!("detach: {e}"));
        let left: Vec<_> = std::fs::read_dir(&pin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "pins left after detach: {left:?}");
        assert_eq!(attached_programs(IN_IF, hook()), 0, "detached from {IN_IF}");
    });
}

/// The pinned objects' kernel ids by pin name (a link: the program it runs), and the
/// XDP program `IN_IF` runs: equal snapshots mean nothing was replaced. (The loads
/// here attach XDP, at either hook: only XDP refuses a second program.)
fn pinned_state(
    pin_dir: &std::path::Path,
) -> (std::collections::BTreeMap<String, u32>, Option<u64>) {
    use aya::{
        maps::MapInfo,
        programs::{
            ProgramInfo,
            links::{FdLink, PinnedLink},
        },
    };
    let mut ids = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(pin_dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let id = if name.starts_with("link_") || name.starts_with("tc_link_") {
            FdLink::from(PinnedLink::from_pin(&path).unwrap())
                .info()
                .unwrap()
                .program_id()
        } else if Hook::ALL.iter().any(|h| h.program() == name) {
            ProgramInfo::from_pin(&path).unwrap().id()
        } else {
            MapInfo::from_pin(&path).unwrap().id()
        };
        ids.insert(name, id);
    }
    let out = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", IN_IF])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (ids, json[0]["xdp"]["prog"]["id"].as_u64())
}

/// A load that fails part-way (attaching to an interface another data plane holds)
/// undoes itself: into a fresh pin directory it leaves no pin and no program on the
/// interface it had already attached to; over a data plane an earlier agent left
/// pinned it leaves every pin on the same object and the links on the old program.
#[test]
fn a_load_that_fails_part_way_undoes_itself() {
    use keystone_agent::dataplane::LoadError;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let blocker = AyaDataplane::load(LoadOptions {
            interfaces: vec![OUT_IF.into()],
            ..LoadOptions::new(bpffs.dir.join("other"))
        })
        .unwrap_or_else(|e| panic!("the other data plane: {e}"));
        let both = LoadOptions {
            interfaces: vec![IN_IF.into(), OUT_IF.into()],
            ..LoadOptions::new(&pin_dir)
        };
        let refused = |what: &str| {
            let err = AyaDataplane::load(both.clone()).expect_err(what);
            assert!(
                matches!(&err, LoadError::Attach { interface, .. } if interface == OUT_IF),
                "{what}: {err}"
            );
        };

        refused("a fresh load onto an interface another data plane holds");
        // Removing the last reference to a link detaches it in a kernel worker, a
        // moment later on a loaded machine: wait (bounded) for the program to go.
        let r = keystone_lab::wait_for(
            "the refused load's program to leave the interface",
            std::time::Duration::from_secs(10),
            || {
                let now = pinned_state(&pin_dir);
                Ok(if now == (Default::default(), None) {
                    keystone_lab::Probe::Ready(())
                } else {
                    keystone_lab::Probe::NotYet(format!("{now:?}"))
                })
            },
        );
        r.unwrap_or_else(|e| panic!("{e}"));
        assert!(!pin_dir.exists(), "the pin directory it created stays");

        let mut dp = AyaDataplane::load(LoadOptions {
            interfaces: vec![IN_IF.into()],
            ..LoadOptions::new(&pin_dir)
        })
        .unwrap_or_else(|e| panic!("the first agent's load: {e}"));
        // Only nat: a dsr backend behind OUT_IF, where this plane is not attached, is
        // refused (it could not be redirected there).
        let nat: Vec<_> = case_config()
            .into_iter()
            .filter(|v| v.mode == mode::NAT)
            .collect();
        dp.apply(&nat).unwrap();
        dp.shutdown(true).unwrap();
        drop(dp);
        let before = pinned_state(&pin_dir);
        assert!(before.1.is_some(), "the first agent left {IN_IF} attached");

        refused("a load over a pinned data plane");
        assert_eq!(
            pinned_state(&pin_dir),
            before,
            "the pinned data plane changed"
        );
        drop(blocker);
    });
}

/// The connection table has the configured size; a restart with the same size keeps
/// its entries, one with another size replaces it (the pinned map would otherwise
/// silently keep the old size).
#[test]
fn the_connection_table_takes_the_configured_size() {
    use keystone_agent::dataplane::Limits;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let conns = pin_dir.join(keystone_common::names::CONNS);
        let size = || {
            aya::maps::MapData::from_pin(&conns)
                .and_then(|m| m.info())
                .unwrap_or_else(|e| panic!("pinned {}: {e}", conns.display()))
                .max_entries()
        };
        let spec = case_config();
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let load = |entries| {
            let mut dp = AyaDataplane::load(LoadOptions {
                limits: Limits {
                    conn_table_entries: entries,
                    ..Limits::default()
                },
                ..LoadOptions::new(&pin_dir)
            })
            .unwrap_or_else(|e| panic!("load with {entries} entries: {e}"));
            dp.apply(&spec).unwrap();
            dp
        };
        let pinned = |dp: &AyaDataplane| dp.conn(&f.key()).expect("read CONNS").is_some();

        let dp = load(1024);
        assert_eq!(size(), 1024);
        run_frame(&dp, &frame(&f, &Shape::default()), 0);
        assert!(pinned(&dp), "the flow is tracked");
        drop(dp);

        let dp = load(1024);
        assert!(pinned(&dp), "same size: the table and its entries are kept");
        drop(dp);

        let dp = load(4096);
        assert_eq!(size(), 4096, "a new size replaces the pinned table");
        assert!(!pinned(&dp), "the replaced table starts empty");
        dp.detach().unwrap_or_else(|e| panic!("detach: {e}"));
    });
}

/// Upgrading from an agent that pinned the reverse-NAT map as `KS_REVERSE_V1` (no
/// backend slot): `load` fills `KS_REVERSE_V2` from it, with each backend's slot from
/// the reused BACKENDS map, before the new program runs, so replies are translated
/// (and counted for the right backend) before the first `apply`; V1 is unpinned.
#[test]
fn a_pinned_v1_reverse_map_is_migrated_on_load() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use keystone_common::{
        ReverseNat, legacy::ReverseNatV1, limits::ring::DEFAULT_MAX_BACKENDS, names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let v = ep(vip4(100), 80, PROTO_TCP);
        let b0 = ep(backend4(0), 8080, PROTO_TCP);
        let spec = vec![vip("v", v, mode::NAT, vec![backend("b0", b0, 1)])];
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&spec).unwrap();
        let slot = dp.backend_slot(&v, &b0).expect("b0 has a slot");
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(pin_dir.join(name)).unwrap()).unwrap()
        };
        let v2: BpfHashMap<MapData, Endpoint, ReverseNat> =
            open(names::REVERSE).try_into().unwrap();
        let vip_index = v2.get(&b0, 0).expect("b0's reverse entry").vip_index;
        drop(v2);
        dp.shutdown(true).unwrap();
        drop(dp);

        // What an older agent leaves behind: REVERSE as V1, and no V2.
        std::fs::remove_file(pin_dir.join(names::REVERSE)).unwrap();
        let mut v1 = BpfHashMap::<MapData, Endpoint, ReverseNatV1>::create(DEFAULT_MAX_BACKENDS, 0)
            .expect("create a V1 map");
        v1.insert(b0, ReverseNatV1 { vip: v, vip_index }, 0)
            .unwrap();
        // `pin` consumes the map; the pin keeps it alive.
        v1.pin(pin_dir.join(names::REVERSE_V1)).unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over a V1 map: {e}"));
        assert!(
            !pin_dir.join(names::REVERSE_V1).exists(),
            "the V1 map stays pinned after the migration"
        );
        let v2: BpfHashMap<MapData, Endpoint, ReverseNat> =
            open(names::REVERSE).try_into().unwrap();
        assert_eq!(
            v2.get(&b0, 0).expect("migrated entry"),
            ReverseNat {
                vip: v,
                vip_index,
                backend_slot: slot
            }
        );
        let gw = Gateway::with(dp, bpffs);
        // No apply yet: the reply is translated from the migrated entry alone.
        let reply = frame(
            &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
            &Shape {
                dst_mac: OUT_MAC,
                src_mac: backend_mac(0),
                tcp_flags: SYN | ACK,
                ..Shape::default()
            },
        );
        let before = gw.counters();
        let (action, out) = gw.run(&reply, gw.out_index);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse_flow(&out).src, v.socket_addr());
        assert_eq!(
            l4_deltas(&before, &gw.counters()),
            vec![(b0.socket_addr(), l4(0, 1, 0, 0, 0))]
        );
    });
}

/// Upgrading from an agent whose connection table was `KS_CONNS_V1` (backend and
/// generation only): `load` copies its entries into `KS_CONNS_V2` with an unknown
/// state before the new program runs, so established flows keep their backend across
/// the upgrade and a weight change; their next client packet shows them established,
/// from then on a SYN does not move them either. The old L4 counters
/// (`KS_BACKEND_L4_V1`) are replaced; both V1 maps are unpinned.
#[test]
fn a_pinned_v1_connection_table_is_migrated_on_load() {
    use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
    use keystone_common::{
        FlowKey, FlowState,
        legacy::{FlowStateV1, L4CountersV1},
        limits::ring::DEFAULT_MAX_BACKENDS,
        names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let pair = Pair::new();
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&pair.spec(1, 0)).unwrap();
        run_frame(&dp, &frame(&f, &Shape::default()), 0);
        let pinned = dp.conn(&f.key()).unwrap().expect("the flow is tracked");
        assert_eq!(Some(pinned.backend), dp.backend_slot(&pair.v, &pair.b0));
        dp.shutdown(true).unwrap();
        drop(dp);

        // What an older agent leaves behind: V1 maps, and no V2.
        for name in [names::CONNS, names::BACKEND_L4] {
            std::fs::remove_file(pin_dir.join(name)).unwrap();
        }
        let mut v1 = BpfHashMap::<MapData, FlowKey, FlowStateV1>::create(1024, 0).unwrap();
        let old = FlowStateV1 {
            backend: pinned.backend,
            generation: pinned.generation,
        };
        v1.insert(f.key(), old, 0).unwrap();
        v1.pin(pin_dir.join(names::CONNS_V1)).unwrap();
        PerCpuArray::<MapData, L4CountersV1>::create(DEFAULT_MAX_BACKENDS, 0)
            .unwrap()
            .pin(pin_dir.join(names::BACKEND_L4_V1))
            .unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over V1 maps: {e}"));
        for name in [names::CONNS_V1, names::BACKEND_L4_V1] {
            assert!(!pin_dir.join(name).exists(), "{name} is still pinned");
        }
        assert_eq!(
            dp.conn(&f.key()).unwrap(),
            Some(FlowState::pinned(pinned.backend, pinned.generation)),
            "migrated entry, state unknown"
        );
        let mut gw = Gateway::with(dp, bpffs);
        gw.apply(&pair.spec(0, 1));
        let to0 = pair.b0.socket_addr();
        assert_eq!(send_established(&gw, &f), to0, "moved by the upgrade");
        assert_eq!(send(&gw, &f), to0, "a SYN moved the migrated flow");
    });
}

/// Three VIPs on `backend4(0..)` with small tables, so the later ones sit at non-zero
/// places in the ring array.
fn three_small_vips() -> Vec<VipSpec> {
    (0..3u8)
        .map(|v| {
            let mut spec = vip(
                "small",
                ep(vip4(120 + v), 80, PROTO_TCP),
                mode::NAT,
                (0..2)
                    .map(|b| backend("b", ep(backend4(b), 9000 + u16::from(v), PROTO_TCP), 1))
                    .collect(),
            );
            spec.ring_size = 1009;
            spec
        })
        .collect()
}

/// `limits` size the maps at load; tables are placed in the ring array by the agent
/// (the kernel follows `VipInfo::ring_base`); a pinned data plane of other sizes is
/// refused with the field named, and reused at the same sizes.
#[test]
fn configured_limits_size_the_maps_and_pinned_sizes_must_match() {
    use aya::{maps::MapInfo, programs::ProgramInfo};
    use keystone_agent::dataplane::{ApplyError, Limits, aya_dataplane::sized_maps};
    use keystone_common::names;

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let limits = Limits {
            max_vips: 3,
            max_backends: 6,
            ring_entries: 6 * 1009,
            conn_table_entries: 1000,
        };
        let opts = LoadOptions {
            limits,
            ..LoadOptions::new(&pin_dir)
        };
        let mut dp = AyaDataplane::load(opts.clone()).unwrap_or_else(|e| panic!("load: {e}"));
        // The program's own maps, for those not pinned (the next-hop cache); the
        // kernel keeps 15 characters of a name.
        let program_maps: Vec<MapInfo> = ProgramInfo::from_pin(pin_dir.join(names::PROGRAM))
            .and_then(|p| p.map_ids())
            .unwrap_or_else(|e| panic!("the pinned program's maps: {e}"))
            .expect("map ids readable as root")
            .into_iter()
            .map(|id| MapInfo::from_id(id).unwrap_or_else(|e| panic!("map {id}: {e}")))
            .collect();
        for (map, field, entries) in sized_maps(&limits) {
            let pin = pin_dir.join(map);
            let max_entries = if pin.exists() {
                MapInfo::from_pin(pin).unwrap().max_entries()
            } else {
                let kernel_name = &map[..map.len().min(15)];
                program_maps
                    .iter()
                    .find(|m| m.name_as_str() == Some(kernel_name))
                    .unwrap_or_else(|| panic!("{map} is neither pinned nor used by the program"))
                    .max_entries()
            };
            assert_eq!(max_entries, entries, "{map} (limits.{field})");
        }
        let specs = three_small_vips();
        dp.apply(&specs).unwrap_or_else(|e| panic!("apply: {e}"));
        let mut gw = Gateway::with(dp, bpffs);
        // After a weight change every VIP's live table is its second one.
        let mut changed = specs.clone();
        for spec in &mut changed {
            spec.backends[0].weight = 3;
        }
        gw.apply(&changed);
        let mut rng = Rng(0x7363_616c_6500_0001);
        for i in 0..600 {
            let spec = &changed[i % 3];
            let f = random_flow(&mut rng, spec.vip.socket_addr(), PROTO_TCP);
            let want = gw.dp.predict(&spec.vip, &f.key()).expect("prediction");
            assert_eq!(send(&gw, &f), want.socket_addr(), "flow #{i} {f:?}");
        }
        // More than fits is refused before any write.
        let mut four = changed.clone();
        four.push(vip(
            "fourth",
            ep(vip4(130), 80, PROTO_TCP),
            mode::NAT,
            vec![],
        ));
        let err = gw.dp.apply(&four).expect_err("a 4th VIP");
        assert!(
            matches!(err, ApplyError::TooManyVips { max: 3, .. }),
            "{err}"
        );

        gw.dp.shutdown(true).unwrap();
        let Gateway { dp, _bpffs, .. } = gw;
        drop(dp);
        let err = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .expect_err("default limits over pins of other sizes");
        assert!(err.to_string().contains("limits.max_vips is 32"), "{err}");
        let dp = AyaDataplane::load(opts).unwrap_or_else(|e| panic!("reload same limits: {e}"));
        assert!(dp.reused_maps());
        dp.detach().unwrap();
        drop(_bpffs);
    });
}

/// Upgrading from an agent whose VIP map was `KS_VIPS_V1` (tables at fixed stripes of
/// 65,537): `load` fills `KS_VIPS_V2` with each live table's place made explicit,
/// before the new program runs, so new flows keep their picks before the first
/// `apply`; V1 is unpinned, and the first apply does not write over the live table.
#[test]
fn a_pinned_v1_vip_map_is_migrated_on_load() {
    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use keystone_common::{
        VipInfo,
        legacy::{VipInfoV1, v1_ring_base},
        limits::vip::DEFAULT_MAX_VIPS,
        names,
    };

    in_netns(|| {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("ks");
        let specs = three_small_vips();
        let mut dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("first load: {e}"));
        dp.apply(&specs).unwrap();
        let mut rng = Rng(0x7363_616c_6500_0002);
        let flows: Vec<(usize, Flow, Endpoint)> = (0..300)
            .map(|i| {
                let spec = &specs[i % 3];
                let f = random_flow(&mut rng, spec.vip.socket_addr(), PROTO_TCP);
                (
                    i % 3,
                    f,
                    dp.predict(&spec.vip, &f.key()).expect("prediction"),
                )
            })
            .collect();
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(pin_dir.join(name)).unwrap()).unwrap()
        };
        // What an older agent leaves behind: VIPS as V1, each live table at its
        // fixed stripe, and no V2.
        let v2: BpfHashMap<MapData, Endpoint, VipInfo> = open(names::VIPS).try_into().unwrap();
        let infos: Vec<VipInfo> = specs.iter().map(|s| v2.get(&s.vip, 0).unwrap()).collect();
        drop(v2);
        dp.shutdown(true).unwrap();
        drop(dp);
        std::fs::remove_file(pin_dir.join(names::VIPS)).unwrap();
        let mut rings: Array<MapData, u32> = open(names::RINGS).try_into().unwrap();
        let mut v1 = BpfHashMap::<MapData, Endpoint, VipInfoV1>::create(DEFAULT_MAX_VIPS, 0)
            .expect("create a V1 map");
        for (spec, info) in specs.iter().zip(&infos) {
            let table: Vec<u32> = (0..info.ring_size)
                .map(|i| rings.get(&(info.ring_base + i), 0).unwrap())
                .collect();
            // Scrub the V2 place so only the V1 stripe can give the right answer.
            for i in 0..info.ring_size {
                rings.set(info.ring_base + i, u32::MAX, 0).unwrap();
            }
            let base = v1_ring_base(info.index, info.ring_slot);
            for (i, slot) in table.into_iter().enumerate() {
                rings.set(base + i as u32, slot, 0).unwrap();
            }
            let old = VipInfoV1 {
                index: info.index,
                mode: info.mode,
                flags: info.flags,
                ring_slot: info.ring_slot,
                ring_size: info.ring_size,
            };
            v1.insert(spec.vip, old, 0).unwrap();
        }
        drop(rings);
        v1.pin(pin_dir.join(names::VIPS_V1)).unwrap();

        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir))
            .unwrap_or_else(|e| panic!("load over a V1 map: {e}"));
        assert!(!pin_dir.join(names::VIPS_V1).exists(), "V1 still pinned");
        let mut gw = Gateway::with(dp, bpffs);
        for (_, f, want) in &flows {
            assert_eq!(send(&gw, f), want.socket_addr(), "before apply: {f:?}");
        }
        gw.apply(&specs);
        for (v, f, want) in &flows {
            assert_eq!(send(&gw, f), want.socket_addr(), "after apply: {f:?}");
            assert_eq!(gw.dp.predict(&specs[*v].vip, &f.key()), Some(*want));
        }
    });
}

#[test]
fn load_refuses_a_pin_dir_outside_bpffs() {
    let dir = std::env::temp_dir().join(format!("keystone-not-bpffs-{}", std::process::id()));
    let err = AyaDataplane::load(LoadOptions::new(&dir)).expect_err("a tmpfs dir is not a bpffs");
    let _ = std::fs::remove_dir(&dir);
    let msg = err.to_string();
    assert!(
        msg.contains("mount -t bpf bpf"),
        "error should say how to fix it: {msg}"
    );
}
