//! The `BPF_PROG_TEST_RUN` environment shared by the packet tests
//! (`tests/tests/packet/`) and `ks-packet-bench` (`cargo xtask bench packet`): a
//! network namespace with a fixed topology so `bpf_fib_lookup` answers
//! deterministically, the program loaded by the agent's own `AyaDataplane` and run
//! at either hook (`in_netns` runs a test once per hook), frame builders, and the
//! config helpers.
//!
//! This file is the environment and the test run; the frame builders are in
//! `xdp/frames.rs`, the config helpers in `xdp/specs.rs` (both re-exported here).
//!
//! Everything here panics with context on failure (it runs inside tests and a bench
//! binary); the namespace goes away with its thread and the bpffs is unmounted on drop.

use std::{
    cell::Cell,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
pub use keystone_agent::dataplane::Hook;
use keystone_agent::dataplane::{
    AttachMode, AyaDataplane, Counters, Dataplane, LoadOptions, VipSpec,
};
use keystone_common::iface_flags;

mod frames;
mod specs;

pub use frames::*;
pub use specs::*;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The tc verdicts (`TC_ACT_*`) the tc program returns.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The tc verdict for an XDP action, as the program maps it.
pub fn tc_verdict(xdp_action: u32) -> u32 {
    match xdp_action {
        XDP_PASS => TC_ACT_OK,
        XDP_TX | XDP_REDIRECT => TC_ACT_REDIRECT,
        _ => TC_ACT_SHOT,
    }
}

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

thread_local! {
    static HOOK: Cell<Hook> = const { Cell::new(Hook::Xdp) };
}

/// The hook this thread's test runs the program at (set by `in_netns_at`).
pub fn hook() -> Hook {
    HOOK.with(Cell::get)
}

/// The `attach:` mode for this thread's hook (for tests that attach to interfaces).
pub fn attach_mode() -> AttachMode {
    match hook() {
        Hook::Xdp => AttachMode::Driver,
        Hook::Tc => AttachMode::Tc,
    }
}

/// Runs `f` once per hook (XDP, then tc): the same test for both programs.
pub fn in_netns<F: Fn() + Send + Sync + 'static>(f: F) {
    in_netns_at(&Hook::ALL, f)
}

/// Runs `f` once for each of `hooks`, each time in a new thread that first moves
/// into a fresh network namespace (which disappears with the thread, taking its
/// interfaces along), re-raising its panic with the hook named.
pub fn in_netns_at<F: Fn() + Send + Sync + 'static>(hooks: &[Hook], f: F) {
    let f = Arc::new(f);
    for &hook in hooks {
        let f = Arc::clone(&f);
        let handle = std::thread::spawn(move || {
            HOOK.with(|h| h.set(hook));
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| {
                panic!("unshare(CLONE_NEWNET): {e} (the packet tests need root)")
            });
            setup_topology();
            f();
        });
        if let Err(panic) = handle.join() {
            eprintln!("(that failure ran the program at the {hook:?} hook)");
            std::panic::resume_unwind(panic);
        }
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

/// How many programs `iface` (in this thread's namespace) runs at `hook`: XDP as
/// `ip link` shows it, tc as the kernel's tcx query lists them.
pub fn attached_programs(iface: &str, hook: Hook) -> usize {
    match hook {
        Hook::Xdp => {
            let out = Command::new("ip")
                .args(["-d", "-j", "link", "show", "dev", iface])
                .output()
                .unwrap_or_else(|e| panic!("ip link show dev {iface}: {e}"));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("ip -j link show dev {iface}: {e}"));
            let xdp = &json[0]["xdp"];
            usize::from(xdp["prog"]["id"].is_u64() || xdp["attached"][0]["prog"]["id"].is_u64())
        }
        Hook::Tc => SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("tcx query of {iface}: {e}"))
            .1
            .len(),
    }
}

pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("if_nametoindex({name}): {e}"))
}

/// The loaded program, its maps and the netns it runs in (the caller's thread's).
pub struct Gateway {
    pub dp: AyaDataplane,
    /// The program `run` runs: this thread's `hook()`.
    pub hook: Hook,
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
            hook: hook(),
            _bpffs: bpffs,
            in_index,
            out_index,
        }
    }

    pub fn new() -> Self {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.dir.join("keystone");
        let dp = AyaDataplane::load(LoadOptions::new(&pin_dir)).unwrap_or_else(|e| {
            panic!(
                "Gateway::new: loading the data plane (pins in {}) at the {:?} hook's test: {}",
                pin_dir.display(),
                hook(),
                crate::error::report(&e)
            )
        });
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

    /// Runs one frame arriving on `ifindex` through the gateway's hook; returns
    /// (XDP action, output frame). At tc the action is the one the program counted
    /// in `ACTION_STATS` (the only one that moved), checked against the tc verdict it
    /// returned (`tc_verdict`).
    pub fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        match self.hook {
            Hook::Xdp => run_frame(&self.dp, frame, ifindex),
            Hook::Tc => {
                let actions = || {
                    self.dp
                        .action_counters()
                        .unwrap_or_else(|e| panic!("ACTION_STATS: {e}"))
                };
                let before = actions();
                let mut out = Vec::new();
                let verdict = test_run_tc(self.dp.tc_program(), frame, ifindex, &mut out);
                let after = actions();
                let counted: Vec<u32> = (0..after.len() as u32)
                    .filter(|&a| after[a as usize] != before[a as usize])
                    .collect();
                let [action] = counted[..] else {
                    panic!("one packet at tc moved ACTION_STATS {before:?} → {after:?}");
                };
                assert_eq!(
                    verdict,
                    tc_verdict(action),
                    "the tc verdict must be what the counted {} maps to",
                    keystone_common::xdp_action_name(action)
                );
                (action, out)
            }
        }
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
    let result = run_once(prog, frame, &ctx, out, "");
    TestRunOutcome {
        action: result.return_value,
        duration: result.duration,
    }
}

/// One `BPF_PROG_TEST_RUN` of `prog` (`what`: which, for the panic) on `frame` with
/// context `ctx`; the output frame in `out`.
fn run_once<P>(prog: &P, frame: &[u8], ctx: &[u8], out: &mut Vec<u8>, what: &str) -> TestRunResult
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    out.clear();
    out.resize(frame.len() + 256, 0);
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out.as_mut_slice()),
        ctx_in: Some(ctx),
        ..TestRunOptions::default()
    };
    let result = prog.test_run(opts).unwrap_or_else(|e| {
        panic!(
            "BPF_PROG_TEST_RUN{what} on a {}-byte frame: {e}",
            frame.len()
        )
    });
    out.truncate(result.data_size_out as usize);
    result
}

/// Whether `BPF_PROG_TEST_RUN` builds an skb of `frame` for the tc program: it
/// refuses (EINVAL) a frame whose IPv4 or IPv6 header is cut short, as the kernel's
/// receive path never hands one to tc either, and a bare Ethernet header.
pub fn skb_buildable(frame: &[u8]) -> bool {
    let network = match frame.get(12..14) {
        Some([0x08, 0x00]) => 20,
        Some([0x86, 0xdd]) => 40,
        Some(_) => 1,
        None => return false,
    };
    frame.len() >= 14 + network
}

/// Runs the tc program once on `frame` arriving on `ifindex` (an skb on that
/// device, as `BPF_PROG_TEST_RUN` builds it); returns the tc verdict.
pub fn test_run_tc(prog: &SchedClassifier, frame: &[u8], ifindex: u32, out: &mut Vec<u8>) -> u32 {
    // `struct __sk_buff` up to `ifindex`: ingress_ifindex at 36, ifindex at 40.
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    run_once(prog, frame, &ctx, out, " (tc)").return_value
}
