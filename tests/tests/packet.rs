//! Packet tests: crafted frames through `BPF_PROG_TEST_RUN`, with the maps programmed
//! by the agent's own `AyaDataplane::apply`.
//!
//! Each test runs in a thread that moves into a fresh network namespace it sets up
//! (veth pairs, addresses from 198.18.0.0/15 and 2001:db8::/32, static neighbours),
//! so `bpf_fib_lookup` gives deterministic answers; the program and its maps are
//! pinned in a bpffs mounted for the test. Everything is removed on drop.
//!
//! Needs root: `cargo test -p keystone-tests --test packet`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{TestRun, TestRunOptions};
use keystone_agent::dataplane::{
    AyaDataplane, BackendSpec, Counters, Dataplane, LoadOptions, VipSpec,
};
use keystone_common::{
    Endpoint, FlowKey, L4Counters, PROTO_TCP, PROTO_UDP, Reason, checksum, mode,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
    vip_flags,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

// ---------------------------------------------------------------------------
// Environment: network namespace, bpffs, topology.
// ---------------------------------------------------------------------------

/// The gateway's client-side interface (packets from clients arrive here).
const IN_IF: &str = "ksin";
const IN_PEER: &str = "ksinp";
/// The gateway's backend-side interface.
const OUT_IF: &str = "ksout";
const OUT_PEER: &str = "ksoutp";
const IN_MAC: [u8; 6] = [0x02, 0x6b, 0x73, 0, 0, 0x01];
const OUT_MAC: [u8; 6] = [0x02, 0x6b, 0x73, 0, 1, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Client-side hosts (on IN_IF): the client and a backend reachable back out of IN_IF.
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const TX_BACKEND4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const TX_BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// Backends behind OUT_IF with static neighbour entries: 198.18.1.10.. / 2001:db8:1::10..
const BACKENDS: u8 = 8;
/// A backend behind OUT_IF without a neighbour entry.
const NO_NEIGH4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
/// A backend with no route at all.
const NO_ROUTE4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 10);

fn backend4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + i)
}
fn backend6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16)
}
fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, 0x10 + i]
}

fn vip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}
fn vip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A bpffs mounted at a unique directory under /run, unmounted and removed on drop.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn mount() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/run/keystone-packet-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| {
            panic!(
                "mount -t bpf bpf {}: {e} (the packet tests need root)",
                dir.display()
            )
        });
        Bpffs { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs `f` in a new thread that first moves into a fresh network namespace (which
/// disappears with the thread, taking its interfaces along), re-raising its panic.
fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    let handle = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e} (the packet tests need root)"));
        setup_topology();
        f();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

fn setup_topology() {
    sh(&["ip", "link", "set", "lo", "up"]);
    for (a, a_mac, b) in [(IN_IF, IN_MAC, IN_PEER), (OUT_IF, OUT_MAC, OUT_PEER)] {
        sh(&[
            "ip",
            "link",
            "add",
            a,
            "address",
            &mac_str(a_mac),
            "type",
            "veth",
            "peer",
            "name",
            b,
        ]);
        sh(&["ip", "link", "set", a, "up"]);
        sh(&["ip", "link", "set", b, "up"]);
    }
    sh(&["ip", "addr", "add", "198.18.0.1/24", "dev", IN_IF]);
    sh(&["ip", "addr", "add", "2001:db8::1/64", "dev", IN_IF, "nodad"]);
    sh(&["ip", "addr", "add", "198.18.1.1/24", "dev", OUT_IF]);
    sh(&[
        "ip",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        OUT_IF,
        "nodad",
    ]);
    sh(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    sh(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    let neigh = |ip: String, mac: [u8; 6], dev: &str| {
        sh(&[
            "ip",
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac_str(mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    };
    neigh(CLIENT4.to_string(), CLIENT_MAC, IN_IF);
    neigh(CLIENT6.to_string(), CLIENT_MAC, IN_IF);
    neigh(TX_BACKEND4.to_string(), TX_BACKEND_MAC, IN_IF);
    for i in 0..BACKENDS {
        neigh(backend4(i).to_string(), backend_mac(i), OUT_IF);
        neigh(backend6(i).to_string(), backend_mac(i), OUT_IF);
    }
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("if_nametoindex({name}): {e}"))
}

/// The loaded program, its maps and the netns it runs in (the caller's thread's).
struct Gateway {
    dp: AyaDataplane,
    /// Holds the pins; dropped (unmounted) after `dp`, as fields drop in order.
    _bpffs: Bpffs,
    in_index: u32,
    out_index: u32,
}

impl Gateway {
    fn new() -> Self {
        let bpffs = Bpffs::mount();
        let dp = AyaDataplane::load(LoadOptions::new(bpffs.dir.join("keystone")))
            .unwrap_or_else(|e| panic!("AyaDataplane::load: {e} ({e:?})"));
        Gateway {
            dp,
            _bpffs: bpffs,
            in_index: ifindex(IN_IF),
            out_index: ifindex(OUT_IF),
        }
    }

    fn apply(&mut self, vips: &[VipSpec]) {
        self.dp.apply(vips).unwrap_or_else(|e| panic!("apply: {e}"));
    }

    fn counters(&self) -> Counters {
        self.dp
            .counters()
            .unwrap_or_else(|e| panic!("counters: {e}"))
    }

    /// Runs one frame arriving on `ifindex`; returns (action, output frame).
    fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes()); // data_end
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let result =
            self.dp.program().test_run(opts).unwrap_or_else(|e| {
                panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len())
            });
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }
}

// ---------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Flow {
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
}

fn flow(src: &str, dst: &str, proto: u8) -> Flow {
    Flow {
        src: src.parse().expect("src"),
        dst: dst.parse().expect("dst"),
        proto,
    }
}

impl Flow {
    fn key(&self) -> FlowKey {
        let s = Endpoint::new(self.src, self.proto);
        let d = Endpoint::new(self.dst, self.proto);
        FlowKey {
            src: s.addr,
            dst: d.addr,
            src_port: s.port,
            dst_port: d.port,
            proto: self.proto,
            family: s.family,
            _pad: [0; 2],
        }
    }
}

/// How to build a frame; `Default` is a plain, valid packet.
#[derive(Clone, Debug)]
struct Shape {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: Option<(u16, u16)>,
    ttl: u8,
    payload: usize,
    /// IPv4 options (a multiple of 4 bytes).
    options: Vec<u8>,
    /// Send UDP/IPv4 with checksum 0 ("none").
    udp_no_checksum: bool,
    /// TCP flags (`keystone_common::tcp_flags`); SYN by default, a flow's first packet.
    tcp_flags: u8,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            dst_mac: IN_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            ttl: 64,
            payload: 32,
            options: Vec::new(),
            udp_no_checksum: false,
            tcp_flags: SYN,
        }
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn pseudo_sum(f: &Flow, l4_len: usize) -> u64 {
    let mut p = octets(f.src.ip());
    p.extend(octets(f.dst.ip()));
    if f.src.is_ipv4() {
        p.extend([0, f.proto]);
        p.extend((l4_len as u16).to_be_bytes());
    } else {
        p.extend((l4_len as u32).to_be_bytes());
        p.extend([0, 0, 0, f.proto]);
    }
    checksum::sum(&p, 0)
}

/// A complete, valid frame for `f`.
fn frame(f: &Flow, s: &Shape) -> Vec<u8> {
    let payload: Vec<u8> = (0..s.payload).map(|i| (i * 7 + 3) as u8).collect();
    let mut l4 = Vec::new();
    l4.extend(f.src.port().to_be_bytes());
    l4.extend(f.dst.port().to_be_bytes());
    let check_at = if f.proto == PROTO_TCP {
        l4.extend(0x0102_0304u32.to_be_bytes()); // seq
        l4.extend(0u32.to_be_bytes()); // ack
        l4.extend([0x50, s.tcp_flags]); // data offset 5, flags
        l4.extend(64240u16.to_be_bytes()); // window
        l4.extend([0, 0, 0, 0]); // checksum, urgent
        16
    } else {
        l4.extend(((8 + payload.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
        6
    };
    l4.extend(&payload);
    if !(f.proto == PROTO_UDP && s.udp_no_checksum) {
        let mut c = checksum::finish(checksum::sum(&l4, pseudo_sum(f, l4.len())));
        if f.proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
    }

    let mut ip = Vec::new();
    if f.src.is_ipv4() {
        let hl = 20 + s.options.len();
        ip.push(0x40 | (hl / 4) as u8);
        ip.push(0); // tos
        ip.extend(((hl + l4.len()) as u16).to_be_bytes());
        ip.extend([0x12, 0x34, 0x40, 0x00]); // id, DF
        ip.extend([s.ttl, f.proto, 0, 0]);
        ip.extend(octets(f.src.ip()));
        ip.extend(octets(f.dst.ip()));
        ip.extend(&s.options);
        let c = checksum::finish(checksum::sum(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    } else {
        ip.extend([0x60, 0, 0, 0]);
        ip.extend((l4.len() as u16).to_be_bytes());
        ip.extend([f.proto, s.ttl]);
        ip.extend(octets(f.src.ip()));
        ip.extend(octets(f.dst.ip()));
    }

    let mut out = Vec::new();
    out.extend(s.dst_mac);
    out.extend(s.src_mac);
    if let Some((tpid, tci)) = s.vlan {
        out.extend(tpid.to_be_bytes());
        out.extend(tci.to_be_bytes());
    }
    out.extend(if f.src.is_ipv4() {
        [0x08, 0x00]
    } else {
        [0x86, 0xdd]
    });
    out.extend(ip);
    out.extend(l4);
    out
}

/// Offset of the IP header.
fn l3_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    }
}

/// Parses a frame's flow back out (addresses, ports, protocol).
fn parse_flow(frame: &[u8]) -> Flow {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    if ip[0] >> 4 == 4 {
        let hl = (ip[0] & 0x0f) as usize * 4;
        let src = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
        let l4 = &ip[hl..];
        Flow {
            src: SocketAddr::new(src.into(), u16::from_be_bytes([l4[0], l4[1]])),
            dst: SocketAddr::new(dst.into(), u16::from_be_bytes([l4[2], l4[3]])),
            proto: ip[9],
        }
    } else {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        let l4 = &ip[40..];
        Flow {
            src: SocketAddr::new(src.into(), u16::from_be_bytes([l4[0], l4[1]])),
            dst: SocketAddr::new(dst.into(), u16::from_be_bytes([l4[2], l4[3]])),
            proto: ip[6],
        }
    }
}

/// Verifies every checksum of a frame by full recomputation.
fn assert_checksums(what: &str, frame: &[u8]) {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    let f = parse_flow(frame);
    let (l4, l4_len) = if ip[0] >> 4 == 4 {
        let hl = (ip[0] & 0x0f) as usize * 4;
        assert_eq!(
            checksum::folded(checksum::sum(&ip[..hl], 0)),
            0xffff,
            "{what}: bad IPv4 header checksum"
        );
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        (&ip[hl..tot], tot - hl)
    } else {
        let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        (&ip[40..40 + plen], plen)
    };
    if f.proto == PROTO_UDP && f.src.is_ipv4() && l4[6] == 0 && l4[7] == 0 {
        return; // no checksum
    }
    let s = checksum::sum(l4, pseudo_sum(&f, l4_len));
    assert_eq!(
        checksum::folded(s),
        0xffff,
        "{what}: bad {} checksum",
        if f.proto == PROTO_TCP { "TCP" } else { "UDP" }
    );
}

// ---------------------------------------------------------------------------
// Config helpers.
// ---------------------------------------------------------------------------

fn ep(addr: impl Into<IpAddr>, port: u16, proto: u8) -> Endpoint {
    Endpoint::new(SocketAddr::new(addr.into(), port), proto)
}

fn backend(name: &str, endpoint: Endpoint, weight: u32) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        endpoint,
        weight,
        up: true,
    }
}

fn vip(name: &str, vip: Endpoint, mode: u32, backends: Vec<BackendSpec>) -> VipSpec {
    VipSpec {
        name: name.into(),
        vip,
        mode,
        flags: 0,
        ring_size: 65_537,
        backends,
    }
}

// ---------------------------------------------------------------------------
// Table-driven cases.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    /// Output identical to the input.
    Same,
    /// Output exactly this frame.
    Frame(Vec<u8>),
    /// Output not checked (e.g. a dropped frame).
    Any,
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    ingress: u32,
    action: u32,
    output: Expect,
    /// The one reason counter that must go up by one (none: no reason counter moves).
    reason: Option<Reason>,
}

fn run_cases(gw: &Gateway, cases: Vec<Case>) {
    for c in cases {
        let before = gw.counters();
        let (action, out) = gw.run(&c.input, c.ingress);
        let after = gw.counters();
        assert_eq!(
            action,
            c.action,
            "{}: action {} (want {}); reasons moved: {:?}",
            c.what,
            keystone_common::xdp_action_name(action),
            keystone_common::xdp_action_name(c.action),
            reason_deltas(&before, &after)
        );
        match &c.output {
            Expect::Same => assert_eq!(hex(&out), hex(&c.input), "{}: frame changed", c.what),
            Expect::Frame(want) => {
                assert_eq!(hex(&out), hex(want), "{}: output frame", c.what);
                assert_checksums(c.what, &out);
            }
            Expect::Any => {}
        }
        let deltas = reason_deltas(&before, &after);
        let want: Vec<(Reason, u64)> = c.reason.map(|r| vec![(r, 1)]).unwrap_or_default();
        assert_eq!(deltas, want, "{}: reason counters", c.what);
        assert_eq!(
            after.actions[action as usize] - before.actions[action as usize],
            1,
            "{}: ACTION_STATS[{}] must count the packet",
            c.what,
            keystone_common::xdp_action_name(action)
        );
    }
}

fn reason_deltas(before: &Counters, after: &Counters) -> Vec<(Reason, u64)> {
    Reason::ALL
        .iter()
        .filter_map(|&r| {
            let d = after.reasons[r as usize] - before.reasons[r as usize];
            (d != 0).then_some((r, d))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rewrites `frame`'s flow as the program should (NAT): new addresses/ports, TTL - 1,
/// new MACs; recomputed from scratch by the builder.
fn natted(to: Flow, s: &Shape, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame(
        &to,
        &Shape {
            dst_mac,
            src_mac,
            ttl: s.ttl - 1,
            ..s.clone()
        },
    )
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// The standard config for the case table.
fn case_config() -> Vec<VipSpec> {
    let v4 =
        |last, port, proto, mode, backends| vip("v4", ep(vip4(last), port, proto), mode, backends);
    vec![
        // NAT TCP/UDP v4 to one backend each behind OUT_IF.
        v4(
            100,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("b0", ep(backend4(0), 8080, PROTO_TCP), 1)],
        ),
        v4(
            100,
            53,
            PROTO_UDP,
            mode::NAT,
            vec![backend("b1", ep(backend4(1), 5353, PROTO_UDP), 1)],
        ),
        // NAT v6.
        vip(
            "v6t",
            ep(vip6(0x100), 80, PROTO_TCP),
            mode::NAT,
            vec![backend("b6", ep(backend6(0), 8080, PROTO_TCP), 1)],
        ),
        vip(
            "v6u",
            ep(vip6(0x100), 53, PROTO_UDP),
            mode::NAT,
            vec![backend("b6u", ep(backend6(1), 5353, PROTO_UDP), 1)],
        ),
        // DSR v4/v6.
        v4(
            101,
            80,
            PROTO_TCP,
            mode::DSR,
            vec![backend("d0", ep(backend4(2), 80, PROTO_TCP), 1)],
        ),
        vip(
            "d6",
            ep(vip6(0x101), 80, PROTO_TCP),
            mode::DSR,
            vec![backend("d6", ep(backend6(2), 80, PROTO_TCP), 1)],
        ),
        // A backend back out of the ingress interface (XDP_TX).
        v4(
            102,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("tx", ep(TX_BACKEND4, 8080, PROTO_TCP), 1)],
        ),
        // No neighbour / no route.
        v4(
            103,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("nn", ep(NO_NEIGH4, 8080, PROTO_TCP), 1)],
        ),
        v4(
            104,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("nr", ep(NO_ROUTE4, 8080, PROTO_TCP), 1)],
        ),
        v4(
            105,
            80,
            PROTO_TCP,
            mode::DSR,
            vec![backend("dn", ep(NO_NEIGH4, 80, PROTO_TCP), 1)],
        ),
        // No backend with weight > 0.
        v4(
            106,
            80,
            PROTO_TCP,
            mode::NAT,
            vec![backend("w0", ep(backend4(3), 8080, PROTO_TCP), 0)],
        ),
    ]
}

#[test]
fn packet_cases() {
    in_netns(|| {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        let (inn, out) = (gw.in_index, gw.out_index);
        let d = Shape::default();
        let mut cases = Vec::new();

        // --- NAT, client -> VIP -------------------------------------------------
        for (what, f, to, mac, s) in [
            (
                "nat tcp/ipv4 -> redirect",
                flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40000", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                d.clone(),
            ),
            (
                "nat udp/ipv4 -> redirect",
                flow("198.18.0.2:40001", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40001", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                d.clone(),
            ),
            (
                "nat udp/ipv4 without checksum keeps checksum 0",
                flow("198.18.0.2:40002", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40002", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                Shape {
                    udp_no_checksum: true,
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 with IP options",
                flow("198.18.0.2:40003", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40003", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    options: vec![1, 1, 1, 0],
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 with 40 bytes of IP options",
                flow("198.18.0.2:40013", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40013", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    options: [vec![1; 39], vec![0]].concat(),
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv4 in an 802.1Q tag (tag kept)",
                flow("198.18.0.2:40004", "198.18.0.100:80", PROTO_TCP),
                flow("198.18.0.2:40004", "198.18.1.10:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    vlan: Some((0x8100, 42)),
                    ..d.clone()
                },
            ),
            (
                "nat udp/ipv4 in an 802.1ad tag (tag kept)",
                flow("198.18.0.2:40005", "198.18.0.100:53", PROTO_UDP),
                flow("198.18.0.2:40005", "198.18.1.11:5353", PROTO_UDP),
                backend_mac(1),
                Shape {
                    vlan: Some((0x88a8, 7)),
                    ..d.clone()
                },
            ),
            (
                "nat tcp/ipv6 -> redirect",
                flow("[2001:db8::2]:40000", "[2001:db8::100]:80", PROTO_TCP),
                flow("[2001:db8::2]:40000", "[2001:db8:1::10]:8080", PROTO_TCP),
                backend_mac(0),
                d.clone(),
            ),
            (
                "nat udp/ipv6 -> redirect",
                flow("[2001:db8::2]:40001", "[2001:db8::100]:53", PROTO_UDP),
                flow("[2001:db8::2]:40001", "[2001:db8:1::11]:5353", PROTO_UDP),
                backend_mac(1),
                d.clone(),
            ),
            (
                "nat tcp/ipv6 in an 802.1Q tag",
                flow("[2001:db8::2]:40002", "[2001:db8::100]:80", PROTO_TCP),
                flow("[2001:db8::2]:40002", "[2001:db8:1::10]:8080", PROTO_TCP),
                backend_mac(0),
                Shape {
                    vlan: Some((0x8100, 100)),
                    ..d.clone()
                },
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&f, &s),
                ingress: inn,
                action: XDP_REDIRECT,
                output: Expect::Frame(natted(to, &s, mac, OUT_MAC)),
                reason: None,
            });
        }

        // The UDP checksum that the rewrite turns into 0 must be sent as 0xffff: search
        // a source port for which the rewritten datagram sums to exactly 0.
        let zero_port = (1024..u16::MAX)
            .find(|&p| {
                let to = flow(&format!("198.18.0.2:{p}"), "198.18.1.11:5353", PROTO_UDP);
                let f = frame(&to, &d);
                let l4 = &f[34..];
                u16::from_ne_bytes([l4[6], l4[7]]) == 0xffff
            })
            .expect("some port gives a rewritten UDP checksum of 0");
        let f = flow(
            &format!("198.18.0.2:{zero_port}"),
            "198.18.0.100:53",
            PROTO_UDP,
        );
        let to = flow(
            &format!("198.18.0.2:{zero_port}"),
            "198.18.1.11:5353",
            PROTO_UDP,
        );
        cases.push(Case {
            what: "nat udp/ipv4 whose new checksum is 0 sends 0xffff",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_REDIRECT,
            output: Expect::Frame(natted(to, &d, backend_mac(1), OUT_MAC)),
            reason: None,
        });

        // Back out of the ingress interface: XDP_TX.
        let f = flow("198.18.0.2:40010", "198.18.0.102:80", PROTO_TCP);
        let to = flow("198.18.0.2:40010", "198.18.0.20:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat to a backend out of the ingress interface -> XDP_TX",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_TX,
            output: Expect::Frame(natted(to, &d, TX_BACKEND_MAC, IN_MAC)),
            reason: None,
        });

        // No neighbour: rewritten, MACs untouched, XDP_PASS for the kernel.
        let f = flow("198.18.0.2:40011", "198.18.0.103:80", PROTO_TCP);
        let to = flow("198.18.0.2:40011", "198.18.1.99:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat, backend without neighbour entry -> rewritten, XDP_PASS",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Frame(natted(to, &d, IN_MAC, CLIENT_MAC)),
            reason: Some(Reason::FibNoNeighbour),
        });
        let f = flow("198.18.0.2:40012", "198.18.0.104:80", PROTO_TCP);
        let to = flow("198.18.0.2:40012", "198.19.200.10:8080", PROTO_TCP);
        cases.push(Case {
            what: "nat, no route to backend -> rewritten, XDP_PASS",
            input: frame(&f, &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Frame(natted(to, &d, IN_MAC, CLIENT_MAC)),
            reason: Some(Reason::FibFailed),
        });

        // TTL.
        let f = flow("198.18.0.2:40020", "198.18.0.100:80", PROTO_TCP);
        cases.push(Case {
            what: "nat, TTL 1 -> XDP_PASS untouched",
            input: frame(
                &f,
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });
        let f6 = flow("[2001:db8::2]:40020", "[2001:db8::100]:80", PROTO_TCP);
        cases.push(Case {
            what: "nat, hop limit 1 -> XDP_PASS untouched",
            input: frame(
                &f6,
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });

        // No backend.
        cases.push(Case {
            what: "VIP whose only backend has weight 0 -> XDP_DROP",
            input: frame(&flow("198.18.0.2:40030", "198.18.0.106:80", PROTO_TCP), &d),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::NoBackend),
        });

        // --- DSR ----------------------------------------------------------------
        for (what, f, mac, s) in [
            (
                "dsr tcp/ipv4: only MACs change",
                flow("198.18.0.2:41000", "198.18.0.101:80", PROTO_TCP),
                backend_mac(2),
                d.clone(),
            ),
            (
                "dsr tcp/ipv4 in a VLAN tag: only MACs change",
                flow("198.18.0.2:41001", "198.18.0.101:80", PROTO_TCP),
                backend_mac(2),
                Shape {
                    vlan: Some((0x8100, 5)),
                    ..d.clone()
                },
            ),
            (
                "dsr tcp/ipv6: only MACs change",
                flow("[2001:db8::2]:41000", "[2001:db8::101]:80", PROTO_TCP),
                backend_mac(2),
                d.clone(),
            ),
        ] {
            let input = frame(&f, &s);
            cases.push(Case {
                what,
                output: Expect::Frame(with_macs(input.clone(), mac, OUT_MAC)),
                input,
                ingress: inn,
                action: XDP_REDIRECT,
                reason: None,
            });
        }
        cases.push(Case {
            what: "dsr, backend without neighbour -> XDP_PASS untouched",
            input: frame(&flow("198.18.0.2:41002", "198.18.0.105:80", PROTO_TCP), &d),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::FibNoNeighbour),
        });
        cases.push(Case {
            what: "dsr, TTL 1 is forwarded anyway (IP untouched)",
            input: frame(
                &flow("198.18.0.2:41003", "198.18.0.101:80", PROTO_TCP),
                &Shape {
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: inn,
            action: XDP_REDIRECT,
            output: Expect::Any,
            reason: None,
        });

        // --- Reverse NAT of replies ----------------------------------------------
        for (what, reply, want, s) in [
            (
                "reply tcp/ipv4 from a nat backend: source becomes the VIP",
                flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
                flow("198.18.0.100:80", "198.18.0.2:40000", PROTO_TCP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ..d.clone()
                },
            ),
            (
                "reply udp/ipv4 from a nat backend",
                flow("198.18.1.11:5353", "198.18.0.2:40001", PROTO_UDP),
                flow("198.18.0.100:53", "198.18.0.2:40001", PROTO_UDP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(1),
                    ..d.clone()
                },
            ),
            (
                "reply tcp/ipv6 from a nat backend",
                flow("[2001:db8:1::10]:8080", "[2001:db8::2]:40000", PROTO_TCP),
                flow("[2001:db8::100]:80", "[2001:db8::2]:40000", PROTO_TCP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ..d.clone()
                },
            ),
            (
                "reply udp/ipv6 in a VLAN tag",
                flow("[2001:db8:1::11]:5353", "[2001:db8::2]:40001", PROTO_UDP),
                flow("[2001:db8::100]:53", "[2001:db8::2]:40001", PROTO_UDP),
                Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(1),
                    vlan: Some((0x8100, 9)),
                    ..d.clone()
                },
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&reply, &s),
                ingress: out,
                action: XDP_REDIRECT,
                output: Expect::Frame(frame(
                    &want,
                    &Shape {
                        dst_mac: CLIENT_MAC,
                        src_mac: IN_MAC,
                        ttl: s.ttl - 1,
                        ..s.clone()
                    },
                )),
                reason: None,
            });
        }
        cases.push(Case {
            what: "reply with TTL 1 -> XDP_PASS untouched",
            input: frame(
                &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
                &Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(0),
                    ttl: 1,
                    ..d.clone()
                },
            ),
            ingress: out,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::TtlExpired),
        });
        // The gateway's own connections to a nat backend's service address (the
        // agent's health checks): the backend's answers are for the gateway, not for
        // a client, so they must reach its stack as they are.
        for (what, f, i) in [
            (
                "tcp/ipv4 from a nat backend to the gateway itself -> pass untouched",
                flow("198.18.1.10:8080", "198.18.1.1:40000", PROTO_TCP),
                0,
            ),
            (
                "udp/ipv4 from a nat backend to the gateway itself -> pass untouched",
                flow("198.18.1.11:5353", "198.18.1.1:40001", PROTO_UDP),
                1,
            ),
            (
                "tcp/ipv6 from a nat backend to the gateway itself -> pass untouched",
                flow("[2001:db8:1::10]:8080", "[2001:db8:1::1]:40000", PROTO_TCP),
                0,
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(
                    &f,
                    &Shape {
                        dst_mac: OUT_MAC,
                        src_mac: backend_mac(i),
                        tcp_flags: SYN | ACK,
                        ..d.clone()
                    },
                ),
                ingress: out,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        cases.push(Case {
            what: "packet from a dsr backend is not reverse-translated",
            input: frame(
                &flow("198.18.1.12:80", "198.18.0.2:40000", PROTO_TCP),
                &Shape {
                    dst_mac: OUT_MAC,
                    src_mac: backend_mac(2),
                    ..d.clone()
                },
            ),
            ingress: out,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });

        // --- Not for a VIP: pass, byte-identical, not counted --------------------
        for (what, f) in [
            (
                "tcp to the gateway itself",
                flow("198.18.0.2:40000", "198.18.0.1:22", PROTO_TCP),
            ),
            (
                "tcp to a VIP address on another port",
                flow("198.18.0.2:40000", "198.18.0.100:443", PROTO_TCP),
            ),
            (
                "udp to a VIP address with the TCP VIP's port",
                flow("198.18.0.2:40000", "198.18.0.101:80", PROTO_UDP),
            ),
            (
                "ipv6 tcp to the gateway",
                flow("[2001:db8::2]:40000", "[2001:db8::1]:22", PROTO_TCP),
            ),
            (
                "tcp from a backend address but another port",
                flow("198.18.1.10:9999", "198.18.0.2:40000", PROTO_TCP),
            ),
        ] {
            cases.push(Case {
                what,
                input: frame(&f, &d),
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        let mut icmp = frame(&flow("198.18.0.2:0", "198.18.0.100:0", PROTO_TCP), &d);
        icmp[14 + 9] = 1; // ICMP; checksums are irrelevant to the program
        cases.push(Case {
            what: "icmp to a VIP address",
            input: icmp,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });
        let mut arp = vec![0xff; 6];
        arp.extend(CLIENT_MAC);
        arp.extend([0x08, 0x06]);
        arp.extend([0u8; 28]);
        cases.push(Case {
            what: "ARP",
            input: arp,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });
        let mut qinq = frame(
            &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                vlan: Some((0x88a8, 1)),
                ..d.clone()
            },
        );
        qinq[16..18].copy_from_slice(&0x8100u16.to_be_bytes()); // a second tag
        cases.push(Case {
            what: "two VLAN tags",
            input: qinq,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });

        // --- Truncated at every header boundary, and malformed --------------------
        let v4 = frame(&flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP), &d);
        let v6 = frame(
            &flow("[2001:db8::2]:42000", "[2001:db8::100]:80", PROTO_TCP),
            &d,
        );
        // 40 bytes of IP + TCP: an IHL of 15 (60 bytes) reaches past the total length.
        let v4_bare = frame(
            &flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                payload: 0,
                ..d.clone()
            },
        );
        let v4_vlan = frame(
            &flow("198.18.0.2:42000", "198.18.0.100:80", PROTO_TCP),
            &Shape {
                vlan: Some((0x8100, 3)),
                ..d.clone()
            },
        );
        // (The kernel refuses frames shorter than an Ethernet header.)
        cases.push(Case {
            what: "ethernet only (IPv4 EtherType)",
            input: v4[..14].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        cases.push(Case {
            what: "VLAN tag cut short",
            input: v4_vlan[..16].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::NotIp),
        });
        cases.push(Case {
            what: "VLAN tag, no IP header",
            input: v4_vlan[..18].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        cases.push(Case {
            what: "IPv4 header cut short before the destination",
            input: v4[..14 + 19].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        for cut in [14 + 20, 14 + 20 + 4, 14 + 20 + 19, v4.len() - 1] {
            cases.push(Case {
                what: "IPv4 to a VIP cut short after the IP header (total length > frame)",
                input: v4[..cut].to_vec(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        cases.push(Case {
            what: "IPv6 header cut short",
            input: v6[..14 + 39].to_vec(),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        for cut in [14 + 40, 14 + 40 + 19, v6.len() - 1] {
            cases.push(Case {
                what: "IPv6 to a VIP cut short after the IP header (payload length > frame)",
                input: v6[..cut].to_vec(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        // Consistent IP lengths, but the L4 header is cut short.
        for (what, f, l4_len) in [
            (
                "tcp/ipv4 header cut to 19 bytes",
                flow("198.18.0.2:42001", "198.18.0.100:80", PROTO_TCP),
                19usize,
            ),
            (
                "udp/ipv4 header cut to 7 bytes",
                flow("198.18.0.2:42001", "198.18.0.100:53", PROTO_UDP),
                7,
            ),
            (
                "tcp/ipv4 with no L4 header",
                flow("198.18.0.2:42001", "198.18.0.100:80", PROTO_TCP),
                0,
            ),
            (
                "tcp/ipv6 header cut to 10 bytes",
                flow("[2001:db8::2]:42001", "[2001:db8::100]:80", PROTO_TCP),
                10,
            ),
            (
                "udp/ipv6 header cut to 4 bytes",
                flow("[2001:db8::2]:42001", "[2001:db8::100]:53", PROTO_UDP),
                4,
            ),
        ] {
            let mut fr = frame(
                &f,
                &Shape {
                    payload: 0,
                    ..d.clone()
                },
            );
            let l3 = 14;
            let hl = if f.src.is_ipv4() { 20 } else { 40 };
            fr.truncate(l3 + hl + l4_len);
            if f.src.is_ipv4() {
                fr[l3 + 2..l3 + 4].copy_from_slice(&((hl + l4_len) as u16).to_be_bytes());
            } else {
                fr[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            }
            cases.push(Case {
                what,
                input: fr.clone(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::TruncatedL4),
            });
            // The same to a non-VIP address: not ours.
            let mut other = fr;
            if f.src.is_ipv4() {
                other[l3 + 19] = 1; // 198.18.0.1
            } else {
                other[l3 + 38] = 0; // 2001:db8::1
                other[l3 + 39] = 1;
            }
            cases.push(Case {
                what: "truncated L4 to a non-VIP address",
                input: other,
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        // Header fields.
        let mutate = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = base.to_vec();
            f(&mut v);
            v
        };
        for (what, input) in [
            ("IHL 4", mutate(&v4, &|v| v[14] = 0x44)),
            ("IHL 0", mutate(&v4, &|v| v[14] = 0x40)),
            ("IPv4 EtherType, version 6", mutate(&v4, &|v| v[14] = 0x65)),
            ("IPv4 EtherType, version 0", mutate(&v4, &|v| v[14] = 0x05)),
            (
                "IPv4 total length > frame",
                mutate(&v4, &|v| {
                    let n = v.len();
                    v[16..18].copy_from_slice(&((n - 14 + 1) as u16).to_be_bytes())
                }),
            ),
            (
                "IPv4 total length < header",
                mutate(&v4, &|v| v[16..18].copy_from_slice(&19u16.to_be_bytes())),
            ),
            (
                "IHL beyond total length",
                mutate(&v4_bare, &|v| v[14] = 0x4f),
            ),
            ("IPv6 EtherType, version 4", mutate(&v6, &|v| v[14] = 0x40)),
            (
                "IPv6 payload length > frame",
                mutate(&v6, &|v| {
                    let n = v.len();
                    v[18..20].copy_from_slice(&((n - 54 + 1) as u16).to_be_bytes())
                }),
            ),
        ] {
            cases.push(Case {
                what,
                input,
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::BadIpHeader),
            });
        }
        let to_other = |base: &[u8], v6: bool| {
            let mut v = base.to_vec();
            if v6 {
                v[14 + 38] = 0; // 2001:db8::1
                v[14 + 39] = 1;
            } else {
                v[14 + 19] = 1;
            }
            v
        };
        cases.push(Case {
            what: "IHL 4 to a non-VIP address -> pass",
            input: to_other(&mutate(&v4, &|v| v[14] = 0x44), false),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: Some(Reason::BadIpHeader),
        });
        // Fragments and extension headers.
        let frag = |base: &[u8], bits: u16| {
            let mut v = base.to_vec();
            v[14 + 6..14 + 8].copy_from_slice(&bits.to_be_bytes());
            v[14 + 10] = 0;
            v[14 + 11] = 0;
            let c = checksum::finish(checksum::sum(&v[14..34], 0));
            v[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
            v
        };
        cases.push(Case {
            what: "first IPv4 fragment to a VIP",
            input: frag(&v4, 0x2000),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "later IPv4 fragment to a VIP",
            input: frag(&v4, 0x0010),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "last IPv4 fragment to a VIP",
            input: frag(&v4, 0x0123),
            ingress: inn,
            action: XDP_DROP,
            output: Expect::Any,
            reason: Some(Reason::Unparseable),
        });
        cases.push(Case {
            what: "IPv4 fragment to a non-VIP address",
            input: to_other(&frag(&v4, 0x2000), false),
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });
        for nh in [0u8, 43, 44, 60] {
            let mut v = v6.clone();
            v[14 + 6] = nh;
            cases.push(Case {
                what: "IPv6 extension header to a VIP",
                input: v.clone(),
                ingress: inn,
                action: XDP_DROP,
                output: Expect::Any,
                reason: Some(Reason::Unparseable),
            });
            cases.push(Case {
                what: "IPv6 extension header to a non-VIP address",
                input: to_other(&v, true),
                ingress: inn,
                action: XDP_PASS,
                output: Expect::Same,
                reason: None,
            });
        }
        let mut icmp6 = v6.clone();
        icmp6[14 + 6] = 58;
        cases.push(Case {
            what: "ICMPv6 to a VIP address passes",
            input: icmp6,
            ingress: inn,
            action: XDP_PASS,
            output: Expect::Same,
            reason: None,
        });

        run_cases(&gw, cases);
    });
}

// ---------------------------------------------------------------------------
// The kernel's choice against the agent's prediction; flow stickiness.
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic flows without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn random_flow(rng: &mut Rng, vip: SocketAddr, proto: u8) -> Flow {
    let r = rng.next();
    let src: IpAddr = if vip.is_ipv4() {
        // Clients anywhere in 198.18.0.0/15, except the gateway's own /24s.
        Ipv4Addr::new(
            198,
            18 + (r & 1) as u8,
            2 + ((r >> 8) % 250) as u8,
            ((r >> 16) % 254) as u8 + 1,
        )
        .into()
    } else {
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100,
            0,
            0,
            0,
            (r >> 8) as u16,
            (r >> 24) as u16,
        )
        .into()
    };
    Flow {
        src: SocketAddr::new(src, 1024 + ((r >> 40) % 60_000) as u16),
        dst: vip,
        proto,
    }
}

/// Sends the flow's first packet (a SYN for TCP); returns where it went (from the
/// output frame).
fn send(gw: &Gateway, f: &Flow) -> SocketAddr {
    send_flags(gw, f, SYN)
}

/// Sends a packet of an established TCP flow (ACK, no SYN).
fn send_established(gw: &Gateway, f: &Flow) -> SocketAddr {
    send_flags(gw, f, ACK | PSH)
}

/// Sends one packet of `f` with TCP flags `tcp_flags`; returns where it went.
fn send_flags(gw: &Gateway, f: &Flow, tcp_flags: u8) -> SocketAddr {
    let input = frame(
        f,
        &Shape {
            tcp_flags,
            ..Shape::default()
        },
    );
    let (action, out) = gw.run(&input, gw.in_index);
    assert_eq!(
        action,
        XDP_REDIRECT,
        "flow {f:?}: action {}",
        keystone_common::xdp_action_name(action)
    );
    assert_checksums("random flow", &out);
    parse_flow(&out).dst
}

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

/// A TCP SYN without ACK is a new connection even when its 4-tuple is still in the
/// connection table (a client reusing the source port of a closed connection): it is
/// picked through the live table, like IPVS's `conn_reuse_mode`, while the tuple's
/// established packets keep their backend.
#[test]
fn a_syn_on_a_tracked_tuple_is_picked_through_the_live_table() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let v = ep(vip4(100), 80, PROTO_TCP);
        let b0 = ep(backend4(0), 8080, PROTO_TCP);
        let b1 = ep(backend4(1), 8080, PROTO_TCP);
        let spec = |w0, w1| {
            vec![vip(
                "v",
                v,
                mode::NAT,
                vec![backend("b0", b0, w0), backend("b1", b1, w1)],
            )]
        };
        let new_flows = |gw: &Gateway, b: &Endpoint| {
            gw.counters()
                .backends
                .iter()
                .find(|(_, e, _)| e == b)
                .map(|(_, _, t)| t.new_flows)
                .expect("backend counters")
        };
        let pinned_slot = |gw: &Gateway, f: &Flow| {
            gw.dp
                .conn(&f.key())
                .expect("read CONNS")
                .map(|state| state.backend)
        };
        let (to0, to1) = (b0.socket_addr(), b1.socket_addr());
        let f = flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP);

        gw.apply(&spec(100, 0));
        assert_eq!(send(&gw, &f), to0, "first connection's SYN");
        assert_eq!(send_established(&gw, &f), to0);
        assert_eq!(new_flows(&gw, &b0), 1);

        // Canary step to 0/100: the first connection's remaining packets (before the
        // port is reused) stay on b0.
        gw.apply(&spec(0, 100));
        assert_eq!(
            send_established(&gw, &f),
            to0,
            "established packet moved after a weight change"
        );
        assert_eq!(
            send_flags(&gw, &f, FIN | ACK),
            to0,
            "the old connection's FIN"
        );
        assert_eq!(pinned_slot(&gw, &f), gw.dp.backend_slot(&v, &b0));

        // The client reuses the 4-tuple for a new connection: its SYN follows the
        // live table (b1), re-pins the tuple and counts as a new flow.
        assert_eq!(
            send(&gw, &f),
            to1,
            "a new connection on a reused 4-tuple went to the weight-0 backend"
        );
        assert_eq!(pinned_slot(&gw, &f), gw.dp.backend_slot(&v, &b1));
        assert_eq!((new_flows(&gw, &b0), new_flows(&gw, &b1)), (1, 1));
        // Its retransmit picks the same backend: nothing rewritten, no new flow.
        assert_eq!(send(&gw, &f), to1, "SYN retransmit");
        assert_eq!(new_flows(&gw, &b1), 1, "a SYN retransmit is not a new flow");
        // The new connection is established on b1 and keeps it across a weight change.
        gw.apply(&spec(100, 0));
        assert_eq!(send_established(&gw, &f), to1);
        // SYN+ACK is not a new connection: it follows the pinned entry.
        assert_eq!(send_flags(&gw, &f, SYN | ACK), to1);

        // No backend takes new connections: a SYN on the tracked tuple is dropped
        // (NoBackend), its established packets still reach their backend.
        gw.apply(&spec(0, 0));
        let before = gw.counters();
        let (action, _) = gw.run(&frame(&f, &Shape::default()), gw.in_index);
        assert_eq!(action, XDP_DROP, "SYN with no backend for new connections");
        assert_eq!(
            reason_deltas(&before, &gw.counters()),
            vec![(Reason::NoBackend, 1)]
        );
        assert_eq!(send_established(&gw, &f), to1);
    });
}

fn l4(syn: u64, syn_ack: u64, rst: u64, fin: u64) -> L4Counters {
    L4Counters {
        syn,
        syn_ack,
        rst,
        fin,
    }
}

/// Per backend, the L4 counters that moved between two readings.
fn l4_deltas(before: &Counters, after: &Counters) -> Vec<(SocketAddr, L4Counters)> {
    let mut deltas: Vec<(SocketAddr, L4Counters)> = after
        .backend_l4
        .iter()
        .filter_map(|(vip, b, a)| {
            let z = L4Counters::default();
            let old = before
                .backend_l4
                .iter()
                .find(|(v, e, _)| v == vip && e == b)
                .map_or(z, |(_, _, c)| *c);
            let d = l4(
                a.syn - old.syn,
                a.syn_ack - old.syn_ack,
                a.rst - old.rst,
                a.fin - old.fin,
            );
            (d != z).then_some((b.socket_addr(), d))
        })
        .collect();
    deltas.sort_by_key(|(b, _)| *b);
    deltas
}

/// (what, flow, frame shape, TCP flags, ingress, action, L4 counters that move).
type L4Step = (
    &'static str,
    Flow,
    Shape,
    u8,
    u32,
    u32,
    Vec<(SocketAddr, L4Counters)>,
);

/// Passive TCP signals per backend: client SYNs (ACK clear) count `syn` for the
/// backend they go to, a nat backend's SYN+ACK/RST/FIN replies count for it; UDP and
/// other segments count nothing; dsr backends only get `syn`.
#[test]
fn l4_counters_count_syns_and_the_backends_answers() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let config = case_config();
        gw.apply(&config);
        let (inn, out) = (gw.in_index, gw.out_index);
        let start = gw.counters();
        let programmed: usize = config.iter().map(|v| v.backends.len()).sum();
        assert_eq!(start.backend_l4.len(), programmed, "one entry per backend");
        assert!(
            start
                .backend_l4
                .iter()
                .all(|(_, _, c)| *c == L4Counters::default())
        );

        let client = |s: &str, proto| flow("198.18.0.2:41000", s, proto);
        let from_backend = |b: &str, proto| flow(b, "198.18.0.2:41000", proto);
        let from_client = Shape::default();
        let from = |i: u8| Shape {
            dst_mac: OUT_MAC,
            src_mac: backend_mac(i),
            ..Shape::default()
        };
        let b0: SocketAddr = "198.18.1.10:8080".parse().unwrap();
        let b6: SocketAddr = "[2001:db8:1::10]:8080".parse().unwrap();
        let d0: SocketAddr = "198.18.1.12:80".parse().unwrap();
        #[rustfmt::skip]
        let steps: Vec<L4Step> = vec![
            ("nat SYN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0))]),
            ("nat SYN retransmit", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0))]),
            ("nat SYN+ACK reply", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 1, 0, 0))]),
            ("client ACK", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![]),
            ("client data", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK | PSH, inn, XDP_REDIRECT, vec![]),
            ("backend data", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), ACK | PSH, out, XDP_REDIRECT, vec![]),
            ("client FIN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), FIN | ACK, inn, XDP_REDIRECT, vec![]),
            ("backend FIN", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), FIN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 0, 1))]),
            ("backend RST+ACK (refused)", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0))]),
            ("backend RST", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0))]),
            // The agent's own health check of b0: not a client's connection.
            ("backend SYN+ACK to the gateway itself", flow("198.18.1.10:8080", "198.18.1.1:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_PASS, vec![]),
            ("nat ipv6 SYN", flow("[2001:db8::2]:41000", "[2001:db8::100]:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b6, l4(1, 0, 0, 0))]),
            ("nat ipv6 SYN+ACK", flow("[2001:db8:1::10]:8080", "[2001:db8::2]:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b6, l4(0, 1, 0, 0))]),
            ("udp to a nat VIP", client("198.18.0.100:53", PROTO_UDP), from_client.clone(), 0, inn, XDP_REDIRECT, vec![]),
            ("udp reply", from_backend("198.18.1.11:5353", PROTO_UDP), from(1), 0, out, XDP_REDIRECT, vec![]),
            ("dsr SYN", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(d0, l4(1, 0, 0, 0))]),
            ("dsr ACK", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![]),
            // A dsr backend answers the client directly; a packet from it that does
            // cross the gateway is not a reply the gateway translates or counts.
            ("dsr backend SYN+ACK", from_backend("198.18.1.12:80", PROTO_TCP), from(2), SYN | ACK, out, XDP_PASS, vec![]),
            ("SYN with no backend", client("198.18.0.106:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_DROP, vec![]),
        ];
        for (what, f, shape, tcp_flags, ingress, action, want) in steps {
            let before = gw.counters();
            let (got, _) = gw.run(&frame(&f, &Shape { tcp_flags, ..shape }), ingress);
            assert_eq!(
                got,
                action,
                "{what}: action {}",
                keystone_common::xdp_action_name(got)
            );
            assert_eq!(
                l4_deltas(&before, &gw.counters()),
                want,
                "{what}: L4 counters"
            );
        }
        let total: Vec<_> = l4_deltas(&start, &gw.counters());
        assert_eq!(
            total,
            vec![
                (b0, l4(2, 1, 2, 1)),
                (d0, l4(1, 0, 0, 0)),
                (b6, l4(1, 1, 0, 0)),
            ],
            "totals"
        );
    });
}

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
        assert!(
            pin_dir.join(format!("link_{IN_IF}")).exists(),
            "link pinned"
        );
        dp.shutdown(true).unwrap();
        drop(dp);

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
        let gw = Gateway {
            dp,
            _bpffs: bpffs,
            in_index: ifindex(IN_IF),
            out_index: ifindex(OUT_IF),
        };
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
            vec![(b0.socket_addr(), l4(0, 1, 0, 0))]
        );
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
    use aya::maps::MapInfo;
    use keystone_agent::dataplane::{DataplaneError, Limits, aya_dataplane::sized_maps};

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
        for (map, field, entries) in sized_maps(&limits) {
            let info = MapInfo::from_pin(pin_dir.join(map)).unwrap();
            assert_eq!(info.max_entries(), entries, "{map} (limits.{field})");
        }
        let specs = three_small_vips();
        dp.apply(&specs).unwrap_or_else(|e| panic!("apply: {e}"));
        let mut gw = Gateway {
            dp,
            _bpffs: bpffs,
            in_index: ifindex(IN_IF),
            out_index: ifindex(OUT_IF),
        };
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
            matches!(err, DataplaneError::TooManyVips { max: 3, .. }),
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
        let mut gw = Gateway {
            dp,
            _bpffs: bpffs,
            in_index: ifindex(IN_IF),
            out_index: ifindex(OUT_IF),
        };
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

/// Per-packet cost as the kernel measures it (`BPF_PROG_TEST_RUN` duration), printed
/// rather than asserted: `cargo test -p keystone-tests --test packet -- --ignored --nocapture`.
#[test]
#[ignore = "prints timings; run by hand"]
fn per_packet_cost() {
    in_netns(|| {
        let mut gw = Gateway::new();
        gw.apply(&case_config());
        let avg = |input: &[u8], ingress: u32, repeat: u32| {
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
            let mut out = vec![0u8; input.len() + 256];
            let opts = TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            };
            gw.dp
                .program()
                .test_run(opts)
                .expect("test run")
                .duration
                .as_nanos()
        };
        // Established packets are ACKs: a SYN (ACK clear) is always picked through the
        // Maglev table, timed separately below.
        let d = Shape {
            tcp_flags: ACK,
            ..Shape::default()
        };
        let syn = Shape::default();
        let nat = frame(&flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP), &d);
        let dsr = frame(&flow("198.18.0.2:40000", "198.18.0.101:80", PROTO_TCP), &d);
        let nat_syn = frame(
            &flow("198.18.0.2:40000", "198.18.0.100:80", PROTO_TCP),
            &syn,
        );
        let dsr_syn = frame(
            &flow("198.18.0.2:40000", "198.18.0.101:80", PROTO_TCP),
            &syn,
        );
        let reply = frame(
            &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
            &Shape {
                dst_mac: OUT_MAC,
                src_mac: backend_mac(0),
                ..d.clone()
            },
        );
        let reply_fin = frame(
            &flow("198.18.1.10:8080", "198.18.0.2:40000", PROTO_TCP),
            &Shape {
                dst_mac: OUT_MAC,
                src_mac: backend_mac(0),
                tcp_flags: FIN | ACK,
                ..d.clone()
            },
        );
        let other = frame(&flow("198.18.0.2:40000", "198.18.0.1:22", PROTO_TCP), &d);
        gw.run(&nat_syn, gw.in_index); // establish
        gw.run(&dsr_syn, gw.in_index);
        let runs = 20_000;
        // NAT rewrites its input, so time single runs of a fresh copy.
        let nat_ns: u128 =
            (0..runs).map(|_| avg(&nat, gw.in_index, 1)).sum::<u128>() / runs as u128;
        println!("nat, established flow:  {nat_ns} ns/packet (single runs)");
        println!(
            "dsr, established flow:  {} ns/packet",
            avg(&dsr, gw.in_index, 1_000_000)
        );
        println!(
            "not for a VIP:          {} ns/packet",
            avg(&other, gw.in_index, 1_000_000)
        );
        let dsr_single: u128 =
            (0..runs).map(|_| avg(&dsr, gw.in_index, 1)).sum::<u128>() / runs as u128;
        println!(
            "dsr, established flow:  {dsr_single} ns/packet (single runs, to compare with nat)"
        );
        let nat_syn_ns: u128 = (0..runs)
            .map(|_| avg(&nat_syn, gw.in_index, 1))
            .sum::<u128>()
            / runs as u128;
        println!("nat, SYN of a tracked tuple: {nat_syn_ns} ns/packet (single runs)");
        println!(
            "dsr, SYN of a tracked tuple: {} ns/packet",
            avg(&dsr_syn, gw.in_index, 1_000_000)
        );
        let reply_ns: u128 = (0..runs)
            .map(|_| avg(&reply, gw.out_index, 1))
            .sum::<u128>()
            / runs as u128;
        println!("nat reply, ACK:         {reply_ns} ns/packet (single runs)");
        let fin_ns: u128 = (0..runs)
            .map(|_| avg(&reply_fin, gw.out_index, 1))
            .sum::<u128>()
            / runs as u128;
        println!("nat reply, FIN (counted): {fin_ns} ns/packet (single runs)");
        let mut icmp = other.clone();
        icmp[14 + 9] = 1;
        println!(
            "icmp (parse only):      {} ns/packet",
            avg(&icmp, gw.in_index, 1_000_000)
        );
    });
}
