//! The agent's view of the XDP data plane: desired state in, counters out.
//!
//! `Dataplane` is a trait so the control plane's logic runs against a fake in
//! tests that need no root; `aya_dataplane` is the real one.

use std::path::PathBuf;

use keystone_common::{
    Endpoint, Event, L4Counters, Reason, TrafficCounters,
    limits::{
        conn::{CONN_TABLE_SIZE, MAX_CONN_TABLE_SIZE, MIN_CONN_TABLE_SIZE},
        ring,
        stats::XDP_ACTIONS,
        vip::DEFAULT_MAX_VIPS,
    },
};
use serde::{Deserialize, Serialize};

pub mod aya_dataplane;
pub mod interfaces;
pub(crate) mod map_batch;
pub mod object;
pub mod pins;
pub mod problems;
pub mod rings;
pub mod start;
pub mod tables;

pub use aya_dataplane::{AttachMode, AyaDataplane, Hook, LoadOptions};
pub use tables::{FakeMaps, MapWriter, TableHash, Tables};

/// The data plane's capacities: the config's `limits:` section. They size the kernel
/// maps when the program is loaded, so they change only with a restart (and only
/// when nothing is pinned at other sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// VIPs (tenants) at most.
    pub max_vips: u32,
    /// Backends (services) at most, summed over all VIPs.
    pub max_backends: u32,
    /// Entries (4 bytes each) of the ring array holding every VIP's two Maglev tables:
    /// the tenants' `2 × ring_size` must fit.
    pub ring_entries: u32,
    /// Flows the LRU connection table tracks (about 100 bytes of kernel memory each).
    /// Beyond it the least recently used flows are evicted; their next packets are
    /// re-picked (same backend unless weights changed) and counted in
    /// `keystone_xdp_events_total{event="untracked_mid_flow"}`.
    pub conn_table_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: ring::DEFAULT_MAX_BACKENDS,
            ring_entries: ring::DEFAULT_RING_ENTRIES,
            conn_table_entries: CONN_TABLE_SIZE,
        }
    }
}

impl Limits {
    /// Accepted (field, minimum, maximum). The maxima keep a typo from asking the
    /// kernel for absurd amounts of memory (ring array ≤ 4 GiB, connection table
    /// ≈ 1.6 GiB); the connection table's minimum is there because the kernel's LRU
    /// lists are per CPU, so much smaller tables evict flows long before they are full.
    pub const RANGES: [(&'static str, u32, u32); 4] = [
        ("max_vips", 1, 1 << 20),
        ("max_backends", 1, 1 << 22),
        ("ring_entries", 1, 1 << 30),
        (
            "conn_table_entries",
            MIN_CONN_TABLE_SIZE,
            MAX_CONN_TABLE_SIZE,
        ),
    ];

    /// (field name, value) of every capacity, in `RANGES` order.
    pub fn fields(&self) -> [(&'static str, u32); 4] {
        [
            ("max_vips", self.max_vips),
            ("max_backends", self.max_backends),
            ("ring_entries", self.ring_entries),
            ("conn_table_entries", self.conn_table_entries),
        ]
    }

    /// Problems with the values themselves, as (field under `limits.`, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.fields()
            .into_iter()
            .zip(Self::RANGES)
            .filter(|((_, value), (_, min, max))| !(*min..=*max).contains(value))
            .map(|((field, value), (_, min, max))| {
                (field, format!("{value} is out of range ({min} to {max})"))
            })
            .collect()
    }

    /// Ring entries a set of VIPs needs: two tables each.
    pub fn ring_entries_needed(ring_sizes: impl IntoIterator<Item = u32>) -> u64 {
        ring_sizes
            .into_iter()
            .map(|s| u64::from(s) * u64::from(ring::SLOTS_PER_VIP))
            .sum()
    }
}

/// One VIP as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    /// Tenant name, for logs and metrics.
    pub name: String,
    pub vip: Endpoint,
    /// `keystone_common::mode::*`.
    pub mode: u32,
    /// `keystone_common::vip_flags::*`.
    pub flags: u32,
    /// Maglev table size (prime, ≤ `limits::ring::MAX_RING_SIZE`).
    pub ring_size: u32,
    pub backends: Vec<BackendSpec>,
}

/// One backend of a VIP as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Service name, for logs and metrics.
    pub name: String,
    pub endpoint: Endpoint,
    /// Relative weight for new flows; 0 keeps established flows but takes no new ones.
    pub weight: u32,
    /// False when health checks mark it down: its flows are re-picked.
    pub up: bool,
}

/// A VIP's new-connection split as the data plane holds it: Maglev table entries per
/// backend in its live table (read back from pinned maps after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveShares {
    pub vip: Endpoint,
    /// (backend, entries of the live table pointing at it); backends not up are left out.
    pub entries: Vec<(Endpoint, u32)>,
}

/// Summed (over CPUs) counters read from the kernel, and the tables' hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub vips: Vec<(Endpoint, TrafficCounters)>,
    /// (VIP, hash of its live table) for every VIP whose table this agent wrote (see
    /// [`tables::table_hash`]); a VIP found pinned is listed once its table is rewritten.
    pub table_hashes: Vec<(Endpoint, TableHash)>,
    /// (VIP, backend, counters) for every backend currently programmed.
    pub backends: Vec<(Endpoint, Endpoint, TrafficCounters)>,
    /// (VIP, backend, passive TCP signals) for every backend currently programmed:
    /// SYNs sent to it, handshakes completed and, in `nat` mode, its SYN+ACK/RST/FIN
    /// replies. `established / syn` is its connection success rate (see `L4Counters`).
    pub backend_l4: Vec<(Endpoint, Endpoint, L4Counters)>,
    /// Packets per XDP action, indexed by action number.
    pub actions: [u64; XDP_ACTIONS as usize],
    /// Packets per `Reason`, indexed by `Reason as u32`.
    pub reasons: [u64; Reason::COUNT as usize],
    /// Packets per `Event`, indexed by `Event as u32`.
    pub events: [u64; Event::COUNT as usize],
    /// Where the last apply that changed a table spent its time.
    pub last_apply: Option<tables::ApplyTiming>,
}

pub trait Dataplane: Send + 'static {
    /// Makes `vips` the live state: adds, changes and removes VIPs and backends, writes
    /// each changed VIP's Maglev table into its inactive slot and flips to it with one
    /// map write. Backends that disappear are marked not-up so their flows re-pick.
    fn apply(&mut self, vips: &[VipSpec]) -> Result<(), ApplyError>;

    /// Current counters, summed over CPUs.
    fn counters(&self) -> Result<Counters, MapAccessError>;

    /// The split of every VIP found live in pinned maps at load (before the first
    /// `apply` changes it); empty when nothing was pinned.
    fn live_shares(&self) -> Result<Vec<LiveShares>, MapAccessError> {
        Ok(Vec::new())
    }

    /// Called once when the agent exits: detach and remove pins, or, with
    /// `keep_forwarding`, leave the pinned program attached so traffic keeps flowing
    /// until the next agent takes over.
    fn shutdown(&mut self, keep_forwarding: bool) -> Result<(), LoadError> {
        let _ = keep_forwarding;
        Ok(())
    }

    /// Pins again whatever was removed from the pin directory under the running agent
    /// (see [`pins::PinKeeper`]); called every few seconds.
    fn restore_pins(&mut self) {}

    /// The pins' state for `/health` and `/metrics` (`None`: nothing is pinned).
    fn pin_watch(&self) -> Option<std::sync::Arc<pins::PinWatch>> {
        None
    }
}

/// Loading the data plane: the object, the pin directory and its lock, maps pinned by
/// an earlier agent, attaching to interfaces, and unpinning at shutdown. Returned by
/// `AyaDataplane::load`/`begin` and [`Dataplane::shutdown`]: the agent refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "map {map} pinned in {} holds {pinned} entries but limits.{field} is {wanted}: \
         capacities change only with a fresh data plane (stop the agent without \
         --keep-forwarding, or remove the pins), or set limits.{field} back to {pinned}",
        pin_dir.display()
    )]
    PinnedCapacity {
        map: &'static str,
        field: &'static str,
        pinned: u32,
        wanted: u32,
        pin_dir: PathBuf,
    },
    #[error("{}", object::SKIPPED)]
    NoObject,
    #[error("pin directory {}: {source}", path.display())]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pin directory {} is not on a bpf filesystem: mount one with `mount -t bpf bpf {}`",
        path.display(),
        mount_point.display()
    )]
    NotBpffs { path: PathBuf, mount_point: PathBuf },
    #[error(
        "pin directory {} is in use by another keystone-agent ({} its lock): stop that \
         agent first, or give this one its own --pin-dir",
        path.display(),
        holder.map_or("it holds".to_owned(), |pid| format!("pid {pid} holds"))
    )]
    PinDirInUse {
        path: PathBuf,
        /// The lock holder's pid, when `/proc/locks` tells it.
        holder: Option<u32>,
    },
    #[error(
        "interface {interface} does not exist (in this network namespace): check \
         `interfaces:` in the config or --interface"
    )]
    NoInterface { interface: String },
    #[error("cannot keep a reference to the pin {}: {reason}", path.display())]
    Spare { path: PathBuf, reason: String },
    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map {map}")]
    MissingMap { map: &'static str },
    #[error("eBPF program ({what}): {source}")]
    Program {
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching XDP to {interface}: {source} (does the interface exist? \
         try generic mode if the driver lacks native XDP)"
    )]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching to the tc ingress hook (tcx) of {interface}: {source} (tcx needs \
         Linux 6.6 or later; on older kernels use `attach: xdp-generic`)"
    )]
    AttachTc {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link pinned at {}: {source}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning at {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("removing pin {}: {source}", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapAccessError),
}

/// A desired state the data plane refuses (checked before anything is written), or a
/// map write that failed while applying it. Returned by [`Dataplane::apply`]: that
/// change is refused, and the agent runs on.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("too many VIPs: {count} configured, the data plane holds {max}")]
    TooManyVips { count: usize, max: u32 },
    #[error("too many backends: {count} needed, the data plane holds {max}")]
    TooManyBackends { count: usize, max: u32 },
    #[error("Maglev table size {size} for VIP {vip} must be a prime no larger than {max}")]
    BadRingSize { vip: String, size: u32, max: u32 },
    #[error(
        "the VIPs' tables need {needed} ring entries (2 × ring_size each), \
         limits.ring_entries is {max}"
    )]
    TooManyRingEntries { needed: u64, max: u32 },
    #[error(
        "no room in the ring array for VIP {vip}'s table of {size} entries \
         ({free} of {capacity} entries free, fragmented by earlier table sizes): \
         raise limits.ring_entries or restart the agent to lay the tables out afresh"
    )]
    RingSpace {
        vip: String,
        size: u32,
        free: u64,
        capacity: u32,
    },
    #[error("VIP {vip} is configured twice")]
    DuplicateVip { vip: String },
    #[error("VIP {vip}: backend {backend} is listed twice")]
    DuplicateBackend { vip: String, backend: String },
    #[error("VIP {vip}: {endpoint} needs address family IPv4/IPv6 and protocol TCP/UDP")]
    BadEndpoint { vip: String, endpoint: String },
    #[error("VIP {vip}: unknown forwarding mode {mode}")]
    BadMode { vip: String, mode: u32 },
    #[error("VIP {vip}: backend {backend} must have the VIP's address family and protocol")]
    BackendMismatch { vip: String, backend: String },
    #[error(
        "backend {backend} serves two nat-mode VIPs ({first} and {second}): its replies \
         could not be translated back; give each VIP its own backend address:port"
    )]
    AmbiguousReverseNat {
        backend: String,
        first: String,
        second: String,
    },
    #[error(
        "tenant {tenant} (dsr): backend {backend} at {address} is reached through \
         {device}, which cannot take a redirect from native XDP, and the kernel cannot \
         forward a dsr packet (its destination is the VIP): list that device under \
         `interfaces:` if it has native XDP (a NIC or veth; a bridge, bond or VLAN \
         device has none), or set `attach: xdp-generic` (generic XDP redirects into any \
         device), or use mode nat"
    )]
    DsrEgress {
        tenant: String,
        backend: String,
        address: std::net::IpAddr,
        device: String,
    },
    #[error(transparent)]
    Map(#[from] MapAccessError),
}

/// A read or write of one of the program's maps that failed (aya's `MapError`, with the
/// map's name): on its own from counter reads, else inside the two errors above.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {source}")]
pub struct MapAccessError {
    pub map: &'static str,
    #[source]
    pub source: aya::maps::MapError,
}
