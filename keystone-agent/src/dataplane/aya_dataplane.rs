//! The real data plane: loads the eBPF object (its XDP and tc programs) with aya
//! 0.14, pins maps, programs and links in a bpffs directory, attaches to
//! interfaces, and programs the maps through [`Tables`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapError},
    programs::{SchedClassifier, Xdp, links::FdLink},
};
use keystone_common::{
    Endpoint, Event, FlowKey, FlowState, Reason, ReplyHopCache, limits::stats::XDP_ACTIONS, names,
};

use super::{
    ApplyError, Counters, Dataplane, Limits, LiveShares, LoadError, MapAccessError, VipSpec,
    interfaces, object,
    pins::{PinKeeper, PinKind, PinWatch},
    start::Start,
    tables::{TableHash, Tables},
};

mod attach;
mod bpffs;
mod counters;
mod maps;
mod migrate;

pub use attach::Hook;
use attach::{attach, set_iface_flags, tc_program, write_iface_flags, xdp_program};
pub(super) use bpffs::{check_bpffs, remove_if_exists};
use counters::{sum_l4, sum_traffic, sum_u64};
pub use maps::AyaMaps;
use migrate::{
    check_pinned_capacities, migrate_conns_v1, migrate_reverse_v1, migrate_vips_v1,
    replace_resized_conn_table, replace_resized_counter_maps,
};

/// Every map the program has, by pinned name.
pub const MAP_NAMES: [&str; 14] = [
    names::VIPS,
    names::VIP_ADDRS,
    names::ADDR_FILTER,
    names::BACKENDS,
    names::RINGS,
    names::CONNS,
    names::REVERSE,
    names::VIP_STATS,
    names::BACKEND_STATS,
    names::BACKEND_L4,
    names::ACTION_STATS,
    names::REASON_STATS,
    names::EVENT_STATS,
    names::IFACES,
];

/// Maps of earlier layouts a previous agent may have pinned: migrated or replaced
/// by `load` (see their `names::*_V1` docs), unpinned once the new program is
/// attached.
const LEGACY_MAPS: [&str; 4] = [
    names::REVERSE_V1,
    names::VIPS_V1,
    names::CONNS_V1,
    names::BACKEND_L4_V1,
];

/// The maps whose size is a capacity from `Limits`, with the `limits.` field that
/// sets it. (`NEXT_HOPS`, indexed by backend slot like `BACKENDS`, is never pinned.)
pub fn sized_maps(limits: &Limits) -> [(&'static str, &'static str, u32); 10] {
    [
        (names::VIPS, "max_vips", limits.max_vips),
        (names::VIP_ADDRS, "max_vips", limits.max_vips),
        (names::VIP_STATS, "max_vips", limits.max_vips),
        (names::BACKENDS, "max_backends", limits.max_backends),
        (names::REVERSE, "max_backends", limits.max_backends),
        (names::BACKEND_STATS, "max_backends", limits.max_backends),
        (names::BACKEND_L4, "max_backends", limits.max_backends),
        (names::NEXT_HOPS, "max_backends", limits.max_backends),
        (names::RINGS, "ring_entries", limits.ring_entries),
        (
            names::CONNS,
            "conn_table_entries",
            limits.conn_table_entries,
        ),
    ]
}

/// How the program is attached to an interface (the config's `attach:`, top level
/// or per interface).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum AttachMode {
    /// `auto`: `xdp` on a NIC not enslaved to a bridge or bond, else `tc` (`interfaces::auto`).
    #[serde(rename = "auto")]
    Auto,
    /// `xdp`: native (driver) XDP; falls back to generic mode, with a warning, where
    /// the driver refuses it (a bridge, bond or VLAN device).
    #[default]
    #[serde(rename = "xdp")]
    Driver,
    /// `xdp-generic`: generic (skb) XDP only. Slower, but its redirects go through
    /// the kernel's transmit path, so they reach any device (a bridge included).
    #[serde(rename = "xdp-generic")]
    Generic,
    /// `tc`: the same program at the tc ingress hook (a tcx link): no skb → XDP
    /// buffer copy on virtual devices, redirects reach any device, and partial
    /// checksums are kept right.
    #[serde(rename = "tc")]
    Tc,
}

/// How to load the data plane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Interfaces to attach to (none: load only, e.g. for `BPF_PROG_TEST_RUN`).
    pub interfaces: Vec<String>,
    /// A directory on a bpffs (created if missing) for the pinned maps, program and
    /// links. `ip netns exec` remounts /sys, so callers running there pass a bpffs
    /// they mounted themselves (`mount -t bpf bpf <dir>`).
    pub pin_dir: PathBuf,
    pub xdp_mode: AttachMode,
    /// Interfaces attached otherwise than `xdp_mode` says (per-interface `attach:`).
    pub interface_modes: BTreeMap<String, AttachMode>,
    /// Map sizes (the config's `limits:`). A pinned connection table of another
    /// size is replaced; other pinned maps must have their configured size (see
    /// [`AyaDataplane::load`]).
    pub limits: Limits,
}

/// The conventional bpffs location; not visible under `ip netns exec`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/keystone";

impl LoadOptions {
    /// No interfaces, driver mode, pins in `pin_dir`.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        LoadOptions {
            interfaces: Vec::new(),
            pin_dir: pin_dir.into(),
            xdp_mode: AttachMode::Driver,
            interface_modes: BTreeMap::new(),
            limits: Limits::default(),
        }
    }

    /// How `interface` is attached.
    pub fn mode_of(&self, interface: &str) -> AttachMode {
        self.interface_modes
            .get(interface)
            .copied()
            .unwrap_or(self.xdp_mode)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions::new(DEFAULT_PIN_DIR)
    }
}

/// One attached interface.
#[derive(Debug)]
struct Attachment {
    interface: String,
    pin: PathBuf,
    link: FdLink,
    /// `iface_flags` for the mode it was attached in; `None` when the program was
    /// swapped into an XDP link a previous agent pinned (mode not known here).
    flags: Option<u32>,
    hook: Hook,
}

/// The loaded program and its maps. Dropping it leaves the pins in place, so
/// forwarding continues; [`AyaDataplane::shutdown`] decides explicitly.
pub struct AyaDataplane {
    ebpf: Ebpf,
    tables: Tables<AyaMaps>,
    pin_dir: PathBuf,
    attachments: Vec<Attachment>,
    reused_maps: bool,
    pins: PinKeeper,
    /// (interface, `iface_flags`) as written to `names::IFACES`.
    iface_flags: Vec<(String, u32)>,
    /// dsr backends whose route `interfaces::check_dsr_backends` accepted.
    dsr_checked: BTreeSet<(String, IpAddr)>,
}

impl std::fmt::Debug for AyaDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaDataplane")
            .field("pin_dir", &self.pin_dir)
            .field("attachments", &self.attachments)
            .field("reused_maps", &self.reused_maps)
            .finish_non_exhaustive()
    }
}

impl AyaDataplane {
    /// Loads the program, pinning (or reusing) its maps under `opts.pin_dir`, pins the
    /// program, and attaches it to every interface. An interface that still has a
    /// link pinned by a previous agent gets the new program swapped into that link
    /// atomically (no packet sees no program). The state in reused maps is picked up,
    /// so the first `apply` keeps established flows where they are.
    ///
    /// Another pinned map of another size than `opts.limits` asks for is refused
    /// (`LoadError::PinnedCapacity`). A pinned connection table whose size is
    /// not `opts.limits.conn_table_entries` (the setting changed across the restart)
    /// is unpinned and created anew at the new
    /// size: tracked flows are then re-picked through Maglev, which keeps them on
    /// their backend unless the weights changed (`Event::UntrackedMidFlow` counts
    /// them). The old program keeps its old table until the new one replaces it.
    pub fn load(opts: LoadOptions) -> Result<Self, LoadError> {
        let (dataplane, start) = Self::begin(opts)?;
        start.commit()?;
        Ok(dataplane)
    }

    /// [`AyaDataplane::load`], provisionally: until the returned [`Start`] is
    /// committed, dropping it undoes what this load did to the pin directory and the
    /// interfaces (see [`Start`]), so a start that fails later (the agent's own
    /// setup) leaves nothing behind, and an earlier agent's pinned data plane as it
    /// was. A load that fails undoes itself. The interfaces are checked and the pin
    /// directory locked before anything is touched.
    pub fn begin(opts: LoadOptions) -> Result<(Self, Start), LoadError> {
        let object = object::ebpf_object().ok_or(LoadError::NoObject)?;
        for interface in &opts.interfaces {
            if nix::net::if_::if_nametoindex(interface.as_str()).is_err() {
                return Err(LoadError::NoInterface {
                    interface: interface.clone(),
                });
            }
        }
        let mut start = Start::begin(&opts.pin_dir)?;
        let dataplane = Self::load_into(object, opts, &mut start)?;
        Ok((dataplane, start))
    }

    fn load_into(object: &[u8], opts: LoadOptions, start: &mut Start) -> Result<Self, LoadError> {
        let pin_dir = opts.pin_dir.clone();
        let limits = opts.limits;
        check_pinned_capacities(&pin_dir, &limits)?;
        let reused_maps = start.existed(names::VIPS) || start.existed(names::VIPS_V1);
        replace_resized_conn_table(&pin_dir, limits.conn_table_entries, start)?;
        replace_resized_counter_maps(&pin_dir, start)?;
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        for (name, _, entries) in sized_maps(&limits) {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(object).map_err(|source| LoadError::Load {
            source: Box::new(source),
        })?;
        for name in MAP_NAMES {
            let path = pin_dir.join(name);
            if !start.existed(name) && path.exists() {
                start.created(path);
            }
        }

        // Before the new program can run: it reads REVERSE and VIPS with the new
        // layouts. An old program still running elsewhere keeps its own reference to
        // a legacy map, which is unpinned once this start is committed.
        migrate_reverse_v1(&mut ebpf, &pin_dir)?;
        migrate_vips_v1(&mut ebpf, &pin_dir)?;
        migrate_conns_v1(&mut ebpf, &pin_dir)?;
        for name in LEGACY_MAPS {
            if start.existed(name) {
                start.unpin_on_commit(pin_dir.join(name));
            }
        }

        // Both programs are loaded and pinned whatever the interfaces use, so a
        // restart with another `attach:` can swap hooks and tests can run either.
        load_program(xdp_program(&mut ebpf)?, &pin_dir, Hook::Xdp, start)?;
        load_program(tc_program(&mut ebpf)?, &pin_dir, Hook::Tc, start)?;

        let mut attachments = Vec::new();
        for interface in &opts.interfaces {
            attachments.push(attach(
                &mut ebpf,
                interface,
                &pin_dir,
                opts.mode_of(interface),
                start,
            )?);
        }
        let iface_flags = write_iface_flags(&mut ebpf, &attachments)?;

        let maps = AyaMaps::take(&mut ebpf)?;
        let tables = Tables::recover(maps, limits)?;
        let pins = PinKeeper::open(
            start.lock(),
            MAP_NAMES
                .into_iter()
                .map(|name| (pin_dir.join(name), PinKind::Map))
                .chain(Hook::ALL.map(|hook| (pin_dir.join(hook.program()), PinKind::Program)))
                .chain(attachments.iter().map(|a| (a.pin.clone(), PinKind::Link))),
        )?;
        Ok(AyaDataplane {
            ebpf,
            tables,
            pin_dir,
            attachments,
            reused_maps,
            pins,
            iface_flags,
            dsr_checked: BTreeSet::new(),
        })
    }

    /// Sets `iface_flags` for `ifindex` in `names::IFACES` (e.g. for tests that run
    /// packets through a program attached nowhere).
    pub fn set_iface_flags(&mut self, ifindex: u32, flags: u32) -> Result<(), LoadError> {
        set_iface_flags(&mut self.ebpf, ifindex, flags)
    }

    /// Whether the maps were pinned by a previous run and reused.
    pub fn reused_maps(&self) -> bool {
        self.reused_maps
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The loaded XDP program (e.g. for `aya::programs::TestRun`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(names::PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    /// The loaded tc program: the same code at the tc hook.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(names::TC_PROGRAM)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .expect("load() checked the program exists and is sched_cls")
    }

    /// The backend a new flow to `vip` goes to, predicted the way the kernel picks it
    /// (`keystone_common::flow_hash` into the live Maglev table, from the shadow
    /// copy). Established flows keep their backend from the connection table.
    pub fn predict(&self, vip: &Endpoint, flow: &FlowKey) -> Option<Endpoint> {
        self.tables.predict(vip, flow)
    }

    /// The backend slot given to `backend` under `vip`.
    /// The VIP's table hash computed from the kernel's maps as they are now (see
    /// [`Tables::read_table_hash`]).
    pub fn read_table_hash(&self, vip: &Endpoint) -> Result<Option<TableHash>, MapAccessError> {
        self.tables.read_table_hash(vip)
    }

    pub fn backend_slot(&self, vip: &Endpoint, backend: &Endpoint) -> Option<u32> {
        self.tables.backend_slot(vip, backend)
    }

    /// `ACTION_STATS`, summed over CPUs: packets by the XDP action they got (at tc:
    /// the action their tc verdict stands for).
    pub fn action_counters(&self) -> Result<[u64; XDP_ACTIONS as usize], MapAccessError> {
        let maps = self.tables.maps();
        let mut actions = [0; XDP_ACTIONS as usize];
        for (action, count) in (0..XDP_ACTIONS).zip(&mut actions) {
            *count = sum_u64(&maps.action_stats, names::ACTION_STATS, action)?;
        }
        Ok(actions)
    }

    /// The connection-table entry of a flow, if any.
    pub fn conn(&self, flow: &FlowKey) -> Result<Option<FlowState>, LoadError> {
        let map = self
            .ebpf
            .map(names::CONNS)
            .ok_or(LoadError::MissingMap { map: names::CONNS })?;
        let conns =
            HashMap::<_, FlowKey, FlowState>::try_from(map).map_err(|source| MapAccessError {
                map: names::CONNS,
                source,
            })?;
        match conns.get(flow, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapAccessError {
                map: names::CONNS,
                source,
            }
            .into()),
        }
    }

    /// Every CPU's entries of the reply next-hop cache (`names::REPLY_HOPS`).
    pub fn reply_hops(&self) -> Result<Vec<ReplyHopCache>, LoadError> {
        let map = self
            .ebpf
            .map(names::REPLY_HOPS)
            .ok_or(LoadError::MissingMap {
                map: names::REPLY_HOPS,
            })?;
        let err = maps::map_err(names::REPLY_HOPS);
        let hops = aya::maps::PerCpuArray::<_, ReplyHopCache>::try_from(map).map_err(&err)?;
        let mut all = Vec::new();
        for values in hops.iter() {
            all.extend(values.map_err(&err)?.iter().copied());
        }
        Ok(all)
    }

    /// Detaches from every interface and removes all pins (maps included).
    pub fn detach(mut self) -> Result<(), LoadError> {
        self.release(false)
    }

    /// See [`Dataplane::shutdown`]. With `keep_forwarding` the pinned links, program
    /// and maps stay, so packets keep flowing and the next agent picks them up;
    /// without it the links are detached and every pin is removed. Idempotent.
    fn release(&mut self, keep_forwarding: bool) -> Result<(), LoadError> {
        let attachments = std::mem::take(&mut self.attachments);
        if !keep_forwarding {
            self.pins.forget();
        }
        if keep_forwarding {
            tracing::info!(pin_dir = %self.pin_dir.display(), "leaving the program attached and pinned");
            return Ok(());
        }
        for a in attachments {
            remove_if_exists(&a.pin)?;
            // Closing the last fd of an unpinned link detaches it.
            drop(a.link);
            tracing::info!(interface = %a.interface, hook = ?a.hook, "detached the program");
        }
        for hook in Hook::ALL {
            remove_if_exists(&self.pin_dir.join(hook.program()))?;
        }
        for name in MAP_NAMES.into_iter().chain(LEGACY_MAPS) {
            remove_if_exists(&self.pin_dir.join(name))?;
        }
        Ok(())
    }
}

/// Loads `program` (retrying the verifier's EAGAIN) and pins it as
/// `hook.program()`, replacing (and keeping, for an undo) a previous agent's.
fn load_program<P: LoadPin>(
    program: &mut P,
    pin_dir: &Path,
    hook: Hook,
    start: &mut Start,
) -> Result<(), LoadError> {
    // The verifier gives up with EAGAIN when a signal arrives while it runs (it
    // checks for pending signals between instructions); retried like libbpf does.
    let mut attempts = 1;
    loop {
        match program.load() {
            Ok(()) => break,
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if attempts < 5 && io_error.kind() == std::io::ErrorKind::WouldBlock =>
            {
                attempts += 1;
            }
            Err(source) => {
                return Err(LoadError::Program {
                    what: "load",
                    source,
                });
            }
        }
    }
    let pin = pin_dir.join(hook.program());
    start.replace_program(&pin, hook)?;
    program
        .pin(&pin)
        .map_err(|source| LoadError::Pin { path: pin, source })
}

/// The two program types' `load` and `pin`.
trait LoadPin {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError>;
    fn pin(&mut self, path: &Path) -> Result<(), aya::pin::PinError>;
}

impl LoadPin for Xdp {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
        Xdp::load(self)
    }
    fn pin(&mut self, path: &Path) -> Result<(), aya::pin::PinError> {
        Xdp::pin(self, path)
    }
}

impl LoadPin for SchedClassifier {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
        SchedClassifier::load(self)
    }
    fn pin(&mut self, path: &Path) -> Result<(), aya::pin::PinError> {
        SchedClassifier::pin(self, path)
    }
}

impl Dataplane for AyaDataplane {
    fn apply(&mut self, vips: &[VipSpec]) -> Result<(), ApplyError> {
        interfaces::check_dsr_backends(vips, &self.iface_flags, &mut self.dsr_checked)?;
        self.tables.apply(vips)
    }

    fn shutdown(&mut self, keep_forwarding: bool) -> Result<(), LoadError> {
        self.release(keep_forwarding)
    }

    fn restore_pins(&mut self) {
        self.pins.restore();
    }

    fn pin_watch(&self) -> Option<Arc<PinWatch>> {
        Some(self.pins.watch())
    }

    fn live_shares(&self) -> Result<Vec<LiveShares>, MapAccessError> {
        self.tables.live_shares()
    }

    fn counters(&self) -> Result<Counters, MapAccessError> {
        let maps = self.tables.maps();
        let mut counters = Counters::default();
        for (vip, _, index) in self.tables.vips() {
            counters
                .vips
                .push((*vip, sum_traffic(&maps.vip_stats, names::VIP_STATS, index)?));
        }
        counters.table_hashes = self
            .tables
            .table_hashes()
            .filter_map(|(vip, hash)| Some((*vip, hash?)))
            .collect();
        for (vip, backend, slot) in self.tables.backend_slots() {
            counters.backends.push((
                *vip,
                *backend,
                sum_traffic(&maps.backend_stats, names::BACKEND_STATS, slot)?,
            ));
            counters
                .backend_l4
                .push((*vip, *backend, sum_l4(&maps.backend_l4, slot)?));
        }
        counters.last_apply = self.tables.last_timing();
        counters.actions = self.action_counters()?;
        for reason in Reason::ALL {
            counters.reasons[reason as usize] =
                sum_u64(&maps.reason_stats, names::REASON_STATS, reason as u32)?;
        }
        for event in Event::ALL {
            counters.events[event as usize] =
                sum_u64(&maps.event_stats, names::EVENT_STATS, event as u32)?;
        }
        Ok(counters)
    }
}
