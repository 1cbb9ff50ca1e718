//! The measuring half of `cargo xtask bench packet`: per-packet cost of the XDP
//! program through `BPF_PROG_TEST_RUN`, beside two floor programs, in a network
//! namespace of its own (so `bpf_fib_lookup` sees the routes and neighbours of the
//! benchmark topology and established flows take the real forwarding path).
//!
//! Every call runs with `repeat = 1` (the kernel does not reset the packet between
//! repeats, so a rewriting program would otherwise time its own output); every
//! call's verdict and output frame is checked. Prints `keystone_lab::packet_bench`
//! reports as JSON lines on stdout; xtask prints the table.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::Xdp,
};
use clap::Parser;
use keystone_agent::dataplane::object;
use keystone_common::{
    Endpoint, FlowKey, FlowState, PROTO_TCP, mode, names,
    tcp_flags::{ACK, PSH},
};
use keystone_lab::{
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
    in_netns(move || bench(&args));
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

struct Case {
    name: &'static str,
    program: Program,
    ingress: u32,
    packets: Packets,
}

/// The `n`th fresh client of a round for a VIP of `vip`'s family: distinct for every
/// (round, n) in a run, from 198.18.0.0/15 (beside the gateway's /24s) or 2001:db8:100::/48.
fn fresh_client(vip: &Endpoint, round: u32, n: u32) -> SocketAddr {
    let port = 1024 + (n % 60_000) as u16;
    let host = round * 64 + n / 60_000;
    let ip: IpAddr = if vip.family == keystone_common::FAMILY_IPV4 {
        Ipv4Addr::new(198, 19, (host >> 8) as u8, host as u8).into()
    } else {
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, host as u16).into()
    };
    SocketAddr::new(ip, port)
}

fn bench(args: &Args) {
    let mut gw = Gateway::new();
    gw.apply(&config());
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

    let inn = gw.in_index;
    let est = established();
    let [nat4, dsr4, nat6, dsr6] = [0, 1, 2, 3].map(|i| config()[i].vip);
    // An established flow: pinned by its SYN here, then timed with ACKs.
    let established_case = |name, vip: Endpoint, client: &str| {
        let f = Flow {
            src: client.parse().expect("client address"),
            dst: vip.socket_addr(),
            proto: PROTO_TCP,
        };
        let (action, _) = gw.run(&frame(&f, &Shape::default()), inn);
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
        Case {
            name,
            program: Program::Keystone,
            ingress: inn,
            packets: Packets::Fixed {
                input,
                action: XDP_REDIRECT,
                output,
            },
        }
    };
    let not_ours = |name, client: &str, to: &str| {
        let input = frame(&flow(client, to, PROTO_TCP), &est);
        Case {
            name,
            program: Program::Keystone,
            ingress: inn,
            packets: Packets::Fixed {
                output: input.clone(),
                input,
                action: XDP_PASS,
            },
        }
    };
    let floor_input = frame(
        &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
        &est,
    );
    let cases = [
        Case {
            name: "floor: XDP_PASS",
            program: Program::FloorPass,
            ingress: inn,
            packets: Packets::Fixed {
                input: floor_input.clone(),
                action: XDP_PASS,
                output: floor_input.clone(),
            },
        },
        Case {
            name: "floor: MAC swap + XDP_TX",
            program: Program::FloorTx,
            ingress: inn,
            packets: Packets::Fixed {
                input: floor_input.clone(),
                action: XDP_TX,
                output: with_macs(floor_input.clone(), CLIENT_MAC, IN_MAC),
            },
        },
        not_ours("not for a VIP, IPv4", "198.18.0.2:40000", "198.18.0.1:22"),
        not_ours(
            "not for a VIP, IPv6",
            "[2001:db8::2]:40000",
            "[2001:db8::1]:22",
        ),
        established_case("established, nat, IPv4", nat4, "198.18.0.2:40000"),
        established_case("established, nat, IPv6", nat6, "[2001:db8::2]:40000"),
        established_case("established, dsr, IPv4", dsr4, "198.18.0.2:40001"),
        established_case("established, dsr, IPv6", dsr6, "[2001:db8::2]:40001"),
        Case {
            name: "new flow, nat, IPv4",
            program: Program::Keystone,
            ingress: inn,
            packets: Packets::NewFlows { vip: nat4 },
        },
        Case {
            name: "new flow, nat, IPv6",
            program: Program::Keystone,
            ingress: inn,
            packets: Packets::NewFlows { vip: nat6 },
        },
    ];

    let conns_pin = gw.dp.pin_dir().join(names::CONNS);
    let mut buf = Vec::with_capacity(512);
    for round in 0..args.rounds {
        for case in &cases {
            let prog = program(case.program);
            let mut total_ns: u128 = 0;
            match &case.packets {
                Packets::Fixed {
                    input,
                    action,
                    output,
                } => {
                    for call in 0..args.calls {
                        let r = test_run(prog, input, case.ingress, &mut buf);
                        check(case.name, call, r.action, *action, &buf, output);
                        total_ns += r.duration.as_nanos();
                    }
                }
                Packets::NewFlows { vip } => {
                    // Frames are built before and checked after the timed calls, so
                    // the calls run back to back as in the fixed cases.
                    let flows: Vec<Flow> = (0..args.calls)
                        .map(|call| Flow {
                            src: fresh_client(vip, round, call),
                            dst: vip.socket_addr(),
                            proto: PROTO_TCP,
                        })
                        .collect();
                    let inputs: Vec<Vec<u8>> =
                        flows.iter().map(|f| frame(f, &Shape::default())).collect();
                    let mut outputs = Vec::with_capacity(inputs.len());
                    for input in &inputs {
                        let r = test_run(prog, input, case.ingress, &mut buf);
                        total_ns += r.duration.as_nanos();
                        outputs.push((r.action, buf.clone()));
                    }
                    for (call, (f, (action, out))) in flows.iter().zip(&outputs).enumerate() {
                        let to = gw
                            .dp
                            .predict(vip, &f.key())
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
                        check(case.name, call as u32, *action, XDP_REDIRECT, out, &want);
                    }
                    // Every round starts from the same connection table: the flows
                    // this round pinned go again, so no round runs into LRU eviction.
                    let keys: Vec<FlowKey> = flows.iter().map(Flow::key).collect();
                    forget_flows(&conns_pin, &keys);
                }
            }
            report(&Report::Round {
                case: case.name.into(),
                program: case.program,
                round,
                calls: args.calls,
                mean_ns: total_ns as f64 / args.calls as f64,
            });
        }
    }
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
            // Evicted by the LRU already: only when --calls nears the table's size.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => panic!("removing a benchmark flow from the connection table: {e}"),
        }
    }
}

fn report(r: &Report) {
    println!("{}", serde_json::to_string(r).expect("a report serialises"));
}
