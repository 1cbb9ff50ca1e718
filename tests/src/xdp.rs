//! The `BPF_PROG_TEST_RUN` environment shared by the packet tests
//! (`tests/tests/packet/`) and `ks-packet-bench` (`cargo xtask bench packet`): a
//! network namespace with a fixed topology so `bpf_fib_lookup` answers
//! deterministically, the program loaded by the agent's own `AyaDataplane`, frame
//! builders, and the config helpers.
//!
//! Everything here panics with context on failure (it runs inside tests and a bench
//! binary); the namespace goes away with its thread and the bpffs is unmounted on drop.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use keystone_agent::dataplane::{
    AyaDataplane, BackendSpec, Counters, Dataplane, LoadOptions, VipSpec,
};
use keystone_common::{
    Endpoint, Event, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason, checksum,
    iface_flags, tcp_flags::SYN,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

// ---------------------------------------------------------------------------
// Environment: network namespace, bpffs, topology.
// ---------------------------------------------------------------------------

/// The gateway's client-side interface (packets from clients arrive here).
pub const IN_IF: &str = "ksin";
pub const IN_PEER: &str = "ksinp";
/// The gateway's backend-side interface.
pub const OUT_IF: &str = "ksout";
pub const OUT_PEER: &str = "ksoutp";
pub const IN_MAC: [u8; 6] = [0x02, 0x6b, 0x73, 0, 0, 0x01];
pub const OUT_MAC: [u8; 6] = [0x02, 0x6b, 0x73, 0, 1, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Client-side hosts (on IN_IF): the client and a backend reachable back out of IN_IF.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const TX_BACKEND4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
pub const TX_BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// Backends behind OUT_IF with static neighbour entries: 198.18.1.10.. / 2001:db8:1::10..
pub const BACKENDS: u8 = 8;
/// A backend behind OUT_IF without a neighbour entry.
pub const NO_NEIGH4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
/// A backend with no route at all.
pub const NO_ROUTE4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 10);

pub fn backend4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + i)
}
pub fn backend6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16)
}
pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, 0x10 + i]
}

pub fn vip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}
pub fn vip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

pub fn sh(args: &[&str]) {
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

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A bpffs mounted at a unique directory under /run, unmounted and removed on drop.
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn mount() -> Self {
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
pub fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
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

pub fn setup_topology() {
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
    set_neighbour(CLIENT4, CLIENT_MAC, IN_IF);
    set_neighbour(CLIENT6, CLIENT_MAC, IN_IF);
    set_neighbour(TX_BACKEND4, TX_BACKEND_MAC, IN_IF);
    for i in 0..BACKENDS {
        set_neighbour(backend4(i), backend_mac(i), OUT_IF);
        set_neighbour(backend6(i), backend_mac(i), OUT_IF);
    }
}

/// A permanent neighbour entry: `ip` is at `mac` on `dev`.
pub fn set_neighbour(ip: impl std::fmt::Display, mac: [u8; 6], dev: &str) {
    sh(&[
        "ip",
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac_str(mac),
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("if_nametoindex({name}): {e}"))
}

/// The loaded program, its maps and the netns it runs in (the caller's thread's).
pub struct Gateway {
    pub dp: AyaDataplane,
    /// Holds the pins; dropped (unmounted) after `dp`, as fields drop in order.
    pub _bpffs: Bpffs,
    pub in_index: u32,
    pub out_index: u32,
}

impl Gateway {
    /// A gateway over a data plane loaded by the caller (e.g. over maps it pinned
    /// first), keeping `bpffs` mounted as long as it lives.
    /// Both test interfaces are marked as native XDP redirect targets, as if the
    /// program were attached to them (`iface_flags::REDIRECT_TARGET`).
    pub fn with(mut dp: AyaDataplane, bpffs: Bpffs) -> Self {
        let (in_index, out_index) = (ifindex(IN_IF), ifindex(OUT_IF));
        for i in [in_index, out_index] {
            dp.set_iface_flags(i, iface_flags::REDIRECT_TARGET)
                .unwrap_or_else(|e| panic!("marking ifindex {i}: {e}"));
        }
        Gateway {
            dp,
            _bpffs: bpffs,
            in_index,
            out_index,
        }
    }

    pub fn new() -> Self {
        let bpffs = Bpffs::mount();
        let dp = AyaDataplane::load(LoadOptions::new(bpffs.dir.join("keystone")))
            .unwrap_or_else(|e| panic!("AyaDataplane::load: {e} ({e:?})"));
        Gateway::with(dp, bpffs)
    }

    pub fn apply(&mut self, vips: &[VipSpec]) {
        self.dp.apply(vips).unwrap_or_else(|e| panic!("apply: {e}"));
    }

    pub fn counters(&self) -> Counters {
        self.dp
            .counters()
            .unwrap_or_else(|e| panic!("counters: {e}"))
    }

    /// Runs one frame arriving on `ifindex`; returns (action, output frame).
    pub fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_frame(&self.dp, frame, ifindex)
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Self::new()
    }
}

/// What one `BPF_PROG_TEST_RUN` call returned.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The XDP action.
    pub action: u32,
    /// The program's run time as the kernel measured it (repeat = 1, so this
    /// includes the test harness's own timer reads: compare against a floor
    /// program measured the same way).
    pub duration: Duration,
}

/// Runs one frame through `dp`'s program (`BPF_PROG_TEST_RUN`, repeat 1) as if it
/// arrived on `ifindex`; returns (action, output frame).
pub fn run_frame(dp: &AyaDataplane, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = Vec::new();
    let run = test_run(dp.program(), frame, ifindex, &mut out);
    (run.action, out)
}

/// Runs `prog` once (repeat = 1: every call starts from `frame`, never from the
/// previous call's output) on `frame` arriving on `ifindex`. `out` receives the
/// output frame; it is reused across calls so a timing loop allocates nothing.
pub fn test_run(prog: &Xdp, frame: &[u8], ifindex: u32, out: &mut Vec<u8>) -> TestRunOutcome {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    out.clear();
    out.resize(frame.len() + 256, 0);
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out.as_mut_slice()),
        ctx_in: Some(&ctx),
        ..TestRunOptions::default()
    };
    let result = prog
        .test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()));
    out.truncate(result.data_size_out as usize);
    TestRunOutcome {
        action: result.return_value,
        duration: result.duration,
    }
}

// ---------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

pub fn flow(src: &str, dst: &str, proto: u8) -> Flow {
    Flow {
        src: src.parse().expect("src"),
        dst: dst.parse().expect("dst"),
        proto,
    }
}

impl Flow {
    pub fn key(&self) -> FlowKey {
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
pub struct Shape {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<(u16, u16)>,
    pub ttl: u8,
    pub payload: usize,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// Send UDP/IPv4 with checksum 0 ("none").
    pub udp_no_checksum: bool,
    /// TCP flags (`keystone_common::tcp_flags`); SYN by default, a flow's first packet.
    pub tcp_flags: u8,
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

pub fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn pseudo_sum(f: &Flow, l4_len: usize) -> u64 {
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
pub fn frame(f: &Flow, s: &Shape) -> Vec<u8> {
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

    wrap_ip(f.src.ip(), f.dst.ip(), f.proto, l4, s)
}

/// `l4` (the IP payload) behind an IP header from `src` to `dst` (checksum computed)
/// and an Ethernet header (with the shape's MACs, VLAN tag, TTL and IPv4 options).
pub fn wrap_ip(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>, s: &Shape) -> Vec<u8> {
    let mut ip = Vec::new();
    if src.is_ipv4() {
        let hl = 20 + s.options.len();
        ip.push(0x40 | (hl / 4) as u8);
        ip.push(0); // tos
        ip.extend(((hl + l4.len()) as u16).to_be_bytes());
        ip.extend([0x12, 0x34, 0x40, 0x00]); // id, DF
        ip.extend([s.ttl, proto, 0, 0]);
        ip.extend(octets(src));
        ip.extend(octets(dst));
        ip.extend(&s.options);
        let c = checksum::finish(checksum::sum(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    } else {
        ip.extend([0x60, 0, 0, 0]);
        ip.extend((l4.len() as u16).to_be_bytes());
        ip.extend([proto, s.ttl]);
        ip.extend(octets(src));
        ip.extend(octets(dst));
    }

    let mut out = Vec::new();
    out.extend(s.dst_mac);
    out.extend(s.src_mac);
    if let Some((tpid, tci)) = s.vlan {
        out.extend(tpid.to_be_bytes());
        out.extend(tci.to_be_bytes());
    }
    out.extend(if src.is_ipv4() {
        [0x08, 0x00]
    } else {
        [0x86, 0xdd]
    });
    out.extend(ip);
    out.extend(l4);
    out
}

/// An ICMP error frame from `from` to `to` quoting `quote` (the start of an IP
/// packet, cut where the sender chose): ICMPv4 for IPv4 addresses, else ICMPv6;
/// the ICMP checksum is computed (ICMPv6: with its pseudo-header).
pub fn icmp_frame(
    from: IpAddr,
    to: IpAddr,
    (icmp_type, code): (u8, u8),
    mtu: u16,
    quote: &[u8],
    s: &Shape,
) -> Vec<u8> {
    let v4 = from.is_ipv4();
    let mut msg = vec![icmp_type, code, 0, 0];
    // ICMPv4: 16 unused bits, then the next-hop MTU; ICMPv6: a 32-bit MTU.
    msg.extend(u32::from(mtu).to_be_bytes());
    msg.extend(quote);
    let pseudo = if v4 {
        0
    } else {
        let mut p = octets(from);
        p.extend(octets(to));
        p.extend((msg.len() as u32).to_be_bytes());
        p.extend([0, 0, 0, PROTO_ICMPV6]);
        checksum::sum(&p, 0)
    };
    let c = checksum::finish(checksum::sum(&msg, pseudo));
    msg[2..4].copy_from_slice(&c.to_ne_bytes());
    wrap_ip(from, to, if v4 { PROTO_ICMP } else { PROTO_ICMPV6 }, msg, s)
}

/// Offset of the IP header.
pub fn l3_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    }
}

/// Parses a frame's flow back out (addresses, ports, protocol).
pub fn parse_flow(frame: &[u8]) -> Flow {
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
pub fn assert_checksums(what: &str, frame: &[u8]) {
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

pub fn ep(addr: impl Into<IpAddr>, port: u16, proto: u8) -> Endpoint {
    Endpoint::new(SocketAddr::new(addr.into(), port), proto)
}

pub fn backend(name: &str, endpoint: Endpoint, weight: u32) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        endpoint,
        weight,
        up: true,
    }
}

pub fn vip(name: &str, vip: Endpoint, mode: u32, backends: Vec<BackendSpec>) -> VipSpec {
    VipSpec {
        name: name.into(),
        vip,
        mode,
        flags: 0,
        ring_size: 65_537,
        backends,
    }
}

/// The reason counters that moved between `before` and `after`, by how much.
pub fn reason_deltas(before: &Counters, after: &Counters) -> Vec<(Reason, u64)> {
    deltas(&Reason::ALL, &before.reasons, &after.reasons, |r| {
        r as usize
    })
}

/// The event counters that moved between `before` and `after`, by how much.
pub fn event_deltas(before: &Counters, after: &Counters) -> Vec<(Event, u64)> {
    deltas(&Event::ALL, &before.events, &after.events, |e| e as usize)
}

fn deltas<T: Copy>(
    all: &[T],
    before: &[u64],
    after: &[u64],
    index: fn(T) -> usize,
) -> Vec<(T, u64)> {
    all.iter()
        .filter_map(|&c| {
            let d = after[index(c)] - before[index(c)];
            (d != 0).then_some((c, d))
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
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

/// xorshift64*: deterministic flows without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Rewrites `frame`'s flow as the program should (NAT): new addresses/ports, TTL - 1,
/// new MACs; recomputed from scratch by the builder.
pub fn natted(to: Flow, s: &Shape, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
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

pub fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}
