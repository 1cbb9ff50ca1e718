//! The real data plane: loads the XDP object with aya 0.14, pins maps, program and
//! links in a bpffs directory, attaches to interfaces, and programs the maps
//! through [`Tables`].

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    util::nr_cpus,
};
use keystone_common::{
    Backend, Endpoint, Event, FlowKey, FlowState, L4Counters, Reason, ReverseNat, TrafficCounters,
    VipAddr, VipInfo, backend_flags,
    legacy::{FlowStateV1, ReverseNatV1, VipInfoV1, v1_ring_base},
    limits::{iface::MAX_IFINDEX, ring::NO_BACKEND, stats::XDP_ACTIONS},
    names,
};

use super::{
    Counters, Dataplane, DataplaneError, Limits, LiveShares, VipSpec, interfaces, object,
    pins::{PinKeeper, PinKind, PinWatch},
    start::Start,
    tables::{MapWriter, Tables},
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

/// How the program is attached to each interface (the config's `attach:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum AttachMode {
    /// `xdp`: native (driver) XDP; falls back to generic mode, with a warning, where
    /// the driver refuses it (a bridge, bond or VLAN device).
    #[default]
    #[serde(rename = "xdp")]
    Driver,
    /// `xdp-generic`: generic (skb) XDP only. Slower, but its redirects go through
    /// the kernel's transmit path, so they reach any device (a bridge included).
    #[serde(rename = "xdp-generic")]
    Generic,
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
            limits: Limits::default(),
        }
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
    /// swapped into a link a previous agent pinned (mode not known here).
    flags: Option<u32>,
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
    /// (`DataplaneError::PinnedCapacity`). A pinned connection table whose size is
    /// not `opts.limits.conn_table_entries` (the setting changed across the restart)
    /// is unpinned and created anew at the new
    /// size: tracked flows are then re-picked through Maglev, which keeps them on
    /// their backend unless the weights changed (`Event::UntrackedMidFlow` counts
    /// them). The old program keeps its old table until the new one replaces it.
    pub fn load(opts: LoadOptions) -> Result<Self, DataplaneError> {
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
    pub fn begin(opts: LoadOptions) -> Result<(Self, Start), DataplaneError> {
        let object = object::ebpf_object().ok_or(DataplaneError::NoObject)?;
        for interface in &opts.interfaces {
            if nix::net::if_::if_nametoindex(interface.as_str()).is_err() {
                return Err(DataplaneError::NoInterface {
                    interface: interface.clone(),
                });
            }
        }
        let mut start = Start::begin(&opts.pin_dir)?;
        let dataplane = Self::load_into(object, opts, &mut start)?;
        Ok((dataplane, start))
    }

    fn load_into(
        object: &[u8],
        opts: LoadOptions,
        start: &mut Start,
    ) -> Result<Self, DataplaneError> {
        let pin_dir = opts.pin_dir;
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
        let mut ebpf = loader.load(object).map_err(|source| DataplaneError::Load {
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

        let program = program_mut(&mut ebpf)?;
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
                    return Err(DataplaneError::Program {
                        what: "load",
                        source,
                    });
                }
            }
        }
        let program_pin = pin_dir.join(names::PROGRAM);
        start.replace_program(&program_pin)?;
        program
            .pin(&program_pin)
            .map_err(|source| DataplaneError::Pin {
                path: program_pin.clone(),
                source,
            })?;

        let mut attachments = Vec::new();
        for interface in &opts.interfaces {
            attachments.push(attach(program, interface, &pin_dir, opts.xdp_mode, start)?);
        }
        let iface_flags = write_iface_flags(&mut ebpf, &attachments)?;

        let maps = AyaMaps::take(&mut ebpf)?;
        let tables = Tables::recover(maps, limits)?;
        let pins = PinKeeper::open(
            start.lock()?,
            MAP_NAMES
                .into_iter()
                .map(|name| (pin_dir.join(name), PinKind::Map))
                .chain([(program_pin, PinKind::Program)])
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
    pub fn set_iface_flags(&mut self, ifindex: u32, flags: u32) -> Result<(), DataplaneError> {
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

    /// The backend a new flow to `vip` goes to, predicted the way the kernel picks it
    /// (`keystone_common::flow_hash` into the live Maglev table, from the shadow
    /// copy). Established flows keep their backend from the connection table.
    pub fn predict(&self, vip: &Endpoint, flow: &FlowKey) -> Option<Endpoint> {
        self.tables.predict(vip, flow)
    }

    /// The backend slot given to `backend` under `vip`.
    pub fn backend_slot(&self, vip: &Endpoint, backend: &Endpoint) -> Option<u32> {
        self.tables.backend_slot(vip, backend)
    }

    /// The connection-table entry of a flow, if any.
    pub fn conn(&self, flow: &FlowKey) -> Result<Option<FlowState>, DataplaneError> {
        let map = self
            .ebpf
            .map(names::CONNS)
            .ok_or(DataplaneError::MissingMap { map: names::CONNS })?;
        let conns = HashMap::<_, FlowKey, FlowState>::try_from(map).map_err(|source| {
            DataplaneError::Map {
                map: names::CONNS,
                source,
            }
        })?;
        match conns.get(flow, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map {
                map: names::CONNS,
                source,
            }),
        }
    }

    /// Detaches from every interface and removes all pins (maps included).
    pub fn detach(mut self) -> Result<(), DataplaneError> {
        self.release(false)
    }

    /// See [`Dataplane::shutdown`]. With `keep_forwarding` the pinned links, program
    /// and maps stay, so packets keep flowing and the next agent picks them up;
    /// without it the links are detached and every pin is removed. Idempotent.
    fn release(&mut self, keep_forwarding: bool) -> Result<(), DataplaneError> {
        let attachments = std::mem::take(&mut self.attachments);
        if !keep_forwarding {
            self.pins.forget();
        }
        if keep_forwarding {
            tracing::info!(pin_dir = %self.pin_dir.display(), "leaving the XDP program attached and pinned");
            return Ok(());
        }
        for a in attachments {
            remove_if_exists(&a.pin)?;
            // Closing the last fd of an unpinned link detaches it.
            drop(a.link);
            tracing::info!(interface = %a.interface, "detached XDP program");
        }
        remove_if_exists(&self.pin_dir.join(names::PROGRAM))?;
        for name in MAP_NAMES.into_iter().chain(LEGACY_MAPS) {
            remove_if_exists(&self.pin_dir.join(name))?;
        }
        Ok(())
    }
}

impl Dataplane for AyaDataplane {
    fn apply(&mut self, vips: &[VipSpec]) -> Result<(), DataplaneError> {
        interfaces::check_dsr_backends(vips, &self.iface_flags, &mut self.dsr_checked)?;
        self.tables.apply(vips)
    }

    fn shutdown(&mut self, keep_forwarding: bool) -> Result<(), DataplaneError> {
        self.release(keep_forwarding)
    }

    fn restore_pins(&mut self) {
        self.pins.restore();
    }

    fn pin_watch(&self) -> Option<Arc<PinWatch>> {
        Some(self.pins.watch())
    }

    fn live_shares(&self) -> Result<Vec<LiveShares>, DataplaneError> {
        self.tables.live_shares()
    }

    fn counters(&self) -> Result<Counters, DataplaneError> {
        let maps = self.tables.maps();
        let mut counters = Counters::default();
        for (vip, _, index) in self.tables.vips() {
            counters
                .vips
                .push((*vip, sum_traffic(&maps.vip_stats, names::VIP_STATS, index)?));
        }
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
        for action in 0..XDP_ACTIONS {
            counters.actions[action as usize] =
                sum_u64(&maps.action_stats, names::ACTION_STATS, action)?;
        }
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

fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficCounters>,
    name: &'static str,
    index: u32,
) -> Result<TrafficCounters, DataplaneError> {
    let values = map
        .get(&index, 0)
        .map_err(|source| DataplaneError::Map { map: name, source })?;
    let mut total = TrafficCounters::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

/// Unpins the connection table if it is pinned with another size than `entries`,
/// so the loader creates it anew (reusing it would silently keep the old size); the
/// old one is pinned back if the start fails.
fn replace_resized_conn_table(
    pin_dir: &Path,
    entries: u32,
    start: &mut Start,
) -> Result<(), DataplaneError> {
    let path = pin_dir.join(names::CONNS);
    if !path.exists() {
        return Ok(());
    }
    let old = MapData::from_pin(&path).map_err(map_err(names::CONNS))?;
    let pinned = old.info().map_err(map_err(names::CONNS))?.max_entries();
    if pinned != entries {
        tracing::warn!(
            pinned,
            configured = entries,
            "limits.conn_table_entries changed: replacing the connection table; tracked flows are re-picked (same backend unless weights changed)"
        );
        start.replace_map(&path, old)?;
    }
    Ok(())
}

/// Replaces the per-reason and per-event counter maps if an older agent pinned them
/// with fewer entries than this program counts (it added a `Reason` or `Event`): the
/// loader creates them anew at the right size, and those counters restart from 0.
/// A start that fails pins the old ones back (see [`Start`]).
fn replace_resized_counter_maps(pin_dir: &Path, start: &mut Start) -> Result<(), DataplaneError> {
    for (map, entries) in [
        (names::REASON_STATS, Reason::COUNT),
        (names::EVENT_STATS, Event::COUNT),
    ] {
        let Some(pinned) = pinned_entries(pin_dir, map)? else {
            continue;
        };
        if pinned != entries {
            tracing::info!(
                map,
                pinned,
                entries,
                "counter map resized: its counters restart from 0"
            );
            let path = pin_dir.join(map);
            let old = MapData::from_pin(&path).map_err(map_err(map))?;
            start.replace_map(&path, old)?;
        }
    }
    Ok(())
}

/// The size of `map` pinned in `pin_dir`, if it is pinned there.
fn pinned_entries(pin_dir: &Path, map: &'static str) -> Result<Option<u32>, DataplaneError> {
    let path = pin_dir.join(map);
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&path).map_err(map_err(map))?;
    Ok(Some(info.max_entries()))
}

fn sum_l4(
    map: &PerCpuArray<MapData, L4Counters>,
    index: u32,
) -> Result<L4Counters, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(names::BACKEND_L4))?;
    let mut total = L4Counters::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

fn sum_u64(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    index: u32,
) -> Result<u64, DataplaneError> {
    let values = map
        .get(&index, 0)
        .map_err(|source| DataplaneError::Map { map: name, source })?;
    Ok(values.iter().sum())
}

/// Upgrades from an agent whose REVERSE map was `names::REVERSE_V1` (no backend slot):
/// copies its entries into the new map, with each backend's slot found in the reused
/// BACKENDS map, before the new program is attached, so replies of established `nat`
/// flows stay translated across the upgrade (the first `apply` then rewrites the
/// entries from the config). Returns whether a V1 map was found.
fn migrate_reverse_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, DataplaneError> {
    let path = pin_dir.join(names::REVERSE_V1);
    if !path.exists() {
        return Ok(false);
    }
    let v1_err = map_err(names::REVERSE_V1);
    let old: HashMap<MapData, Endpoint, ReverseNatV1> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&path).map_err(&v1_err)?))
            .map_err(&v1_err)?;
    let entries: Vec<(Endpoint, ReverseNatV1)> =
        old.iter().collect::<Result<_, _>>().map_err(&v1_err)?;
    let backends: Vec<Backend> = {
        let map = ebpf
            .map(names::BACKENDS)
            .ok_or(DataplaneError::MissingMap {
                map: names::BACKENDS,
            })?;
        let array = Array::<_, Backend>::try_from(map).map_err(map_err(names::BACKENDS))?;
        (0..array.len())
            .map(|i| array.get(&i, 0).map_err(map_err(names::BACKENDS)))
            .collect::<Result<_, _>>()?
    };
    let map = ebpf
        .map_mut(names::REVERSE)
        .ok_or(DataplaneError::MissingMap {
            map: names::REVERSE,
        })?;
    let mut new =
        HashMap::<_, Endpoint, ReverseNat>::try_from(map).map_err(map_err(names::REVERSE))?;
    for (backend, rev) in &entries {
        let slot = backends
            .iter()
            .position(|b| {
                b.endpoint == *backend
                    && b.vip_index == rev.vip_index
                    && b.flags & backend_flags::UP != 0
            })
            .map_or(NO_BACKEND, |s| s as u32);
        let value = ReverseNat {
            vip: rev.vip,
            vip_index: rev.vip_index,
            backend_slot: slot,
        };
        new.insert(backend, value, 0)
            .map_err(map_err(names::REVERSE))?;
    }
    tracing::info!(
        entries = entries.len(),
        "migrated the reverse-NAT map from {} to {}",
        names::REVERSE_V1,
        names::REVERSE
    );
    Ok(true)
}

/// Upgrades from an agent whose connection table was `names::CONNS_V1` (no
/// connection state): copies its entries into the new table with their backend and
/// an unknown state (`FlowState::pinned`: a SYN re-picks them as before until their
/// next client packet shows the connection), before the new program is attached, so
/// established flows keep their backend across the upgrade. Flows the old program
/// pins after the copy are re-picked on their next packet (`Event::UntrackedMidFlow`),
/// onto the same backend since the weights do not change in between. At most the
/// V1 table's capacity is copied (its keys may change under the walk). Returns
/// whether a V1 map was found.
fn migrate_conns_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, DataplaneError> {
    let path = pin_dir.join(names::CONNS_V1);
    if !path.exists() {
        return Ok(false);
    }
    let v1_err = map_err(names::CONNS_V1);
    let data = MapData::from_pin(&path).map_err(&v1_err)?;
    let capacity = data.info().map_err(&v1_err)?.max_entries();
    let old: HashMap<MapData, FlowKey, FlowStateV1> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(&v1_err)?;
    let map = ebpf
        .map_mut(names::CONNS)
        .ok_or(DataplaneError::MissingMap { map: names::CONNS })?;
    let mut new = HashMap::<_, FlowKey, FlowState>::try_from(map).map_err(map_err(names::CONNS))?;
    let mut copied = 0;
    for entry in old.iter().take(capacity as usize) {
        let (flow, v1) = match entry {
            Ok(entry) => entry,
            // Evicted between finding its key and reading it.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(v1_err(e)),
        };
        new.insert(flow, FlowState::pinned(v1.backend, v1.generation), 0)
            .map_err(map_err(names::CONNS))?;
        copied += 1;
    }
    tracing::info!(
        entries = copied,
        "migrated the connection table from {} to {}",
        names::CONNS_V1,
        names::CONNS
    );
    Ok(true)
}

/// Refuses to load when a map pinned by a previous agent has another size than
/// `limits` asks for: the program would run with the pinned size, not the config's.
/// The connection table is the exception: `drop_resized_conn_table` replaces it.
fn check_pinned_capacities(pin_dir: &Path, limits: &Limits) -> Result<(), DataplaneError> {
    for (map, field, wanted) in sized_maps(limits) {
        if map == names::CONNS {
            continue;
        }
        let Some(pinned) = pinned_entries(pin_dir, map)? else {
            continue;
        };
        if pinned != wanted {
            return Err(DataplaneError::PinnedCapacity {
                map,
                field,
                pinned,
                wanted,
                pin_dir: pin_dir.to_owned(),
            });
        }
    }
    // A V1 VIP map is migrated into one of `max_vips` entries: it must fit.
    let v1 = pin_dir.join(names::VIPS_V1);
    if v1.exists() {
        let pinned = MapInfo::from_pin(&v1)
            .map_err(map_err(names::VIPS_V1))?
            .max_entries();
        if pinned > limits.max_vips {
            return Err(DataplaneError::PinnedCapacity {
                map: names::VIPS_V1,
                field: "max_vips",
                pinned,
                wanted: limits.max_vips,
                pin_dir: pin_dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// Upgrades from an agent whose VIP map was `names::VIPS_V1` (tables at fixed
/// stripes): copies its entries into the new map with each live table's place
/// (`legacy::v1_ring_base`) made explicit, before the new program is attached. The
/// ring array keeps its name and layout, so the live tables stay where they are and
/// the agent reserves them (`Tables::recover`). Returns whether a V1 map was found.
fn migrate_vips_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, DataplaneError> {
    let path = pin_dir.join(names::VIPS_V1);
    if !path.exists() {
        return Ok(false);
    }
    let v1_err = map_err(names::VIPS_V1);
    let old: HashMap<MapData, Endpoint, VipInfoV1> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&path).map_err(&v1_err)?))
            .map_err(&v1_err)?;
    let entries: Vec<(Endpoint, VipInfoV1)> =
        old.iter().collect::<Result<_, _>>().map_err(&v1_err)?;
    let map = ebpf
        .map_mut(names::VIPS)
        .ok_or(DataplaneError::MissingMap { map: names::VIPS })?;
    let mut new = HashMap::<_, Endpoint, VipInfo>::try_from(map).map_err(map_err(names::VIPS))?;
    for (vip, info) in &entries {
        let value = VipInfo {
            index: info.index,
            mode: info.mode,
            flags: info.flags,
            ring_slot: info.ring_slot,
            ring_size: info.ring_size,
            ring_base: v1_ring_base(info.index, info.ring_slot & 1),
        };
        new.insert(vip, value, 0).map_err(map_err(names::VIPS))?;
    }
    tracing::info!(
        entries = entries.len(),
        "migrated the VIP map from {} to {}",
        names::VIPS_V1,
        names::VIPS
    );
    Ok(true)
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(DataplaneError::MissingProgram {
            name: names::PROGRAM,
        })?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program {
            what: "find",
            source,
        })
}

/// Attaches `program` to `interface` and pins the link as `link_<interface>`, or
/// swaps the program into the link a previous agent pinned there.
fn attach(
    program: &mut Xdp,
    interface: &str,
    pin_dir: &Path,
    mode: AttachMode,
    start: &mut Start,
) -> Result<Attachment, DataplaneError> {
    let pin = pin_dir.join(format!("link_{interface}"));
    let attach_err = |source| DataplaneError::Attach {
        interface: interface.to_owned(),
        source,
    };
    let link_err = |source| DataplaneError::Link {
        path: pin.clone(),
        source,
    };
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(link_err)?;
        let old: XdpLink = FdLink::from(pinned).try_into().map_err(link_err)?;
        let id = program.attach_to_link(old).map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        let link: FdLink = link.try_into().map_err(link_err)?;
        start.swapped_link(pin.clone());
        tracing::info!(
            interface,
            "replaced the program in the XDP link pinned by a previous run"
        );
        return Ok(Attachment {
            interface: interface.to_owned(),
            pin,
            link,
            flags: None,
        });
    }
    let (id, native) = match mode {
        AttachMode::Driver => match program.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, true),
            Err(error) => {
                tracing::warn!(interface, %error, "native XDP attach failed; falling back to generic (skb) mode");
                let id = program
                    .attach(interface, XdpMode::Skb)
                    .map_err(attach_err)?;
                (id, false)
            }
        },
        AttachMode::Generic => (
            program
                .attach(interface, XdpMode::Skb)
                .map_err(attach_err)?,
            false,
        ),
    };
    let link = program.take_link(id).map_err(attach_err)?;
    let link: FdLink = link.try_into().map_err(link_err)?;
    let pinned = link.pin(&pin).map_err(|source| DataplaneError::Pin {
        path: pin.clone(),
        source,
    })?;
    start.created(pin.clone());
    Ok(Attachment {
        interface: interface.to_owned(),
        pin,
        link: pinned.into(),
        flags: Some(interfaces::flags(native)),
    })
}

fn set_iface_flags(ebpf: &mut Ebpf, ifindex: u32, flags: u32) -> Result<(), DataplaneError> {
    let map = ebpf
        .map_mut(names::IFACES)
        .ok_or(DataplaneError::MissingMap { map: names::IFACES })?;
    Array::<_, u32>::try_from(map)
        .and_then(|mut a| a.set(ifindex, flags, 0))
        .map_err(map_err(names::IFACES))
}

/// Writes each attachment's `iface_flags` to `names::IFACES` and returns them. A
/// link swapped over from a previous agent keeps the flags that agent wrote (the
/// map is pinned), or gets `interfaces::guessed_flags` if it wrote none.
fn write_iface_flags(
    ebpf: &mut Ebpf,
    attachments: &[Attachment],
) -> Result<Vec<(String, u32)>, DataplaneError> {
    let mut written = Vec::new();
    for a in attachments {
        let name = a.interface.as_str();
        let Some(ifindex) = interfaces::ifindex(name).filter(|i| *i < MAX_IFINDEX) else {
            tracing::warn!(
                interface = name,
                "ifindex unknown or not below {MAX_IFINDEX}: packets are never redirected into this interface, the kernel forwards them"
            );
            continue;
        };
        let pinned = || -> Option<u32> {
            let map = ebpf.map(names::IFACES)?;
            let value = Array::<_, u32>::try_from(map).ok()?.get(&ifindex, 0).ok()?;
            (value != 0).then_some(value)
        };
        let flags = a
            .flags
            .or_else(pinned)
            .unwrap_or_else(|| interfaces::guessed_flags(name));
        set_iface_flags(ebpf, ifindex, flags)?;
        written.push((a.interface.clone(), flags));
    }
    Ok(written)
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), DataplaneError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Fails unless `dir` is on a bpf filesystem, going by /proc/self/mountinfo (the
/// longest mount point containing `dir`).
pub(super) fn check_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let dir = dir
        .canonicalize()
        .map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|source| DataplaneError::PinDir {
            path: dir.clone(),
            source,
        })?;
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        let fstype = right.split(' ').next().unwrap_or_default();
        if dir.starts_with(&mount_point) {
            let depth = mount_point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fstype == "bpf"));
            }
        }
    }
    match best {
        Some((_, true)) => Ok(()),
        _ => Err(DataplaneError::NotBpffs {
            path: dir.clone(),
            mount_point: dir,
        }),
    }
}

/// The program's maps, typed.
pub struct AyaMaps {
    vips: HashMap<MapData, Endpoint, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddr, u32>,
    filter: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    reverse: HashMap<MapData, Endpoint, ReverseNat>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_l4: PerCpuArray<MapData, L4Counters>,
    action_stats: PerCpuArray<MapData, u64>,
    reason_stats: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name)
        .ok_or(DataplaneError::MissingMap { map: name })
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(take(ebpf, name)?).map_err(|source| DataplaneError::Map { map: name, source })
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl AyaMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(AyaMaps {
            vips: typed(ebpf, names::VIPS)?,
            vip_addrs: typed(ebpf, names::VIP_ADDRS)?,
            filter: typed(ebpf, names::ADDR_FILTER)?,
            backends: typed(ebpf, names::BACKENDS)?,
            rings: typed(ebpf, names::RINGS)?,
            reverse: typed(ebpf, names::REVERSE)?,
            vip_stats: typed(ebpf, names::VIP_STATS)?,
            backend_stats: typed(ebpf, names::BACKEND_STATS)?,
            backend_l4: typed(ebpf, names::BACKEND_L4)?,
            action_stats: typed(ebpf, names::ACTION_STATS)?,
            reason_stats: typed(ebpf, names::REASON_STATS)?,
            event_stats: typed(ebpf, names::EVENT_STATS)?,
        })
    }
}

fn zeroed_per_cpu<T: aya::Pod + Default>(
    map: &'static str,
) -> Result<PerCpuValues<T>, DataplaneError> {
    let cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Map {
        map,
        source: MapError::IoError(e),
    })?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| DataplaneError::Map {
        map,
        source: MapError::IoError(e),
    })
}

impl MapWriter for AyaMaps {
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, DataplaneError> {
        self.vips
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIPS))
    }

    fn read_backends(&self) -> Result<Vec<Backend>, DataplaneError> {
        (0..self.backends.len())
            .map(|i| self.backends.get(&i, 0).map_err(map_err(names::BACKENDS)))
            .collect()
    }

    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, DataplaneError> {
        self.reverse
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::REVERSE))
    }

    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, DataplaneError> {
        self.vip_addrs
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIP_ADDRS))
    }

    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        (base..base + len)
            .map(|i| self.rings.get(&i, 0).map_err(map_err(names::RINGS)))
            .collect()
    }

    fn read_filter(&self) -> Result<Vec<u32>, DataplaneError> {
        self.filter
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ADDR_FILTER))
    }

    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), DataplaneError> {
        self.filter
            .set(index, word, 0)
            .map_err(map_err(names::ADDR_FILTER))
    }

    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), DataplaneError> {
        self.vips.insert(vip, info, 0).map_err(map_err(names::VIPS))
    }

    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), DataplaneError> {
        ignore_missing(self.vips.remove(vip)).map_err(map_err(names::VIPS))
    }

    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), DataplaneError> {
        self.vip_addrs
            .insert(addr, count, 0)
            .map_err(map_err(names::VIP_ADDRS))
    }

    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), DataplaneError> {
        ignore_missing(self.vip_addrs.remove(addr)).map_err(map_err(names::VIP_ADDRS))
    }

    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(slot, backend, 0)
            .map_err(map_err(names::BACKENDS))
    }

    fn set_ring_entry(&mut self, index: u32, slot: u32) -> Result<(), DataplaneError> {
        self.rings
            .set(index, slot, 0)
            .map_err(map_err(names::RINGS))
    }

    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), DataplaneError> {
        self.reverse
            .insert(backend, rev, 0)
            .map_err(map_err(names::REVERSE))
    }

    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), DataplaneError> {
        ignore_missing(self.reverse.remove(backend)).map_err(map_err(names::REVERSE))
    }

    fn reset_vip_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        let zero = zeroed_per_cpu(names::VIP_STATS)?;
        self.vip_stats
            .set(index, zero, 0)
            .map_err(map_err(names::VIP_STATS))
    }

    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zero = zeroed_per_cpu(names::BACKEND_STATS)?;
        self.backend_stats
            .set(slot, zero, 0)
            .map_err(map_err(names::BACKEND_STATS))?;
        let zero = zeroed_per_cpu(names::BACKEND_L4)?;
        self.backend_l4
            .set(slot, zero, 0)
            .map_err(map_err(names::BACKEND_L4))
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
            Ok(())
        }
        other => other,
    }
}

const fn libc_enoent() -> i32 {
    2
}
