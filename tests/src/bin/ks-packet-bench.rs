//! The measuring half of `cargo xtask bench packet`: per-packet cost of the XDP
//! program through `BPF_PROG_TEST_RUN`, beside two floor programs, in a network
//! namespace of its own (so `bpf_fib_lookup` sees the routes and neighbours of the
//! benchmark topology and established flows take the real forwarding path).
//!
//! Every call runs with `repeat = 1` (the kernel does not reset the packet between
//! repeats, so a rewriting program would otherwise time its own output); every
//! call's verdict and output frame is checked. Prints `keystone_lab::packet_bench`
//! reports as JSON lines on stdout; xtask prints the table.
//!
//! Every case runs on CPU 0; the established and new-flow cases then run again on
//! both CPUs at once (one pinned thread each, their own flows), for the scaling
//! figure. A second gateway with a per-CPU LRU connection table runs beside the
//! agent's, so the two layouts are compared in the same rounds.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    sync::Barrier,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::Xdp,
};
use clap::Parser;
use keystone_agent::dataplane::{
    AyaDataplane, Limits, LoadOptions, aya_dataplane::MAP_NAMES, object,
};
use keystone_common::{
    Endpoint, FlowKey, FlowState, PROTO_TCP, mode, names,
    tcp_flags::{ACK, PSH},
};
use keystone_lab::{
    cpus,
    packet_bench::{MIN_CALLS, MIN_ROUNDS, Program, Report},
    xdp::*,
};

#[derive(Parser)]
#[command(
    about = "Per-packet cost of keystone_xdp via BPF_PROG_TEST_RUN (run by `cargo xtask bench packet`)"
)]
struct Args {
    /// Rounds per case (at least 5); cases are interleaved within each round.
    #[arg(long, default_value_t = MIN_ROUNDS)]
    rounds: u32,
    /// Single-run calls per case and round (at least 100,000).
    #[arg(long, default_value_t = MIN_CALLS)]
    calls: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.rounds < MIN_ROUNDS {
        eprintln!(
            "--rounds {}: the method needs at least {MIN_ROUNDS}",
            args.rounds
        );
        return ExitCode::from(64);
    }
    if args.calls < MIN_CALLS {
        eprintln!(
            "--calls {}: the method needs at least {MIN_CALLS}",
            args.calls
        );
        return ExitCode::from(64);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("ks-packet-bench needs root (BPF, a network namespace, bpffs)");
        return ExitCode::from(77);
    }
    // The namespace and bpffs go away with the thread, also when it panics.
    in_netns_at(&[Hook::Xdp], move || bench(&args));
    ExitCode::SUCCESS
}

/// Established-flow packets are ACKs: a SYN (ACK clear) on a flow whose handshake
/// did not complete is picked through the Maglev table, which is the new-flow case.
fn established() -> Shape {
    Shape {
        tcp_flags: ACK | PSH,
        ..Shape::default()
    }
}

/// Backends per VIP. The namespace has static neighbours for backends 0..BACKENDS.
const PER_VIP: u8 = BACKENDS / 2;

/// VIPs of the benchmark: nat and dsr, IPv4 and IPv6, each with `PER_VIP` equal
/// backends behind OUT_IF (dsr backends listen on the VIP port, as dsr requires).
fn config() -> Vec<keystone_agent::dataplane::VipSpec> {
    let backends = |first: u8, v6: bool, port: u16| {
        (first..first + PER_VIP)
            .map(|i| {
                let addr: IpAddr = if v6 {
                    backend6(i).into()
                } else {
                    backend4(i).into()
                };
                backend(&format!("b{i}"), ep(addr, port, PROTO_TCP), 1)
            })
            .collect::<Vec<_>>()
    };
    vec![
        vip(
            "nat4",
            ep(vip4(100), 80, PROTO_TCP),
            mode::NAT,
            backends(0, false, 8080),
        ),
        vip(
            "dsr4",
            ep(vip4(101), 80, PROTO_TCP),
            mode::DSR,
            backends(PER_VIP, false, 80),
        ),
        vip(
            "nat6",
            ep(vip6(0x100), 80, PROTO_TCP),
            mode::NAT,
            backends(0, true, 8080),
        ),
        vip(
            "dsr6",
            ep(vip6(0x101), 80, PROTO_TCP),
            mode::DSR,
            backends(PER_VIP, true, 80),
        ),
    ]
}

/// The static neighbour MAC of backend address `ip` (see `setup_topology`).
fn backend_mac_of(ip: IpAddr) -> [u8; 6] {
    let i = match ip {
        IpAddr::V4(a) => a.octets()[3] - 10,
        IpAddr::V6(a) => (a.segments()[7] - 0x10) as u8,
    };
    assert!(i < BACKENDS, "{ip} is not a benchmark backend");
    backend_mac(i)
}

/// What a case sends and expects.
enum Packets {
    /// The same frame on every call.
    Fixed {
        input: Vec<u8>,
        action: u32,
        output: Vec<u8>,
    },
    /// A new flow on every call (a SYN from a 5-tuple never seen before) to a `nat`
    /// VIP: hash, Maglev lookup and connection-table insert every time.
    NewFlows { vip: Endpoint },
}

struct Case<'g> {
    name: String,
    program: Program,
    prog: &'g Xdp,
    /// The gateway whose connection table the case fills (new flows are forgotten
    /// there after every run).
    gw: &'g Gateway,
    /// What it sends on CPU n: `lanes[n]`, each CPU its own flows (as a NIC's RSS
    /// gives each queue its own). One lane: the case runs on CPU 0 only.
    lanes: Vec<Packets>,
}

/// CPUs the both-CPUs-at-once runs use.
const PARALLEL_CPUS: [usize; 2] = [0, 1];

/// The `n`th fresh client of a round and lane (CPU) for a VIP of `vip`'s family:
/// distinct for every (round, lane, n) in a run, from 198.18.0.0/15 (beside the
/// gateway's /24s) or 2001:db8:100::/48.
fn fresh_client(vip: &Endpoint, round: u32, lane: u32, n: u32) -> SocketAddr {
    let port = 1024 + (n % 60_000) as u16;
    let host = (round * PARALLEL_CPUS.len() as u32 + lane) * 64 + n / 60_000;
    let ip: IpAddr = if vip.family == keystone_common::FAMILY_IPV4 {
        Ipv4Addr::new(198, 19, (host >> 8) as u8, host as u8).into()
    } else {
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, host as u16).into()
    };
    SocketAddr::new(ip, port)
}

/// A gateway like `Gateway::new`'s whose connection table keeps one LRU list per CPU
/// (`BPF_F_NO_COMMON_LRU`): the table is pinned with that flag before the agent
/// loads, which then adopts it. The variant the run compares with the agent's table.
fn per_cpu_lru_gateway() -> Gateway {
    use aya_obj::generated::{BPF_F_NO_COMMON_LRU, bpf_map_type::BPF_MAP_TYPE_LRU_HASH};
    let bpffs = Bpffs::mount();
    let dir = bpffs.dir.join("keystone");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<FlowKey>() as u32,
        size_of::<FlowState>() as u32,
        Limits::default().conn_table_entries,
        BPF_F_NO_COMMON_LRU,
    );
    MapData::create(def, names::CONNS, None)
        .and_then(|m| {
            m.pin(dir.join(names::CONNS))
                .map_err(|error| aya::maps::MapError::PinError { name: None, error })
        })
        .unwrap_or_else(|e| panic!("creating a per-CPU LRU connection table: {e}"));
    let dp = AyaDataplane::load(LoadOptions::new(&dir))
        .unwrap_or_else(|e| panic!("AyaDataplane::load over a per-CPU LRU table: {e}"));
    Gateway::with(dp, bpffs)
}

/// An established flow per lane (CPU) to `vip`: pinned by its SYN here, then timed
/// with ACKs; lane n's client port is `client`'s + 1000·n.
fn established_case<'g>(name: &str, gw: &'g Gateway, vip: Endpoint, client: &str) -> Case<'g> {
    let est = established();
    let lane = |port_offset: u16| {
        let mut src: SocketAddr = client.parse().expect("client address");
        src.set_port(src.port() + port_offset);
        let f = Flow {
            src,
            dst: vip.socket_addr(),
            proto: PROTO_TCP,
        };
        let (action, _) = gw.run(&frame(&f, &Shape::default()), gw.in_index);
        assert_eq!(action, XDP_REDIRECT, "{name}: the SYN that pins the flow");
        let to = gw
            .dp
            .predict(&vip, &f.key())
            .expect("a backend for the flow");
        let mac = backend_mac_of(to.ip());
        let input = frame(&f, &est);
        let output = if config().iter().any(|v| v.vip == vip && v.mode == mode::NAT) {
            natted(
                Flow {
                    dst: to.socket_addr(),
                    ..f
                },
                &est,
                mac,
                OUT_MAC,
            )
        } else {
            with_macs(input.clone(), mac, OUT_MAC)
        };
        Packets::Fixed {
            input,
            action: XDP_REDIRECT,
            output,
        }
    };
    Case {
        name: name.into(),
        program: Program::Keystone,
        prog: gw.dp.program(),
        gw,
        lanes: (0..PARALLEL_CPUS.len() as u16)
            .map(|l| lane(l * 1000))
            .collect(),
    }
}

/// The A/B variants of the program (keystone-ebpf's `ab` feature; its `ab` module
/// says what each changes) and the case-name suffix each runs under.
const AB_VARIANTS: [(&str, &str); 4] = [
    ("ab_lookup_first", "A/B: lookup, then insert"),
    ("ab_no_syn_checksum", "A/B: no SYN checksum check"),
    ("ab_no_counters", "A/B: no counters"),
    ("ab_no_insert", "A/B: no table insert"),
];

/// The `AB_VARIANTS` programs, loaded over `gw`'s pinned maps: the same tables and
/// counters as the agent's program, so a variant's case differs from the agent's
/// only in the code.
fn ab_variants(gw: &Gateway) -> Ebpf {
    let object = object::ab_object()
        .expect("this build has no A/B variants (built with AYA_BUILD_SKIP=1): rebuild without it");
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES {
        loader.map_pin_path(name, gw.dp.pin_dir().join(name));
    }
    let mut ebpf = loader
        .load(object)
        .unwrap_or_else(|e| panic!("loading the A/B variants: {e}"));
    for (name, _) in AB_VARIANTS {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("the A/B object has no {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not XDP: {e}"));
        p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    ebpf
}

/// New flows to `vip` on every lane (CPU), each lane from its own clients.
fn new_flow_case<'g>(name: &str, gw: &'g Gateway, vip: Endpoint) -> Case<'g> {
    new_flow_case_of(name, gw, gw.dp.program(), vip)
}

/// `new_flow_case` run by `prog` (over `gw`'s maps).
fn new_flow_case_of<'g>(name: &str, gw: &'g Gateway, prog: &'g Xdp, vip: Endpoint) -> Case<'g> {
    Case {
        name: name.into(),
        program: Program::Keystone,
        prog,
        gw,
        lanes: PARALLEL_CPUS
            .iter()
            .map(|_| Packets::NewFlows { vip })
            .collect(),
    }
}

fn bench(args: &Args) {
    // The one-CPU runs and the setup run on CPU 0; the both-CPUs runs add CPU 1.
    let parallel = cpus::available() >= PARALLEL_CPUS.len();
    cpus::pin_to(0);
    if !parallel {
        eprintln!("ks-packet-bench: one CPU only: no both-CPUs-at-once runs");
    }
    let mut gw = Gateway::new();
    gw.apply(&config());
    let mut per_cpu = per_cpu_lru_gateway();
    per_cpu.apply(&config());
    let ab = ab_variants(&gw);
    let ab_program = |name: &str| -> &Xdp {
        ab.program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded above")
    };
    let mut floors = Ebpf::load(object::floor_object().expect(
        "this build has no floor programs (built with AYA_BUILD_SKIP=1): rebuild without it",
    ))
    .unwrap_or_else(|e| panic!("loading the floor programs: {e}"));
    for name in ["floor_pass", "floor_tx"] {
        let p: &mut Xdp = floors
            .program_mut(name)
            .unwrap_or_else(|| panic!("the floor object has no {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not XDP: {e}"));
        p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    let floor = |name: &str| -> &Xdp {
        floors
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded above")
    };
    let program = |p: Program| match p {
        Program::FloorPass => floor("floor_pass"),
        Program::FloorTx => floor("floor_tx"),
        Program::Keystone => gw.dp.program(),
    };
    for p in [Program::FloorPass, Program::FloorTx, Program::Keystone] {
        let info = program(p)
            .info()
            .unwrap_or_else(|e| panic!("program info of {p:?}: {e}"));
        report(&Report::Program {
            program: p,
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count().unwrap_or(0),
        });
    }

    let est = established();
    let [nat4, dsr4, nat6, dsr6] = [0, 1, 2, 3].map(|i| config()[i].vip);
    let fixed = |name: &str, program: Program, input: Vec<u8>, action, output| Case {
        name: name.into(),
        program,
        prog: match program {
            Program::Keystone => gw.dp.program(),
            floor_program => floor(match floor_program {
                Program::FloorPass => "floor_pass",
                _ => "floor_tx",
            }),
        },
        gw: &gw,
        lanes: vec![Packets::Fixed {
            input,
            action,
            output,
        }],
    };
    let not_ours = |name, client: &str, to: &str| {
        let input = frame(&flow(client, to, PROTO_TCP), &est);
        fixed(name, Program::Keystone, input.clone(), XDP_PASS, input)
    };
    let floor_input = frame(
        &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
        &est,
    );
    let mut cases = vec![
        fixed(
            "floor: XDP_PASS",
            Program::FloorPass,
            floor_input.clone(),
            XDP_PASS,
            floor_input.clone(),
        ),
        fixed(
            "floor: MAC swap + XDP_TX",
            Program::FloorTx,
            floor_input.clone(),
            XDP_TX,
            with_macs(floor_input.clone(), CLIENT_MAC, IN_MAC),
        ),
        not_ours("not for a VIP, IPv4", "198.18.0.2:40000", "198.18.0.1:22"),
        not_ours(
            "not for a VIP, IPv6",
            "[2001:db8::2]:40000",
            "[2001:db8::1]:22",
        ),
        established_case("established, nat, IPv4", &gw, nat4, "198.18.0.2:40000"),
        established_case("established, nat, IPv6", &gw, nat6, "[2001:db8::2]:40000"),
        established_case("established, dsr, IPv4", &gw, dsr4, "198.18.0.2:40001"),
        established_case("established, dsr, IPv6", &gw, dsr6, "[2001:db8::2]:40001"),
        new_flow_case("new flow, nat, IPv4", &gw, nat4),
        new_flow_case("new flow, nat, IPv6", &gw, nat6),
        // The same program over a per-CPU LRU connection table (`per_cpu_lru_gateway`).
        established_case(
            "established, nat, IPv4, per-CPU LRU",
            &per_cpu,
            nat4,
            "198.18.0.2:40000",
        ),
        new_flow_case("new flow, nat, IPv4, per-CPU LRU", &per_cpu, nat4),
        new_flow_case("new flow, nat, IPv6, per-CPU LRU", &per_cpu, nat6),
    ];
    // Each variant beside the agent's program, over the same maps, in the same rounds.
    for (program, what) in AB_VARIANTS {
        for (family, vip) in [("IPv4", nat4), ("IPv6", nat6)] {
            let name = format!("new flow, nat, {family}, {what}");
            cases.push(new_flow_case_of(&name, &gw, ab_program(program), vip));
        }
    }

    for round in 0..args.rounds {
        for case in &cases {
            let one = run_lane(case, &case.lanes[0], round, 0, args.calls, None);
            settle(case, round, 0, one.new_flows);
            report(&Report::Round {
                case: case.name.clone(),
                program: case.program,
                round,
                calls: args.calls,
                mean_ns: one.total_ns as f64 / args.calls as f64,
            });
            if !parallel || case.lanes.len() < PARALLEL_CPUS.len() {
                continue;
            }
            let runs = cpus::on_each(&PARALLEL_CPUS, |cpu, start| {
                run_lane(
                    case,
                    &case.lanes[cpu],
                    round,
                    cpu as u32,
                    args.calls,
                    Some(start),
                )
            });
            for (cpu, run) in PARALLEL_CPUS.into_iter().zip(runs) {
                report(&Report::Parallel {
                    case: case.name.clone(),
                    round,
                    cpu: cpu as u32,
                    calls: args.calls,
                    mean_ns: run.total_ns as f64 / args.calls as f64,
                    on_cpu: run.on_cpu,
                });
                settle(case, round, cpu as u32, run.new_flows);
            }
        }
    }
    // Both gateways live to here (their bpffs with them), the variants' programs too.
    drop(ab);
    drop(per_cpu);
}

/// What one thread's calls of one case gave.
struct LaneRun {
    total_ns: u128,
    /// The thread's CPU time ÷ wall time over the calls.
    on_cpu: f64,
    /// New flows: each call's flow, action and output frame, checked by `settle`.
    new_flows: Vec<(Flow, u32, Vec<u8>)>,
}

/// Runs `calls` calls of `case`'s `packets` (lane `lane` of round `round`) on the
/// calling thread's CPU, after waiting at `start` (if any) once the frames are built.
fn run_lane(
    case: &Case,
    packets: &Packets,
    round: u32,
    lane: u32,
    calls: u32,
    start: Option<&Barrier>,
) -> LaneRun {
    let ingress = case.gw.in_index;
    // New-flow frames are built before and checked after the timed calls, so the
    // calls run back to back as in the fixed cases.
    let fresh: Vec<(Flow, Vec<u8>)> = match packets {
        Packets::Fixed { .. } => Vec::new(),
        Packets::NewFlows { vip } => (0..calls)
            .map(|call| {
                let f = Flow {
                    src: fresh_client(vip, round, lane, call),
                    dst: vip.socket_addr(),
                    proto: PROTO_TCP,
                };
                (f, frame(&f, &Shape::default()))
            })
            .collect(),
    };
    if let Some(start) = start {
        start.wait();
    }
    let (wall, cpu) = (Instant::now(), cpus::thread_cpu_time());
    let mut buf = Vec::with_capacity(512);
    let mut total_ns: u128 = 0;
    let mut new_flows = Vec::with_capacity(fresh.len());
    match packets {
        Packets::Fixed {
            input,
            action,
            output,
        } => {
            for call in 0..calls {
                let r = test_run(case.prog, input, ingress, &mut buf);
                check(&case.name, call, r.action, *action, &buf, output);
                total_ns += r.duration.as_nanos();
            }
        }
        Packets::NewFlows { .. } => {
            for (f, input) in fresh {
                let r = test_run(case.prog, &input, ingress, &mut buf);
                total_ns += r.duration.as_nanos();
                new_flows.push((f, r.action, buf.clone()));
            }
        }
    }
    let on_cpu = (cpus::thread_cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64();
    LaneRun {
        total_ns,
        on_cpu,
        new_flows,
    }
}

/// Checks a lane's new flows against the agent's prediction, then forgets them:
/// every run starts from the same connection table, so none runs into LRU eviction.
fn settle(case: &Case, round: u32, lane: u32, new_flows: Vec<(Flow, u32, Vec<u8>)>) {
    if new_flows.is_empty() {
        return;
    }
    for (call, (f, action, out)) in new_flows.iter().enumerate() {
        let vip = ep(f.dst.ip(), f.dst.port(), PROTO_TCP);
        let to = case
            .gw
            .dp
            .predict(&vip, &f.key())
            .expect("a backend for the flow");
        let want = natted(
            Flow {
                dst: to.socket_addr(),
                ..*f
            },
            &Shape::default(),
            backend_mac_of(to.ip()),
            OUT_MAC,
        );
        let what = format!("{}, round {round}, CPU {lane}", case.name);
        check(&what, call as u32, *action, XDP_REDIRECT, out, &want);
    }
    let keys: Vec<FlowKey> = new_flows.iter().map(|(f, ..)| f.key()).collect();
    forget_flows(&case.gw.dp.pin_dir().join(names::CONNS), &keys);
}

/// Panics unless a call gave the expected action and output frame.
fn check(case: &str, call: u32, action: u32, want_action: u32, out: &[u8], want: &[u8]) {
    assert_eq!(
        action,
        want_action,
        "{case}, call {call}: action {} (want {})",
        keystone_common::xdp_action_name(action),
        keystone_common::xdp_action_name(want_action)
    );
    assert!(
        out == want,
        "{case}, call {call}: output frame differs\n got: {out:02x?}\nwant: {want:02x?}"
    );
}

/// Deletes `flows` from the pinned connection table (those it still holds).
fn forget_flows(pin: &std::path::Path, flows: &[FlowKey]) {
    let data = MapData::from_pin(pin).unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    let mut conns: BpfHashMap<MapData, FlowKey, FlowState> = Map::LruHashMap(data)
        .try_into()
        .unwrap_or_else(|e| panic!("{} is not the connection table: {e}", pin.display()));
    for f in flows {
        match conns.remove(f) {
            // Evicted by the LRU already (only when --calls nears the table's size),
            // or never inserted (the `no table insert` variant).
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => panic!("removing a benchmark flow from the connection table: {e}"),
        }
    }
}

fn report(r: &Report) {
    println!("{}", serde_json::to_string(r).expect("a report serialises"));
}
