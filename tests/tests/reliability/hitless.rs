//! Hitless agent restart and upgrade under traffic: the kernel's view of links,
//! maps and programs, and the held flows' connection-table entries.

use super::*;

/// `POST /tenants/web/weights`, which must answer 200.
fn set_weights(lab: &Lab, weights: &[(&str, u32)]) {
    let body =
        serde_json::json!({ "weights": weights.iter().copied().collect::<BTreeMap<_, _>>() })
            .to_string();
    let (code, answer) = ok(
        lab,
        "POST /tenants/web/weights",
        lab.admin_send(
            "POST",
            "/tenants/web/weights",
            Auth::Token,
            &[],
            Some(&body),
        ),
    );
    assert_eq!(
        code,
        200,
        "POST /tenants/web/weights {body}: {answer}\n{}",
        lab.agent_diagnostics()
    );
}

/// What the kernel holds for the gateway's data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KernelView {
    /// Interface → the XDP program it runs.
    interface_programs: BTreeMap<String, u32>,
    /// Interface → (link id, program id) of the bpf_link pinned for it.
    links: BTreeMap<String, (u32, u32)>,
    /// Pinned map name → map id.
    maps: BTreeMap<&'static str, u32>,
}

impl KernelView {
    /// The data plane as the kernel holds it, the program attached at `hook`
    /// (at tc the interface runs what its tcx link runs; no XDP program may be left).
    fn read(lab: &Lab, hook: Hook) -> KernelView {
        let links: BTreeMap<String, (u32, u32)> = lab
            .gateway_interfaces()
            .into_iter()
            .map(|iface| {
                let pin = hook.link_pin(&lab.pin_dir(), &iface);
                let link: FdLink = PinnedLink::from_pin(&pin)
                    .unwrap_or_else(|e| panic!("opening the pinned link {}: {e}", pin.display()))
                    .into();
                let info = link
                    .info()
                    .unwrap_or_else(|e| panic!("link info of {}: {e}", pin.display()));
                (iface, (info.id(), info.program_id()))
            })
            .collect();
        let interface_programs = match hook {
            Hook::Xdp => interface_programs(lab),
            Hook::Tc => {
                let xdp = ok(lab, "ip link show", lab.xdp_programs());
                assert!(
                    xdp.values().all(Option::is_none),
                    "attach: tc, yet XDP programs run: {xdp:?}"
                );
                links
                    .iter()
                    .map(|(i, (_, prog))| (i.clone(), *prog))
                    .collect()
            }
        };
        let maps = MAP_NAMES
            .into_iter()
            .map(|name| {
                let data = MapData::from_pin(lab.pin_dir().join(name))
                    .unwrap_or_else(|e| panic!("opening the pinned map {name}: {e}"));
                let id = data
                    .info()
                    .unwrap_or_else(|e| panic!("map info of {name}: {e}"))
                    .id();
                (name, id)
            })
            .collect();
        KernelView {
            interface_programs,
            links,
            maps,
        }
    }

    /// The one program every interface and pinned link runs.
    fn program(&self) -> u32 {
        let ids: BTreeSet<u32> = self
            .interface_programs
            .values()
            .copied()
            .chain(self.links.values().map(|(_, prog)| *prog))
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "interfaces and pinned links should all run one program: {self:?}"
        );
        *ids.first().expect("one id")
    }
}

/// The ids of the maps program `id` uses.
fn program_maps(id: u32) -> BTreeSet<u32> {
    for p in loaded_programs() {
        let p = p.unwrap_or_else(|e| panic!("listing BPF programs: {e}"));
        if p.id() == id {
            return p
                .map_ids()
                .unwrap_or_else(|e| panic!("map ids of program {id}: {e}"))
                .unwrap_or_else(|| panic!("the kernel does not report program {id}'s maps"))
                .into_iter()
                .collect();
        }
    }
    panic!("no BPF program with id {id}")
}

/// The local ports of the connections process `pid` holds to the VIP (`ss` in the
/// client namespace).
fn held_ports(lab: &Lab, pid: u32) -> BTreeSet<u16> {
    let out = ok(
        lab,
        "ss",
        lab.exec(
            lab.client_ns(),
            "ss",
            &["-Htnp", "state", "established", "dst", &vip().to_string()],
        ),
    );
    let local = format!("{CLIENT4}:");
    out.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(local.as_str()))
                .and_then(|port| port.parse().ok())
        })
        .collect()
}

/// The connection-table entry of each client port's flow to the VIP (absent: `None`).
fn conn_entries(lab: &Lab, ports: &BTreeSet<u16>) -> BTreeMap<u16, Option<FlowState>> {
    let conns: HashMap<MapData, FlowKey, FlowState> = open_pinned(lab, names::CONNS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::CONNS));
    ports
        .iter()
        .map(|&port| {
            let key = FlowKey {
                src: ipv4_words(CLIENT4.octets()),
                dst: ipv4_words(VIP4.octets()),
                src_port: port.to_be(),
                dst_port: vip().port().to_be(),
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                _pad: [0; 2],
            };
            (port, conns.get(&key, 0).ok())
        })
        .collect()
}

/// How the running agent is taken away and replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replacement {
    /// SIGKILL (as in a crash), then the agent started again.
    Killed,
    /// SIGTERM to an agent run with `--keep-forwarding` (it exits leaving program,
    /// links and maps pinned), then a new agent process, which loads its own program
    /// and swaps it into the pinned links.
    Upgraded,
}

/// Held keep-alive connections, each echoing `ECHO_BYTES` fresh bytes every
/// `HOLD_INTERVAL_MS`.
const HELD: u32 = 16;
const HOLD_INTERVAL_MS: u32 = 100;
const ECHO_BYTES: usize = 8192;
/// New connections per ks-client run in the background loop.
const BATCH: u32 = 100;

/// Blue and green serve `web`; held connections are opened while only green takes new
/// ones, then the weights move every new connection to blue: from then on the held
/// connections stay on green only through the connection table (Maglev would send
/// their packets to blue, which would reset them). Across the agent's replacement,
/// a client loop of new connections and the held echo connections must see no error.
fn hitless(replacement: Replacement, hook: Hook) {
    let agent_args: &[&str] = match replacement {
        Replacement::Killed => &[],
        Replacement::Upgraded => &["--keep-forwarding"],
    };
    // Health checks as in production (a restarted agent starts with every backend's
    // health unknown), but slow to call a backend down.
    let health = HealthCheck::tolerant_http();
    let setup = Setup {
        agent_args,
        ..Setup::nat(&["blue", "green"])
    };
    let (mut lab, _) = lab_with_agent(keystone_lab::test_bins!(), setup, |lab| AgentConfig {
        attach: (hook == Hook::Tc).then(|| "tc".to_owned()),
        ..lab.agent_config(vec![
            tcp_tenant(lab, "web", vip(), &[("blue", 1), ("green", 1)]).with_health(health),
        ])
    });
    let vip = vip();

    set_weights(&lab, &[("blue", 0), ("green", 1)]);
    let r = lab.spawn_echo_hold("hold", vip, HELD, 150, HOLD_INTERVAL_MS, ECHO_BYTES);
    let hold_pid = ok(&lab, "starting ks-client --hold", r);
    let r = lab.held_answers("hold", HELD, 0, 3, SHORT);
    let held_on = ok(&lab, "held connections answering", r);
    assert!(
        held_on.iter().all(|b| b == "green"),
        "held connections opened while only green takes new ones: {held_on:?}"
    );
    set_weights(&lab, &[("blue", 1), ("green", 0)]);
    let s = ok(&lab, "new connections", lab.tcp_connections(vip, 200));
    assert!(
        s.failed == 0 && s.by_backend.keys().eq(["blue"]),
        "after the weights moved to blue, new connections: {s:?}\n{}",
        lab.agent_diagnostics()
    );

    let traffic = ok(
        &lab,
        "starting the client loop",
        lab.client_loop(vip, BATCH, Duration::from_secs(150)),
    );
    batches_after(&lab, &traffic, Instant::now(), 2);

    let ports = held_ports(&lab, hold_pid);
    assert_eq!(
        ports.len(),
        HELD as usize,
        "ss shows {ports:?} as the held connections' ports\n{}",
        lab.agent_diagnostics()
    );
    let entries_before = conn_entries(&lab, &ports);
    let green_slots: BTreeSet<Option<u32>> = entries_before
        .values()
        .map(|e| e.map(|s| s.backend))
        .collect();
    assert!(
        green_slots.len() == 1 && !green_slots.contains(&None),
        "every held flow should have one connection-table entry, all on green's slot: {entries_before:?}"
    );
    let before = KernelView::read(&lab, hook);
    let program_before = before.program();
    let held_seen = hold_events(&lab, "hold").len();

    // The replacement; forwarding runs without an agent from `gone` to `back`.
    let gone = Instant::now();
    match replacement {
        Replacement::Killed => kill_agent(&mut lab),
        Replacement::Upgraded => stop_agent_cleanly(&mut lab),
    }
    let stopped = gone.elapsed();
    batches_after(&lab, &traffic, gone, 2);
    let restart = Instant::now();
    let r = lab.start_agent_with(agent_args);
    ok(&lab, "starting the new agent", r);
    let back = Instant::now();

    let after = KernelView::read(&lab, hook);
    let program_after = after.program();
    let entries_after = conn_entries(&lab, &ports);
    batches_after(&lab, &traffic, back, 3);
    let r = lab.held_answers(
        "hold",
        HELD,
        held_seen,
        3 * 1000 / HOLD_INTERVAL_MS as usize,
        SHORT,
    );
    let held_after = ok(&lab, "held connections answering after the replacement", r);
    let batches = ok(&lab, "the client loop", traffic.stop());
    let events = hold_events(&lab, "hold");
    let r = lab.stop("hold");
    ok(&lab, "stopping ks-client --hold", r);

    // What the client saw.
    let total = ClientLoop::total(&batches);
    let mut agentless = Summary::default();
    let mut after_back = Summary::default();
    for b in &batches {
        if b.started >= gone && b.finished <= back {
            agentless.merge(&b.summary);
        }
        if b.started >= back {
            after_back.merge(&b.summary);
        }
    }
    let echoed = events.iter().filter(|e| e.outcome.is_ok()).count();
    eprintln!(
        "{replacement:?}: no agent ran for {:.0} ms (the old one took {:.0} ms to go, its \
         successor {:.0} ms from start to ready); batches entirely within that window \
         answered {} new connections; in all {} batches {} new connections ({:?}), {} \
         failed; {} held requests echoed {} bytes each, {} errors",
        (back - gone).as_secs_f64() * 1000.0,
        stopped.as_secs_f64() * 1000.0,
        (back - restart).as_secs_f64() * 1000.0,
        agentless.answered(),
        batches.len(),
        total.attempted,
        total.by_backend,
        total.failed,
        echoed,
        ECHO_BYTES,
        events.len() - echoed,
    );
    eprintln!(
        "program {program_before} → {program_after}; links {:?} → {:?}",
        before.links, after.links
    );
    assert!(
        total.failed == 0 && total.answered() > 0,
        "new connections failed around the agent's replacement: {} of {} ({:?})\n{}",
        total.failed,
        total.attempted,
        total.errors,
        lab.agent_diagnostics()
    );
    assert!(
        agentless.answered() > 0,
        "no batch of new connections ran entirely while no agent ran\n{}",
        lab.agent_diagnostics()
    );
    assert!(
        after_back.answered() > 0 && after_back.by_backend.keys().eq(["blue"]),
        "after the replacement, new connections should follow the persisted weights (all on blue): {after_back:?}\n{}",
        lab.agent_diagnostics()
    );
    assert_holds_unbroken(
        &lab,
        "held connections broke or echoed wrong bytes",
        &events,
    );
    assert!(
        held_after.iter().all(|b| b == "green"),
        "held connections after the replacement: {held_after:?} (they stay on green)"
    );

    // What the kernel shows.
    assert_ne!(
        program_before, program_after,
        "the new agent's program should run on every interface: before {before:?}, after {after:?}"
    );
    let link_ids = |v: &KernelView| -> BTreeMap<String, u32> {
        v.links
            .iter()
            .map(|(i, (link, _))| (i.clone(), *link))
            .collect()
    };
    assert_eq!(
        link_ids(&before),
        link_ids(&after),
        "the program must be swapped inside the same bpf_links (BPF_LINK_UPDATE), not detached and attached again"
    );
    assert_eq!(
        before.maps, after.maps,
        "the pinned maps must be reused, not recreated"
    );
    let used = program_maps(program_after);
    // (The tc program reads no interface flags: any device takes its redirects.)
    let pinned: BTreeSet<u32> = after
        .maps
        .iter()
        .filter(|(name, _)| !(hook == Hook::Tc && **name == names::IFACES))
        .map(|(_, id)| *id)
        .collect();
    assert!(
        pinned.is_subset(&used),
        "the new program {program_after} uses maps {used:?}, not all the pinned ones {:?}",
        after.maps
    );
    // The pins (backend slot and generation); the connection state's clock moves on.
    let pins = |entries: &BTreeMap<u16, Option<FlowState>>| -> Vec<Option<(u32, u32)>> {
        entries
            .values()
            .map(|e| e.map(|s| (s.backend, s.generation)))
            .collect()
    };
    assert_eq!(
        pins(&entries_before),
        pins(&entries_after),
        "the held flows' connection-table entries must survive the replacement"
    );
}

/// The agent SIGKILLed and started again: forwarding never stops (the pinned program
/// keeps running while no agent does), no new connection fails, no held connection
/// breaks, and the restarted agent's program takes over the same links and maps.
#[test]
fn agent_sigkill_and_restart_is_hitless() {
    hitless(Replacement::Killed, Hook::Xdp);
}

/// As above with `attach: tc`: the pinned tcx links keep forwarding.
#[test]
fn agent_sigkill_and_restart_at_tc_is_hitless() {
    hitless(Replacement::Killed, Hook::Tc);
}

/// The agent stopped with `--keep-forwarding` and replaced by a new agent process: the
/// new program is swapped into the pinned bpf_links atomically (new program id on
/// every interface, same link ids, same maps, connection-table entries intact), and
/// the client sees no failed or broken connection.
#[test]
fn agent_upgrade_swaps_the_program_in_place_and_is_hitless() {
    hitless(Replacement::Upgraded, Hook::Xdp);
}

/// As above with `attach: tc`: the new tc program is swapped into the pinned tcx links.
#[test]
fn agent_upgrade_at_tc_swaps_the_program_in_place_and_is_hitless() {
    hitless(Replacement::Upgraded, Hook::Tc);
}
