//! Reliability in the namespace lab, with real traffic through real XDP and the real
//! agent. Run them with `cargo xtask test`.
//!
//! * Hitless agent restart and upgrade: while a client opens new connections without
//!   pause and holds keep-alive connections that echo fresh bytes every 100 ms, the
//!   agent is SIGKILLed and started again, or stopped with `--keep-forwarding` and
//!   replaced by a new agent process that swaps its freshly loaded program into the
//!   pinned XDP links. The client sees no failed connection and no broken or corrupted
//!   one; the kernel shows the same bpf_links and maps with a new program in them, and
//!   the held flows' connection-table entries unchanged.
//! * The admin API under load: 100 concurrent clients mix status reads and weight
//!   changes for 30 s; every answer is the one its request calls for (and one the
//!   OpenAPI document lists), and afterwards the kernel's live Maglev table is the one
//!   `keystone_common::maglev` builds for the last accepted write.
//!
//! Every test builds its own lab (unique names, removed on drop, also on panic) and
//! waits by polling with deadlines.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use keystone_agent::dataplane::aya_dataplane::MAP_NAMES;
use keystone_api::DeployState;
use keystone_common::{
    Backend, Endpoint, FAMILY_IPV4, FlowKey, FlowState, PROTO_TCP, VipInfo, backend_flags,
    hash::ipv4_words,
    limits::ring::DEFAULT_RING_SIZE,
    maglev::{self, MaglevBackend},
    names,
};
use keystone_lab::{
    AgentConfig, Auth, ClientLoop, HealthCheck, Lab, Mode, Summary, VIP4,
    helpers::{
        BACKEND_PORT, Setup, assert_holds_unbroken, batches_after, hold_events, kill_agent,
        lab_with_agent, new_lab, stop_agent_cleanly, tcp_tenant, vip, web_lab,
    },
    lab::CLIENT4,
    ok,
};

/// Generous bounds for things that take a second or two.
const SHORT: Duration = Duration::from_secs(30);

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

fn backend_endpoint(lab: &Lab, name: &str) -> Endpoint {
    let b = ok(lab, "backend", lab.backend(name));
    Endpoint::new(SocketAddr::new(b.ipv4.into(), BACKEND_PORT), PROTO_TCP)
}

// ---------------------------------------------------------------------------------
// Reading the gateway's kernel state: the agent's pins and the interfaces.
// ---------------------------------------------------------------------------------

fn open_pinned(lab: &Lab, name: &str) -> Map {
    let data = MapData::from_pin(lab.pin_dir().join(name))
        .unwrap_or_else(|e| panic!("opening the agent's pinned map {name}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

/// The XDP program id each gateway interface runs (each must run one).
fn interface_programs(lab: &Lab) -> BTreeMap<String, u32> {
    ok(lab, "ip link show", lab.xdp_programs())
        .into_iter()
        .map(|(iface, id)| {
            let id = id.unwrap_or_else(|| panic!("{iface} runs no XDP program"));
            (iface, id)
        })
        .collect()
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
    fn read(lab: &Lab) -> KernelView {
        let links = lab
            .gateway_interfaces()
            .into_iter()
            .map(|iface| {
                let pin = lab.pin_dir().join(format!("link_{iface}"));
                let link: FdLink = PinnedLink::from_pin(&pin)
                    .unwrap_or_else(|e| panic!("opening the pinned link {}: {e}", pin.display()))
                    .into();
                let info = link
                    .info()
                    .unwrap_or_else(|e| panic!("link info of {}: {e}", pin.display()));
                (iface, (info.id(), info.program_id()))
            })
            .collect();
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
            interface_programs: interface_programs(lab),
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

/// The VIP's live Maglev table as the kernel reads it: the VIPS entry's live table
/// of the ring array, each entry's backend slot resolved to the backend's endpoint.
fn live_table(lab: &Lab, vip: &Endpoint) -> Vec<Endpoint> {
    let vips: HashMap<MapData, Endpoint, VipInfo> = open_pinned(lab, names::VIPS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::VIPS));
    let info = vips
        .get(vip, 0)
        .unwrap_or_else(|e| panic!("no VIPS entry for {}: {e}", vip.socket_addr()));
    let rings: Array<MapData, u32> = open_pinned(lab, names::RINGS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::RINGS));
    let backends: Array<MapData, Backend> = open_pinned(lab, names::BACKENDS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::BACKENDS));
    let mut by_slot: BTreeMap<u32, Endpoint> = BTreeMap::new();
    (0..info.ring_size)
        .map(|i| {
            let slot = rings
                .get(&(info.ring_base + i), 0)
                .unwrap_or_else(|e| panic!("ring entry {i}: {e}"));
            *by_slot.entry(slot).or_insert_with(|| {
                let b = backends
                    .get(&slot, 0)
                    .unwrap_or_else(|e| panic!("backend slot {slot}: {e}"));
                assert!(
                    b.flags & backend_flags::UP != 0,
                    "ring entry {i} points at slot {slot}, which is not up: {b:?}"
                );
                b.endpoint
            })
        })
        .collect()
}

/// The table `keystone_common::maglev` builds for `weights` at the default size.
fn predicted_table(weights: &[(Endpoint, u32)]) -> Vec<Endpoint> {
    let ids: Vec<MaglevBackend> = weights
        .iter()
        .map(|(e, w)| MaglevBackend {
            id: e.identity(),
            weight: *w,
        })
        .collect();
    maglev::build(&ids, DEFAULT_RING_SIZE)
        .into_iter()
        .map(|i| weights[i as usize].0)
        .collect()
}

// ---------------------------------------------------------------------------------
// Hitless restart and upgrade.
// ---------------------------------------------------------------------------------

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
fn hitless(replacement: Replacement) {
    let agent_args: &[&str] = match replacement {
        Replacement::Killed => &[],
        Replacement::Upgraded => &["--keep-forwarding"],
    };
    // Health checks as in production (a restarted agent starts with every backend's
    // health unknown), but slow to call a backend down: a probe starved of CPU on a
    // busy CI machine must not take green, and its held connections, out.
    let health = HealthCheck {
        timeout: "2s".into(),
        failure_threshold: 5,
        ..HealthCheck::fast_http()
    };
    let setup = Setup {
        agent_args,
        ..Setup::nat(&["blue", "green"])
    };
    let (mut lab, _) = lab_with_agent(keystone_lab::test_bins!(), setup, |lab| {
        lab.agent_config(vec![
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
    let before = KernelView::read(&lab);
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

    let after = KernelView::read(&lab);
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
    let pinned: BTreeSet<u32> = after.maps.values().copied().collect();
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
    hitless(Replacement::Killed);
}

/// The agent stopped with `--keep-forwarding` and replaced by a new agent process: the
/// new program is swapped into the pinned bpf_links atomically (new program id on
/// every interface, same link ids, same maps, connection-table entries intact), and
/// the client sees no failed or broken connection.
#[test]
fn agent_upgrade_swaps_the_program_in_place_and_is_hitless() {
    hitless(Replacement::Upgraded);
}

// ---------------------------------------------------------------------------------
// State the agent must keep: full or read-only disks, restarts with a dead backend.
// ---------------------------------------------------------------------------------

/// A lab whose agent keeps its state on a tmpfs of `bytes` (mounted before it starts).
fn lab_with_small_state_dir(bytes: u64, cfg: impl FnOnce(&Lab) -> AgentConfig) -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let dir = lab.agent_state_dir();
    let r = lab.mount_tmpfs(&dir, bytes);
    ok(&lab, "mounting a tmpfs on the agent's state dir", r);
    let r = lab.start_with_config(BACKEND_PORT, &[], |lab| Ok(cfg(lab)));
    ok(&lab, "starting the backends and keystone-agent", r);
    lab
}

/// `n` new TCP connections to the VIP, which must all be answered by `backend`.
fn assert_new_connections_on(lab: &Lab, what: &str, backend: &str) {
    let s = ok(lab, "TCP connections", lab.tcp_connections(vip(), 200));
    assert!(
        s.failed == 0 && s.by_backend.keys().eq([backend]),
        "{what}: expected every new connection on {backend}, got {:?} ({} failed)\n{}",
        s.by_backend,
        s.failed,
        lab.agent_diagnostics()
    );
}

/// Posts `switch` to `/deployments/blue-green/switch` (`what` names it), waits until
/// it has completed, and checks that new connections land on green.
fn switch_completes(lab: &mut Lab, what: &str, switch: &str) {
    let (code, answer) = admin_json(lab, "POST", "/deployments/blue-green/switch", Some(switch));
    assert_eq!(code, 202, "{what}: {answer}");
    let id = answer["deployment_id"].as_str().expect("an id").to_owned();
    let r = lab.wait_deployment(&id, "finish", SHORT, |d| !d.is_running());
    let done = ok(lab, "waiting for the switch", r);
    assert_eq!(
        done.state,
        DeployState::Completed,
        "{}",
        done.history_table()
    );
    assert_new_connections_on(lab, "after the switch", "green");
}

fn admin_json(lab: &Lab, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (code, answer) = ok(
        lab,
        path,
        lab.admin_send(method, path, Auth::Token, &[], body),
    );
    (
        code,
        serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer)),
    )
}

/// With the state directory full, then read-only, a switch and a weight change are
/// refused with 503 naming the reason and change nothing (new connections stay on
/// blue); `/health` is degraded and names the file, and
/// `keystone_state_write_failures_total` counts the failures. Once the disk takes
/// writes again the switch works and survives a restart.
#[test]
fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let mut lab = lab_with_small_state_dir(256 * 1024, |lab| {
        lab.agent_config(vec![tcp_tenant(
            lab,
            "web",
            vip(),
            &[("blue", 100), ("green", 0)],
        )])
    });
    let dir = lab.agent_state_dir();
    let filler = dir.join("filler");
    let r = keystone_lab::mounts::fill_filesystem(&filler, 1 << 20);
    ok(&lab, "filling the state dir", r);
    let switch = r#"{"service":"web","to":"green","interval":"1s"}"#;
    let weights = r#"{"weights":{"blue":0,"green":100}}"#;
    let refusals = [
        ("POST", "/deployments/blue-green/switch", switch),
        ("POST", "/tenants/web/weights", weights),
    ];
    for (disk, reason) in [
        ("full", "No space left on device"),
        ("read-only", "Read-only file system"),
    ] {
        if disk == "read-only" {
            std::fs::remove_file(&filler).expect("removing the filler");
            let r = lab.set_read_only(&dir, true);
            ok(&lab, "remounting the state dir read-only", r);
        }
        for (method, path, body) in refusals {
            let (code, answer) = admin_json(&lab, method, path, Some(body));
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(
                code == 503 && error.contains("not applied") && error.contains(reason),
                "{method} {path} with the state dir {disk}: HTTP {code} {answer} (want 503 naming '{reason}')\n{}",
                lab.agent_diagnostics()
            );
        }
        assert_new_connections_on(&lab, &format!("after the refusals ({disk} disk)"), "blue");
        let (_, health) = admin_json(&lab, "GET", "/health", None);
        assert!(
            health["status"] == "degraded"
                && health["persistence"]["unsaved"]["state"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason)),
            "/health with the state dir {disk}: {health:#}"
        );
    }
    assert!(
        ok(&lab, "deployments", lab.deployments()).is_empty(),
        "a refused switch left a deployment"
    );
    let (_, metrics) = ok(&lab, "GET /metrics", lab.admin_get("/metrics"));
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"keystone_state_write_failures_total{file="state"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        failures >= 4.0,
        "4 failed state writes, metric says {failures}:\n{metrics}"
    );

    let r = lab.set_read_only(&dir, false);
    ok(&lab, "remounting the state dir read-write", r);
    switch_completes(&mut lab, "the switch once the disk takes writes", switch);
    let (_, health) = admin_json(&lab, "GET", "/health", None);
    assert_eq!(health["status"], "ok", "{health:#}");
    let r = lab.stop_agent();
    ok(&lab, "stopping the agent", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    assert_new_connections_on(&lab, "after a restart", "green");
}

/// The agent restarted (SIGKILL) under load while green's backend is dead and known
/// to be down: no new connection is refused, not even before the restarted agent's
/// first checks, because it starts from the health it saved.
#[test]
fn a_restart_with_a_dead_backend_refuses_no_connection() {
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            lab.agent_config(vec![
                tcp_tenant(lab, "web", vip(), &[("blue", 1), ("green", 1)])
                    .with_health(HealthCheck::fast_http()),
            ])
        },
    );
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green's backend", r);
    let r = keystone_lab::wait_for("green to be down", SHORT, || {
        let json = lab.tenants_json()?;
        let health = json["tenants"][0]["backends"][1]["health"].clone();
        Ok(if health == "down" {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(health.to_string())
        })
    });
    ok(&lab, "waiting for green's health", r);
    let traffic = ok(
        &lab,
        "starting the client loop",
        lab.client_loop(vip(), 100, Duration::from_secs(90)),
    );
    batches_after(&lab, &traffic, Instant::now(), 2);
    let r = lab.kill("agent");
    ok(&lab, "killing the agent", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    batches_after(&lab, &traffic, Instant::now(), 4);
    let batches = ok(&lab, "the client loop", traffic.stop());
    let total = ClientLoop::total(&batches);
    eprintln!(
        "{} batches: {:?}, {} failed",
        batches.len(),
        total.by_backend,
        total.failed
    );
    assert!(
        total.failed == 0 && total.by_backend.keys().eq(["blue"]),
        "new connections around the restart: {:?}, {} of {} failed ({:?})\n{}",
        total.by_backend,
        total.failed,
        total.attempted,
        total.errors,
        lab.agent_diagnostics()
    );
}

// ---------------------------------------------------------------------------------
// The admin API under load.
// ---------------------------------------------------------------------------------

const API_CLIENTS: usize = 100;
const LOAD: Duration = Duration::from_secs(30);
const BACKENDS: [&str; 3] = ["blue", "green", "red"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `GET /status`.
    Status,
    /// `POST /tenants/web/weights` with a valid, unique weight per backend.
    Weights,
    /// `POST /tenants/web/weights` the agent must refuse (all zero, unknown backend).
    BadWeights,
}

impl Kind {
    /// The answer the request calls for.
    fn expected(self) -> u16 {
        match self {
            Kind::Status | Kind::Weights => 200,
            Kind::BadWeights => 422,
        }
    }

    /// (path, method) in the OpenAPI document.
    fn operation(self) -> (&'static str, &'static str) {
        match self {
            Kind::Status => ("/status", "get"),
            Kind::Weights | Kind::BadWeights => ("/tenants/{name}/weights", "post"),
        }
    }
}

/// One request and what came of it.
struct Call {
    kind: Kind,
    started: Instant,
    finished: Instant,
    /// The HTTP status and body, or why there was none.
    outcome: Result<(u16, String), String>,
    /// For `Weights`: blue, green, red.
    weights: Option<[u32; 3]>,
}

/// The status codes the OpenAPI document lists for `path`'s `method`.
fn documented_statuses(path: &str, method: &str) -> BTreeSet<u16> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(keystone_agent::api::OPENAPI).expect("openapi.yaml parses");
    doc["paths"][path][method]["responses"]
        .as_mapping()
        .unwrap_or_else(|| panic!("openapi.yaml has no responses for {method} {path}"))
        .keys()
        .filter_map(|k| match k {
            serde_yaml::Value::String(s) => s.parse().ok(),
            serde_yaml::Value::Number(n) => n.as_u64().map(|n| n as u16),
            _ => None,
        })
        .collect()
}

/// xorshift64: the request mix and the third weight, reproducible per client.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One API client: from a thread in the gateway namespace, requests back to back on
/// one keep-alive connection until `until`: 60 % status reads, 35 % weight changes,
/// 5 % refused weight changes. Client `id`'s `seq`th valid write sets blue to `id + 1`
/// and green to `seq + 1`, so every write is told apart by its weights.
fn api_client(gateway_ns: &str, id: usize, until: Instant) -> Vec<Call> {
    let ns = File::open(format!("/run/netns/{gateway_ns}"))
        .unwrap_or_else(|e| panic!("opening the gateway namespace {gateway_ns}: {e}"));
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering the gateway namespace {gateway_ns}: {e}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Beyond the agent's own 30 s request timeout, whose 408 then says what happened.
        .timeout_global(Some(Duration::from_secs(45)))
        .build()
        .into();
    let base = format!("http://{}", keystone_lab::ADMIN_LISTEN);
    let auth = format!("Bearer {}", keystone_lab::ADMIN_TOKEN);
    let mut rng = 0x6b65_7973_746f_6e65 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut calls = Vec::new();
    let mut seq = 0u32;
    while Instant::now() < until {
        let roll = next_random(&mut rng) % 100;
        let (kind, weights, body) = if roll < 60 {
            (Kind::Status, None, None)
        } else if roll < 95 {
            seq += 1;
            let w = [
                id as u32 + 1,
                seq,
                (next_random(&mut rng) % 1000) as u32 + 1,
            ];
            let body = serde_json::json!({
                "weights": { "blue": w[0], "green": w[1], "red": w[2] }
            });
            (Kind::Weights, Some(w), Some(body))
        } else if roll < 97 {
            let body = serde_json::json!({ "weights": { "blue": 0, "green": 0, "red": 0 } });
            (Kind::BadWeights, None, Some(body))
        } else {
            let body = serde_json::json!({ "weights": { "purple": 1 } });
            (Kind::BadWeights, None, Some(body))
        };
        let started = Instant::now();
        let result = match &body {
            None => agent
                .get(format!("{base}/status"))
                .header("Authorization", &auth)
                .call(),
            Some(body) => agent
                .post(format!("{base}/tenants/web/weights"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes()),
        };
        let outcome = result
            .and_then(|mut r| {
                let status = r.status().as_u16();
                r.body_mut().read_to_string().map(|text| (status, text))
            })
            .map_err(|e| e.to_string());
        calls.push(Call {
            kind,
            started,
            finished: Instant::now(),
            outcome,
            weights,
        });
    }
    calls
}

/// The `q` quantile (nearest rank) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// 100 API clients mix status reads and weight changes (and a few weight changes the
/// agent must refuse) for 30 s against the agent of a lab. Every request gets the
/// answer it calls for — 200, or 422 for the refused ones — and that status is one
/// the OpenAPI document lists for the endpoint. Afterwards the effective weights are
/// those of a write that no other accepted write followed (the last one applied),
/// and the live Maglev table in the kernel's pinned maps is the one
/// `keystone_common::maglev` builds for them. Latency p50/p99 per request kind is
/// printed, not asserted.
#[test]
fn admin_api_under_100_concurrent_clients() {
    let (lab, _) = lab_with_agent(keystone_lab::test_bins!(), Setup::nat(&BACKENDS), |lab| {
        lab.agent_config(vec![tcp_tenant(
            lab,
            "web",
            vip(),
            &BACKENDS.map(|b| (b, 1)),
        )])
    });
    let documented: BTreeMap<Kind, BTreeSet<u16>> = [Kind::Status, Kind::Weights, Kind::BadWeights]
        .into_iter()
        .map(|k| {
            let (path, method) = k.operation();
            (k, documented_statuses(path, method))
        })
        .collect();

    let started = Instant::now();
    let until = started + LOAD;
    let gateway_ns = lab.gateway_ns().to_owned();
    let calls: Vec<Call> = thread::scope(|s| {
        let clients: Vec<_> = (0..API_CLIENTS)
            .map(|id| {
                let ns = gateway_ns.as_str();
                s.spawn(move || api_client(ns, id, until))
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("API client thread panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    // Latency and counts per kind.
    let mut report = format!(
        "{} requests from {API_CLIENTS} clients in {:.1} s ({:.0}/s)\n{:<11} {:>7} {:>9} {:>9} {:>9}\n",
        calls.len(),
        elapsed.as_secs_f64(),
        calls.len() as f64 / elapsed.as_secs_f64(),
        "kind",
        "count",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    for kind in [Kind::Status, Kind::Weights, Kind::BadWeights] {
        let mut took: Vec<Duration> = calls
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.finished - c.started)
            .collect();
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        report.push_str(&format!(
            "{:<11} {:>7} {:>9.1} {:>9.1} {:>9.1}\n",
            format!("{kind:?}"),
            took.len(),
            ms(quantile(&took, 0.5)),
            ms(quantile(&took, 0.99)),
            ms(took.last().copied().unwrap_or_default()),
        ));
    }
    eprintln!("{report}");

    // Every answer is the expected one, and documented.
    let mut wrong: Vec<String> = Vec::new();
    for c in &calls {
        match &c.outcome {
            Ok((status, body)) => {
                if *status != c.kind.expected() || !documented[&c.kind].contains(status) {
                    wrong.push(format!("{:?}: HTTP {status} {body}", c.kind));
                }
            }
            Err(e) => wrong.push(format!("{:?}: no answer: {e}", c.kind)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests did not get the answer they call for (documented: {documented:?}); first ones:\n{}\n{}",
        wrong.len(),
        calls.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        lab.agent_diagnostics()
    );
    let accepted: Vec<&Call> = calls.iter().filter(|c| c.kind == Kind::Weights).collect();
    let reads = calls.iter().filter(|c| c.kind == Kind::Status).count();
    assert!(
        !accepted.is_empty() && reads > 0,
        "the load made {} writes and {reads} reads",
        accepted.len()
    );

    // The last accepted write: one that no other accepted write started after it
    // was answered (writes that overlap it may have been applied on either side).
    let candidates: BTreeSet<[u32; 3]> = accepted
        .iter()
        .filter(|w| !accepted.iter().any(|o| o.started > w.finished))
        .map(|w| w.weights.expect("valid writes carry weights"))
        .collect();
    let tenants = ok(&lab, "GET /tenants", lab.tenants_json());
    let web = tenants["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "web"))
        .unwrap_or_else(|| panic!("no tenant web in {tenants}"));
    let effective: [u32; 3] = BACKENDS.map(|name| {
        web["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == name))
            .and_then(|b| b["effective_weight"].as_u64())
            .unwrap_or_else(|| panic!("no effective weight for {name} in {web}")) as u32
    });
    eprintln!(
        "{} accepted writes; {} could have been applied last; effective weights {effective:?}",
        accepted.len(),
        candidates.len()
    );
    assert!(
        candidates.contains(&effective),
        "the effective weights {effective:?} are not those of a write that could have been last: {candidates:?}\n{}",
        lab.agent_diagnostics()
    );

    let endpoints = BACKENDS.map(|b| backend_endpoint(&lab, b));
    let weights: Vec<(Endpoint, u32)> = endpoints.into_iter().zip(effective).collect();
    let live = live_table(&lab, &Endpoint::new(vip(), PROTO_TCP));
    let predicted = predicted_table(&weights);
    let differ = live.iter().zip(&predicted).filter(|(a, b)| a != b).count();
    assert!(
        live.len() == predicted.len() && differ == 0,
        "the kernel's live table ({} entries) differs from the Maglev table for {effective:?} ({} entries) in {differ} entries\n{}",
        live.len(),
        predicted.len(),
        lab.agent_diagnostics()
    );
}

/// A finished blue/green switch (green 100 %, the config still says blue), then the
/// agent SIGKILLed, `state.json` overwritten with garbage, and the agent started
/// again: new connections still all go to green, `status` says where the weights come
/// from, and the bad file is kept aside.
#[test]
fn an_unreadable_state_file_keeps_the_pinned_split() {
    let (mut lab, _) = web_lab(
        keystone_lab::test_bins!(),
        vip(),
        &[("blue", 100), ("green", 0)],
    );
    let switch = r#"{"service":"web","to":"green","interval":"1s"}"#;
    switch_completes(&mut lab, "the switch", switch);

    let r = lab.kill("agent");
    ok(&lab, "killing the agent", r);
    let state = lab.agent_state_dir().join("state.json");
    std::fs::write(&state, "\u{0}garbage{").expect("corrupting state.json");
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    assert_new_connections_on(&lab, "after the restart on a corrupt state.json", "green");

    let (_, status) = admin_json(&lab, "GET", "/status", None);
    assert_eq!(
        status["tenants"][0]["traffic_source"],
        serde_json::json!({"kind": "manual", "reason": "recovered from the pinned data plane"}),
        "{status:#}"
    );
    let recovered = status["persistence"]["recovered"]
        .as_str()
        .unwrap_or_default();
    let kept = recovered
        .split_whitespace()
        .find(|w| w.contains("state.json.unreadable-"))
        .unwrap_or_else(|| panic!("no kept file named in {recovered:?}"));
    assert_eq!(
        std::fs::read_to_string(kept).expect("the kept file"),
        "\u{0}garbage{",
        "{recovered}"
    );
    let out = ok(&lab, "keystone-ctl status", lab.ctl(&["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("weights recovered from the pinned data plane"),
        "keystone-ctl status:\n{text}"
    );
}
