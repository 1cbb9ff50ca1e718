//! Map programming without the kernel: stable VIP indexes and backend slots, Maglev
//! tables written as diffs into the inactive stripe, one-write flips, and the order
//! of writes that keeps established flows where they are. Raw map operations go
//! through [`MapWriter`], so all of this runs against [`FakeMaps`] in tests.

use std::collections::{BTreeSet, HashMap, HashSet};

use keystone_common::{
    Backend, Endpoint, FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, ReverseNat,
    VipAddr, VipInfo, addr_filter, backend_flags, flow_hash,
    limits::{
        filter::ADDR_FILTER_WORDS,
        ring::{MAX_RING_SIZE, NO_BACKEND, SLOTS_PER_VIP},
    },
    maglev::{self, MaglevBackend},
    mode, vip_flags,
};

use super::{
    DataplaneError, Limits, LiveShares, VipSpec,
    rings::{Region, RingSpace},
};

/// The raw map operations `Tables` needs. Reads are only used once, to pick up the
/// state a previous agent left in pinned maps.
pub trait MapWriter {
    /// Every VIPS entry.
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, DataplaneError>;
    /// Every BACKENDS slot, `limits.max_backends` of them.
    fn read_backends(&self) -> Result<Vec<Backend>, DataplaneError>;
    /// Every REVERSE entry.
    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, DataplaneError>;
    /// Every VIP_ADDRS entry.
    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, DataplaneError>;
    /// `len` ring array entries from `base`.
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DataplaneError>;
    /// The address prefilter, `ADDR_FILTER_WORDS` words.
    fn read_filter(&self) -> Result<Vec<u32>, DataplaneError>;

    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), DataplaneError>;
    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), DataplaneError>;
    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), DataplaneError>;
    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), DataplaneError>;
    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DataplaneError>;
    /// One entry of the ring array (`index` is absolute: stripe base + offset).
    fn set_ring_entry(&mut self, index: u32, slot: u32) -> Result<(), DataplaneError>;
    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), DataplaneError>;
    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), DataplaneError>;
    /// Zeroes a VIP index's counters (the index is given to a new VIP).
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), DataplaneError>;
    /// Zeroes a backend slot's counters, traffic and L4 (the slot is given to a new
    /// backend).
    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), DataplaneError>;
}

/// (VIP, backend): what a backend slot is allocated to.
type SlotKey = (Endpoint, Endpoint);

#[derive(Clone, Debug, Default)]
struct Slot {
    /// Current owner, if allocated.
    owner: Option<SlotKey>,
    /// Whoever held the slot last (the owner, while allocated).
    last_owner: Option<SlotKey>,
    generation: u32,
    /// What the kernel holds for the slot, as far as we know.
    written: Option<Backend>,
}

/// The Maglev inputs a table was built from: size and (identity, weight, slot),
/// sorted. Equal inputs give equal tables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableInput {
    size: u32,
    backends: Vec<(u64, u32, u32)>,
}

#[derive(Clone, Debug)]
struct Vip {
    name: String,
    index: u32,
    /// The table behind the live stripe (`None`: unknown, e.g. after a restart).
    table: Option<TableInput>,
    /// The VIPS entry the kernel holds, as far as we know.
    written: Option<VipInfo>,
}

/// One of a VIP's two tables: where it lives in the ring array, and what we know it
/// holds: entries `0..known.len()` (the rest unknown).
#[derive(Clone, Debug, Default)]
struct Stripe {
    region: Option<Region>,
    known: Vec<u32>,
}

/// The agent's side of the maps: allocation and shadow copies.
pub struct Tables<W> {
    maps: W,
    limits: Limits,
    /// Which ring array entries the VIPs' tables occupy.
    space: RingSpace,
    /// Regions of tables that stopped being live in the last apply: freed at the
    /// next one (or when space runs out), so a packet that read the old VIPS entry
    /// just before a flip never finds another VIP's table there.
    retiring: Vec<Region>,
    vips: HashMap<Endpoint, Vip>,
    /// Per VIP index: which stripe is live (the other one is written next).
    live_stripe: Vec<u32>,
    /// Per VIP index and stripe: what the kernel holds.
    stripes: Vec<[Stripe; SLOTS_PER_VIP as usize]>,
    slots: Vec<Slot>,
    slot_of: HashMap<SlotKey, u32>,
    /// The slot each (VIP, backend) held last (`Slot::last_owner`, inverted).
    last_slot_of: HashMap<SlotKey, u32>,
    /// Slots without an owner.
    free_slots: BTreeSet<u32>,
    reverse: HashMap<Endpoint, ReverseNat>,
    vip_addrs: HashMap<VipAddr, u32>,
    /// The address prefilter as written.
    filter: Vec<u32>,
    /// Ring entries written over this value's lifetime (for tests and logs).
    ring_writes: u64,
}

impl<W: MapWriter> Tables<W> {
    /// Takes over `maps` (sized by `limits`), picking up what a previous agent left in
    /// them (VIP indexes, live tables' places, slot owners and generations), so
    /// established flows survive an agent restart.
    pub fn recover(maps: W, limits: Limits) -> Result<Self, DataplaneError> {
        let max_vips = limits.max_vips;
        let mut t = Tables {
            maps,
            limits,
            space: RingSpace::new(limits.ring_entries),
            retiring: Vec::new(),
            vips: HashMap::new(),
            live_stripe: vec![0; max_vips as usize],
            stripes: vec![Default::default(); max_vips as usize],
            slots: vec![Slot::default(); limits.max_backends as usize],
            slot_of: HashMap::new(),
            last_slot_of: HashMap::new(),
            free_slots: (0..limits.max_backends).collect(),
            reverse: HashMap::new(),
            vip_addrs: HashMap::new(),
            filter: vec![0; ADDR_FILTER_WORDS as usize],
            ring_writes: 0,
        };
        let mut by_index = HashMap::new();
        for (vip, info) in t.maps.read_vips()? {
            let live = Region {
                base: info.ring_base,
                len: info.ring_size,
            };
            if info.index >= max_vips
                || by_index.contains_key(&info.index)
                || (info.ring_size > 0 && !t.space.reserve(live))
            {
                // Not something we wrote; drop it at the next apply.
                t.vips.insert(
                    vip,
                    Vip {
                        name: String::new(),
                        index: u32::MAX,
                        table: None,
                        written: Some(info),
                    },
                );
                continue;
            }
            by_index.insert(info.index, vip);
            t.live_stripe[info.index as usize] = info.ring_slot & 1;
            if info.ring_size > 0 {
                t.stripes[info.index as usize][(info.ring_slot & 1) as usize].region = Some(live);
            }
            t.vips.insert(
                vip,
                Vip {
                    name: String::new(),
                    index: info.index,
                    table: None,
                    written: Some(info),
                },
            );
        }
        let max_backends = t.slots.len();
        for (slot, b) in t
            .maps
            .read_backends()?
            .into_iter()
            .enumerate()
            .take(max_backends)
        {
            let s = &mut t.slots[slot];
            s.generation = b.generation;
            s.written = Some(b);
            let Some(vip) = by_index.get(&b.vip_index) else {
                continue;
            };
            if b.endpoint == Endpoint::default() && b.generation == 0 {
                continue;
            }
            let key = (*vip, b.endpoint);
            s.last_owner = Some(key);
            t.last_slot_of.insert(key, slot as u32);
            if b.flags & backend_flags::UP != 0 && !t.slot_of.contains_key(&key) {
                s.owner = Some(key);
                t.slot_of.insert(key, slot as u32);
                t.free_slots.remove(&(slot as u32));
            }
        }
        t.reverse = t.maps.read_reverse()?.into_iter().collect();
        t.vip_addrs = t.maps.read_vip_addrs()?.into_iter().collect();
        let filter = t.maps.read_filter()?;
        if filter.len() == t.filter.len() {
            t.filter = filter;
        }
        Ok(t)
    }

    pub fn maps(&self) -> &W {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut W {
        &mut self.maps
    }

    /// Ring entries written so far.
    pub fn ring_writes(&self) -> u64 {
        self.ring_writes
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where a VIP index's table `stripe` (0 or 1) lives in the ring array, if placed.
    pub fn stripe_region(&self, index: u32, stripe: u32) -> Option<Region> {
        self.stripes
            .get(index as usize)?
            .get(stripe as usize)?
            .region
    }

    /// The VIP's index (stats, stripes), if programmed.
    pub fn vip_index(&self, vip: &Endpoint) -> Option<u32> {
        self.vips
            .get(vip)
            .map(|v| v.index)
            .filter(|&i| i < self.limits.max_vips)
    }

    /// The backend's slot under `vip`, if allocated.
    pub fn backend_slot(&self, vip: &Endpoint, backend: &Endpoint) -> Option<u32> {
        self.slot_of.get(&(*vip, *backend)).copied()
    }

    /// The generation of a backend slot.
    pub fn slot_generation(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize).map(|s| s.generation)
    }

    /// Programmed VIPs with their names and indexes.
    pub fn vips(&self) -> impl Iterator<Item = (&Endpoint, &str, u32)> {
        self.vips
            .iter()
            .filter(|(_, v)| v.index < self.limits.max_vips)
            .map(|(e, v)| (e, v.name.as_str(), v.index))
    }

    /// Allocated backend slots: (VIP, backend, slot).
    pub fn backend_slots(&self) -> impl Iterator<Item = (&Endpoint, &Endpoint, u32)> {
        self.slot_of.iter().map(|((v, b), &s)| (v, b, s))
    }

    /// The backend a new flow to `vip` goes to, computed as the kernel does (flow hash
    /// into the live table) from the shadow copy. Ignores the connection table: a flow
    /// pinned earlier keeps its backend. `None` if the VIP has no live table we know.
    pub fn predict(&self, vip: &Endpoint, flow: &FlowKey) -> Option<Endpoint> {
        let v = self.vips.get(vip)?;
        let info = v.written?;
        if info.ring_size == 0 || v.index >= self.limits.max_vips {
            return None;
        }
        let sticky = info.flags & vip_flags::SOURCE_STICKY != 0;
        let entry = flow_hash(flow, sticky) % info.ring_size;
        let stripe = &self.stripes[v.index as usize][(info.ring_slot & 1) as usize];
        let slot = *stripe.known.get(entry as usize)?;
        self.slots
            .get(slot as usize)?
            .written
            .filter(|b| b.flags & backend_flags::UP != 0)
            .map(|b| b.endpoint)
    }

    /// See [`super::Dataplane::live_shares`]: counts each picked-up VIP's live table
    /// entries per backend slot that is up and belongs to it.
    pub fn live_shares(&self) -> Result<Vec<LiveShares>, DataplaneError> {
        let mut shares = Vec::new();
        for (vip, v) in &self.vips {
            let Some(info) = v.written.filter(|_| v.table.is_none()) else {
                continue;
            };
            if v.index >= self.limits.max_vips || info.ring_size == 0 {
                continue;
            }
            let mut per_slot: HashMap<u32, u32> = HashMap::new();
            for slot in self.maps.read_ring(info.ring_base, info.ring_size)? {
                *per_slot.entry(slot).or_default() += 1;
            }
            let mut entries: Vec<(Endpoint, u32)> = per_slot
                .into_iter()
                .filter_map(|(slot, count)| {
                    let b = self.slots.get(slot as usize)?.written?;
                    let ours = b.vip_index == v.index && b.flags & backend_flags::UP != 0;
                    ours.then_some((b.endpoint, count))
                })
                .collect();
            entries.sort_unstable_by_key(|(e, _)| e.socket_addr());
            shares.push(LiveShares { vip: *vip, entries });
        }
        Ok(shares)
    }

    /// Makes `specs` the live state; see `Dataplane::apply`. Everything is validated
    /// before the first write. Writes happen in an order that never sends a packet to
    /// a backend slot that is not ready:
    ///
    /// 1. removed VIPs leave VIPS (their index and slots become free);
    /// 2. VIP addresses, then backends that are (still) up, then reverse-NAT entries;
    /// 3. per changed VIP: the new table into the inactive stripe (changed entries
    ///    only), then one VIPS write flips to it;
    /// 4. backends marked down or removed lose `UP` (their flows re-pick through the
    ///    new tables), then stale reverse-NAT entries and VIP addresses go.
    pub fn apply(&mut self, specs: &[VipSpec]) -> Result<(), DataplaneError> {
        let reverse = validate(specs, &self.limits)?;
        self.release_retiring();
        let desired: HashMap<Endpoint, &VipSpec> = specs.iter().map(|s| (s.vip, s)).collect();

        // 1. Removed VIPs.
        let removed: Vec<Endpoint> = self
            .vips
            .keys()
            .filter(|e| !desired.contains_key(e))
            .copied()
            .collect();
        let mut freed = HashSet::new();
        for vip in removed {
            if self.vips[&vip].written.is_some() {
                self.maps.remove_vip(&vip)?;
                self.vips.get_mut(&vip).expect("present").written = None;
            }
            let index = self.vips.remove(&vip).expect("listed above").index;
            self.retire_stripes(index);
            let keys: Vec<SlotKey> = self
                .slot_of
                .keys()
                .filter(|(v, _)| *v == vip)
                .copied()
                .collect();
            for key in keys {
                let slot = self.slot_of[&key];
                self.take_down(slot)?;
                self.free_slot(key);
                freed.insert(slot);
            }
        }

        // Allocation (in memory): VIP indexes, then backend slots. Slots freed by this
        // apply are reused last, so a live table never points at a slot that changed
        // hands before the flip.
        let used: HashSet<u32> = self.vips.values().map(|v| v.index).collect();
        let max_vips = self.limits.max_vips;
        let mut free_indexes = (0..max_vips).filter(|i| !used.contains(i));
        for spec in specs {
            if let Some(v) = self.vips.get_mut(&spec.vip) {
                v.name.clone_from(&spec.name);
                if v.index < max_vips {
                    continue;
                }
            }
            let index = free_indexes.next().ok_or(DataplaneError::TooManyVips {
                count: specs.len(),
                max: max_vips,
            })?;
            self.maps.reset_vip_stats(index)?;
            self.vips.insert(
                spec.vip,
                Vip {
                    name: spec.name.clone(),
                    index,
                    table: None,
                    written: None,
                },
            );
        }
        let wanted: HashSet<SlotKey> = specs
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s.vip, b.endpoint)))
            .collect();
        let gone: Vec<SlotKey> = self
            .slot_of
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        let mut to_remove = Vec::new();
        for key in gone {
            let slot = self.slot_of[&key];
            self.free_slot(key);
            freed.insert(slot);
            to_remove.push(slot);
        }
        let total = wanted.len();
        for spec in specs {
            for b in &spec.backends {
                let key = (spec.vip, b.endpoint);
                if !self.slot_of.contains_key(&key) {
                    self.allocate(key, &freed, total)?;
                }
            }
        }

        // 2. Prefilter bits (added only), VIP addresses, backends that are up,
        //    reverse-NAT entries.
        let mut filter = vec![0u32; ADDR_FILTER_WORDS as usize];
        for spec in specs {
            filter[addr_filter::word(&spec.vip.addr) as usize] |=
                addr_filter::vip_bit(&spec.vip.addr);
        }
        for backend in reverse.keys() {
            filter[addr_filter::word(&backend.addr) as usize] |=
                addr_filter::backend_bit(&backend.addr);
        }
        let widened: Vec<u32> = self
            .filter
            .iter()
            .zip(&filter)
            .map(|(old, new)| old | new)
            .collect();
        self.write_filter(&widened)?;
        let mut addrs: HashMap<VipAddr, u32> = HashMap::new();
        for spec in specs {
            *addrs.entry(VipAddr::from(&spec.vip)).or_default() += 1;
        }
        for (addr, &count) in &addrs {
            if self.vip_addrs.get(addr) != Some(&count) {
                self.maps.set_vip_addr(addr, count)?;
                self.vip_addrs.insert(*addr, count);
            }
        }
        let mut going_down = Vec::new();
        for spec in specs {
            let index = self.vips[&spec.vip].index;
            for b in &spec.backends {
                let slot = self.slot_of[&(spec.vip, b.endpoint)];
                let value = Backend {
                    endpoint: b.endpoint,
                    flags: if b.up { backend_flags::UP } else { 0 },
                    generation: self.slots[slot as usize].generation,
                    vip_index: index,
                };
                if b.up {
                    self.write_backend(slot, value)?;
                } else {
                    going_down.push((slot, value));
                }
            }
        }
        for (backend, rev) in &reverse {
            let rev = ReverseNat {
                vip: rev.vip,
                vip_index: self.vips[&rev.vip].index,
                backend_slot: self.slot_of[&(rev.vip, *backend)],
            };
            if self.reverse.get(backend) != Some(&rev) {
                self.maps.set_reverse(backend, &rev)?;
                self.reverse.insert(*backend, rev);
            }
        }

        // 3. Tables and flips.
        for spec in specs {
            self.apply_table(spec)?;
        }

        // 4. Down and removed backends, stale reverse entries and addresses.
        for (slot, value) in going_down {
            self.write_backend(slot, value)?;
        }
        for slot in to_remove {
            self.take_down(slot)?;
        }
        let stale: Vec<Endpoint> = self
            .reverse
            .keys()
            .filter(|b| !reverse.contains_key(b))
            .copied()
            .collect();
        for backend in stale {
            self.maps.remove_reverse(&backend)?;
            self.reverse.remove(&backend);
        }
        let stale: Vec<VipAddr> = self
            .vip_addrs
            .keys()
            .filter(|a| !addrs.contains_key(a))
            .copied()
            .collect();
        for addr in stale {
            self.maps.remove_vip_addr(&addr)?;
            self.vip_addrs.remove(&addr);
        }
        self.write_filter(&filter)?;
        Ok(())
    }

    /// Writes the prefilter words that differ from what the kernel holds.
    fn write_filter(&mut self, filter: &[u32]) -> Result<(), DataplaneError> {
        for (i, &word) in filter.iter().enumerate() {
            if self.filter[i] != word {
                self.maps.set_filter_word(i as u32, word)?;
                self.filter[i] = word;
            }
        }
        Ok(())
    }

    /// Builds the VIP's table if its inputs changed, writes it into the inactive
    /// stripe and flips; rewrites the VIPS entry if mode or flags changed.
    fn apply_table(&mut self, spec: &VipSpec) -> Result<(), DataplaneError> {
        let v = &self.vips[&spec.vip];
        let index = v.index;
        let mut backends: Vec<(u64, u32, u32)> = spec
            .backends
            .iter()
            .filter(|b| b.up && b.weight > 0)
            .map(|b| {
                (
                    b.endpoint.identity(),
                    b.weight,
                    self.slot_of[&(spec.vip, b.endpoint)],
                )
            })
            .collect();
        backends.sort_unstable();
        let input = TableInput {
            size: spec.ring_size,
            backends,
        };
        let mut info = VipInfo {
            index,
            mode: spec.mode,
            flags: spec.flags,
            ring_slot: self.live_stripe[index as usize],
            ring_size: v.written.map_or(0, |w| w.ring_size),
            ring_base: v.written.map_or(0, |w| w.ring_base),
        };
        let table_changed = v.table.as_ref() != Some(&input);
        if table_changed {
            if input.backends.is_empty() {
                info.ring_size = 0;
            } else {
                let stripe = 1 - self.live_stripe[index as usize];
                let ids: Vec<MaglevBackend> = input
                    .backends
                    .iter()
                    .map(|&(id, weight, _)| MaglevBackend { id, weight })
                    .collect();
                let table: Vec<u32> = maglev::build(&ids, input.size)
                    .into_iter()
                    .map(|i| input.backends.get(i as usize).map_or(NO_BACKEND, |b| b.2))
                    .collect();
                let region = self.place_stripe(spec, index, stripe, input.size)?;
                self.write_stripe(index, stripe, &table)?;
                info.ring_slot = stripe;
                info.ring_size = input.size;
                info.ring_base = region.base;
            }
        }
        let v = self.vips.get_mut(&spec.vip).expect("allocated above");
        if v.written != Some(info) {
            self.maps.set_vip(&spec.vip, &info)?;
            v.written = Some(info);
            self.live_stripe[index as usize] = info.ring_slot;
        }
        v.table = Some(input);
        // The table just retired keeps its place only if the next one fits there.
        let retired = 1 - self.live_stripe[index as usize];
        let keep = self.stripes[index as usize][retired as usize]
            .region
            .is_none_or(|r| r.len == spec.ring_size);
        if !keep {
            self.retire_stripe(index, retired);
        }
        Ok(())
    }

    fn release_retiring(&mut self) {
        for region in std::mem::take(&mut self.retiring) {
            self.space.release(region);
        }
    }

    /// Gives (VIP index, stripe) a region of `size` entries, keeping the one it has if
    /// it is that size. The stripe is not live, so moving it is safe.
    fn place_stripe(
        &mut self,
        spec: &VipSpec,
        index: u32,
        stripe: u32,
        size: u32,
    ) -> Result<Region, DataplaneError> {
        if let Some(region) = self.stripes[index as usize][stripe as usize].region
            && region.len == size
        {
            return Ok(region);
        }
        self.release_stripe(index, stripe);
        let mut region = self.space.allocate(size);
        if region.is_none() && !self.retiring.is_empty() {
            self.release_retiring();
            region = self.space.allocate(size);
        }
        let region = region.ok_or_else(|| DataplaneError::RingSpace {
            vip: format!("{} ({})", spec.name, spec.vip.socket_addr()),
            size,
            free: self.space.free(),
            capacity: self.space.capacity(),
        })?;
        self.stripes[index as usize][stripe as usize].region = Some(region);
        Ok(region)
    }

    /// Frees a stripe's region and forgets its contents.
    fn release_stripe(&mut self, index: u32, stripe: u32) {
        let s = &mut self.stripes[index as usize][stripe as usize];
        if let Some(region) = s.region.take() {
            self.space.release(region);
        }
        s.known.clear();
    }

    /// Forgets a stripe that may still be read by packets in flight; its region is
    /// freed at the next apply.
    fn retire_stripe(&mut self, index: u32, stripe: u32) {
        let s = &mut self.stripes[index as usize][stripe as usize];
        if let Some(region) = s.region.take() {
            self.retiring.push(region);
        }
        s.known.clear();
    }

    /// Retires both stripes of a VIP index that is no longer used.
    fn retire_stripes(&mut self, index: u32) {
        if (index as usize) < self.stripes.len() {
            for stripe in 0..SLOTS_PER_VIP {
                self.retire_stripe(index, stripe);
            }
        }
    }

    /// Writes the entries of `table` that differ from what the stripe holds.
    fn write_stripe(
        &mut self,
        index: u32,
        stripe: u32,
        table: &[u32],
    ) -> Result<(), DataplaneError> {
        let base = self.stripes[index as usize][stripe as usize]
            .region
            .expect("placed before writing")
            .base;
        let shadow = &mut self.stripes[index as usize][stripe as usize].known;
        for (i, &slot) in table.iter().enumerate() {
            if shadow.get(i) == Some(&slot) {
                continue;
            }
            self.maps.set_ring_entry(base + i as u32, slot)?;
            self.ring_writes += 1;
            if i < shadow.len() {
                shadow[i] = slot;
            } else if i == shadow.len() {
                shadow.push(slot);
            }
            // Beyond the known prefix: written, but we keep the prefix contiguous;
            // the loop fills it in order, so this branch is not taken.
        }
        Ok(())
    }

    fn write_backend(&mut self, slot: u32, value: Backend) -> Result<(), DataplaneError> {
        let s = &mut self.slots[slot as usize];
        if s.written != Some(value) {
            self.maps.set_backend(slot, &value)?;
            s.written = Some(value);
        }
        Ok(())
    }

    /// Clears `UP` on a slot, keeping the rest (flows pinned to it re-pick).
    fn take_down(&mut self, slot: u32) -> Result<(), DataplaneError> {
        if let Some(mut b) = self.slots[slot as usize].written
            && b.flags & backend_flags::UP != 0
        {
            b.flags &= !backend_flags::UP;
            self.write_backend(slot, b)?;
        }
        Ok(())
    }

    fn free_slot(&mut self, key: SlotKey) {
        if let Some(slot) = self.slot_of.remove(&key) {
            self.slots[slot as usize].owner = None;
            self.free_slots.insert(slot);
        }
    }

    /// Gives `key` a slot: the one it held last if free (same backend, so its pinned
    /// flows may stay), else a free slot not freed by this apply, else any free slot.
    /// A slot that held another backend gets a new generation.
    fn allocate(
        &mut self,
        key: SlotKey,
        freed: &HashSet<u32>,
        total: usize,
    ) -> Result<u32, DataplaneError> {
        let own = self
            .last_slot_of
            .get(&key)
            .copied()
            .filter(|s| self.free_slots.contains(s));
        let slot = own
            .or_else(|| self.free_slots.iter().copied().find(|s| !freed.contains(s)))
            .or_else(|| self.free_slots.first().copied())
            .ok_or(DataplaneError::TooManyBackends {
                count: total,
                max: self.limits.max_backends,
            })? as usize;
        self.free_slots.remove(&(slot as u32));
        let s = &mut self.slots[slot];
        if s.last_owner.is_some() && s.last_owner != Some(key) {
            s.generation = s.generation.wrapping_add(1);
        }
        let fresh = s.last_owner != Some(key);
        if let Some(previous) = s.last_owner
            && previous != key
        {
            self.last_slot_of.remove(&previous);
        }
        s.owner = Some(key);
        s.last_owner = Some(key);
        self.last_slot_of.insert(key, slot as u32);
        self.slot_of.insert(key, slot as u32);
        if fresh {
            self.maps.reset_backend_stats(slot as u32)?;
        }
        Ok(slot as u32)
    }
}

/// Checks the whole desired state before anything is written. Returns the reverse-NAT
/// entries it implies (backend endpoint → VIP, `nat` VIPs only).
fn validate(
    specs: &[VipSpec],
    limits: &Limits,
) -> Result<HashMap<Endpoint, ReverseNat>, DataplaneError> {
    if specs.len() > limits.max_vips as usize {
        return Err(DataplaneError::TooManyVips {
            count: specs.len(),
            max: limits.max_vips,
        });
    }
    let needed = Limits::ring_entries_needed(specs.iter().map(|s| s.ring_size));
    if needed > u64::from(limits.ring_entries) {
        return Err(DataplaneError::TooManyRingEntries {
            needed,
            max: limits.ring_entries,
        });
    }
    let mut seen = HashSet::new();
    let mut reverse: HashMap<Endpoint, ReverseNat> = HashMap::new();
    let mut total = 0usize;
    for spec in specs {
        let vip = || format!("{} ({})", spec.name, spec.vip.socket_addr());
        if !seen.insert(spec.vip) {
            return Err(DataplaneError::DuplicateVip { vip: vip() });
        }
        if spec.ring_size > MAX_RING_SIZE || !maglev::is_prime(spec.ring_size) {
            return Err(DataplaneError::BadRingSize {
                vip: vip(),
                size: spec.ring_size,
                max: MAX_RING_SIZE,
            });
        }
        if !matches!(spec.vip.family, FAMILY_IPV4 | FAMILY_IPV6)
            || !matches!(spec.vip.proto, PROTO_TCP | PROTO_UDP)
        {
            return Err(DataplaneError::BadEndpoint {
                vip: vip(),
                endpoint: spec.vip.socket_addr().to_string(),
            });
        }
        if !matches!(spec.mode, mode::NAT | mode::DSR) {
            return Err(DataplaneError::BadMode {
                vip: vip(),
                mode: spec.mode,
            });
        }
        let mut backends = HashSet::new();
        for b in &spec.backends {
            let backend = b.endpoint.socket_addr().to_string();
            if !backends.insert(b.endpoint) {
                return Err(DataplaneError::DuplicateBackend {
                    vip: vip(),
                    backend,
                });
            }
            if b.endpoint.family != spec.vip.family || b.endpoint.proto != spec.vip.proto {
                return Err(DataplaneError::BackendMismatch {
                    vip: vip(),
                    backend,
                });
            }
            if spec.mode == mode::NAT {
                if let Some(other) = reverse.get(&b.endpoint) {
                    return Err(DataplaneError::AmbiguousReverseNat {
                        backend,
                        first: other.vip.socket_addr().to_string(),
                        second: spec.vip.socket_addr().to_string(),
                    });
                }
                reverse.insert(
                    b.endpoint,
                    ReverseNat {
                        vip: spec.vip,
                        vip_index: 0,
                        backend_slot: 0,
                    },
                );
            }
        }
        total += spec.backends.len();
    }
    if total > limits.max_backends as usize {
        return Err(DataplaneError::TooManyBackends {
            count: total,
            max: limits.max_backends,
        });
    }
    Ok(reverse)
}

/// One map operation, as recorded by [`FakeMaps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetVip(Endpoint, VipInfo),
    RemoveVip(Endpoint),
    SetVipAddr(VipAddr, u32),
    RemoveVipAddr(VipAddr),
    SetFilter(u32, u32),
    SetBackend(u32, Backend),
    SetRing(u32, u32),
    SetReverse(Endpoint, ReverseNat),
    RemoveReverse(Endpoint),
    ResetVipStats(u32),
    ResetBackendStats(u32),
}

/// In-memory maps that log every operation: for tests that need no root. Sized by
/// the default `Limits`.
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    pub vips: HashMap<Endpoint, VipInfo>,
    pub vip_addrs: HashMap<VipAddr, u32>,
    pub filter: HashMap<u32, u32>,
    pub backends: HashMap<u32, Backend>,
    pub rings: HashMap<u32, u32>,
    pub reverse: HashMap<Endpoint, ReverseNat>,
    pub log: Vec<Op>,
}

impl FakeMaps {
    /// The backend the kernel would pick for a new flow, from these maps alone.
    pub fn pick(&self, vip: &Endpoint, flow: &FlowKey) -> Option<(u32, Backend)> {
        let info = self.vips.get(vip)?;
        if info.ring_size == 0 {
            return None;
        }
        let entry = flow_hash(flow, info.flags & vip_flags::SOURCE_STICKY != 0) % info.ring_size;
        let slot = *self.rings.get(&(info.ring_base + entry))?;
        let b = *self.backends.get(&slot)?;
        (b.flags & backend_flags::UP != 0).then_some((slot, b))
    }
}

impl MapWriter for FakeMaps {
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, DataplaneError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_backends(&self) -> Result<Vec<Backend>, DataplaneError> {
        Ok((0..Limits::default().max_backends)
            .map(|i| self.backends.get(&i).copied().unwrap_or_default())
            .collect())
    }
    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, DataplaneError> {
        Ok(self.reverse.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, DataplaneError> {
        Ok(self.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        Ok((base..base + len)
            .map(|i| self.rings.get(&i).copied().unwrap_or(NO_BACKEND))
            .collect())
    }
    fn read_filter(&self) -> Result<Vec<u32>, DataplaneError> {
        Ok((0..ADDR_FILTER_WORDS)
            .map(|i| self.filter.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), DataplaneError> {
        self.filter.insert(index, word);
        self.log.push(Op::SetFilter(index, word));
        Ok(())
    }
    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), DataplaneError> {
        self.vips.insert(*vip, *info);
        self.log.push(Op::SetVip(*vip, *info));
        Ok(())
    }
    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), DataplaneError> {
        self.vips.remove(vip);
        self.log.push(Op::RemoveVip(*vip));
        Ok(())
    }
    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), DataplaneError> {
        self.vip_addrs.insert(*addr, count);
        self.log.push(Op::SetVipAddr(*addr, count));
        Ok(())
    }
    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), DataplaneError> {
        self.vip_addrs.remove(addr);
        self.log.push(Op::RemoveVipAddr(*addr));
        Ok(())
    }
    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends.insert(slot, *backend);
        self.log.push(Op::SetBackend(slot, *backend));
        Ok(())
    }
    fn set_ring_entry(&mut self, index: u32, slot: u32) -> Result<(), DataplaneError> {
        self.rings.insert(index, slot);
        self.log.push(Op::SetRing(index, slot));
        Ok(())
    }
    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), DataplaneError> {
        self.reverse.insert(*backend, *rev);
        self.log.push(Op::SetReverse(*backend, *rev));
        Ok(())
    }
    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), DataplaneError> {
        self.reverse.remove(backend);
        self.log.push(Op::RemoveReverse(*backend));
        Ok(())
    }
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.log.push(Op::ResetVipStats(index));
        Ok(())
    }
    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.log.push(Op::ResetBackendStats(slot));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use keystone_common::{PROTO_TCP, backend_flags::UP, limits::ring::NO_BACKEND, mode};

    use super::*;
    use crate::dataplane::BackendSpec;

    const SIZE: u32 = 1009;

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().expect("socket address"), PROTO_TCP)
    }

    fn backend(addr: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            name: addr.into(),
            endpoint: ep(addr),
            weight,
            up: true,
        }
    }

    fn vip(addr: &str, backends: Vec<BackendSpec>) -> VipSpec {
        VipSpec {
            name: format!("vip {addr}"),
            vip: ep(addr),
            mode: mode::NAT,
            flags: 0,
            ring_size: SIZE,
            backends,
        }
    }

    const V: &str = "198.18.0.100:80";

    fn two(w0: u32, w1: u32) -> Vec<VipSpec> {
        vec![vip(
            V,
            vec![
                backend("198.18.1.10:8080", w0),
                backend("198.18.1.11:8080", w1),
            ],
        )]
    }

    fn tables() -> Tables<FakeMaps> {
        Tables::recover(FakeMaps::default(), Limits::default()).expect("empty maps")
    }

    /// Applies and returns the operations it did.
    fn apply(t: &mut Tables<FakeMaps>, specs: &[VipSpec]) -> Vec<Op> {
        t.maps_mut().log.clear();
        t.apply(specs).unwrap_or_else(|e| panic!("apply: {e}"));
        t.maps().log.clone()
    }

    fn ring_writes(ops: &[Op]) -> usize {
        ops.iter().filter(|o| matches!(o, Op::SetRing(..))).count()
    }

    fn flows() -> impl Iterator<Item = FlowKey> {
        (0..2000u32).map(|i| FlowKey {
            src: [
                u32::from_ne_bytes([198, 19, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            dst: ep(V).addr,
            src_port: ((i * 7919) as u16).to_be(),
            dst_port: 80u16.to_be(),
            proto: PROTO_TCP,
            family: keystone_common::FAMILY_IPV4,
            _pad: [0; 2],
        })
    }

    fn slot(t: &Tables<FakeMaps>, backend: &str) -> u32 {
        t.backend_slot(&ep(V), &ep(backend))
            .expect("backend has a slot")
    }

    #[test]
    fn first_apply_writes_the_stripe_then_flips_with_one_vip_write() {
        let mut t = tables();
        let ops = apply(&mut t, &two(1, 1));
        let flip = ops
            .iter()
            .position(|o| matches!(o, Op::SetVip(..)))
            .expect("a VIPS write");
        assert_eq!(
            ops.iter().filter(|o| matches!(o, Op::SetVip(..))).count(),
            1
        );
        let last_ring = ops
            .iter()
            .rposition(|o| matches!(o, Op::SetRing(..)))
            .expect("ring writes");
        let first_backend = ops
            .iter()
            .position(|o| matches!(o, Op::SetBackend(..)))
            .expect("backend writes");
        assert!(
            first_backend < last_ring && last_ring < flip,
            "backends, then stripe, then flip: {ops:?}"
        );
        assert_eq!(ring_writes(&ops), SIZE as usize);
        let Op::SetVip(_, info) = ops[flip] else {
            unreachable!()
        };
        assert_eq!((info.ring_slot, info.ring_size), (1, SIZE));
        // Every entry of the live stripe names an up backend of this VIP.
        for i in 0..SIZE {
            let s = t.maps().rings[&(info.ring_base + i)];
            assert!(s == slot(&t, "198.18.1.10:8080") || s == slot(&t, "198.18.1.11:8080"));
        }
        // Addresses and reverse NAT are in place before the flip.
        assert!(
            ops[..flip]
                .iter()
                .any(|o| matches!(o, Op::SetVipAddr(_, 1)))
        );
        assert_eq!(
            ops[..flip]
                .iter()
                .filter(|o| matches!(o, Op::SetReverse(..)))
                .count(),
            2
        );
    }

    #[test]
    fn unchanged_config_writes_nothing() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        assert_eq!(apply(&mut t, &two(1, 1)), vec![]);
    }

    #[test]
    fn only_changed_entries_are_written_and_flips_alternate() {
        let mut t = tables();
        apply(&mut t, &two(1, 1)); // stripe 1: table A
        let ops = apply(&mut t, &two(3, 1)); // stripe 0 was never written: all of it
        assert_eq!(ring_writes(&ops), SIZE as usize);
        let a: Vec<u32> = (0..SIZE)
            .map(|i| t.maps().rings[&(t.stripe_region(0, 1).unwrap().base + i)])
            .collect();
        let b: Vec<u32> = (0..SIZE)
            .map(|i| t.maps().rings[&(t.stripe_region(0, 0).unwrap().base + i)])
            .collect();
        assert_eq!(t.maps().vips[&ep(V)].ring_slot, 0);

        // Back to A: stripe 1 already holds it, so only the flip.
        let ops = apply(&mut t, &two(1, 1));
        assert_eq!(ring_writes(&ops), 0, "{ops:?}");
        assert_eq!(ops.len(), 1);
        assert!(matches!(
            ops[0],
            Op::SetVip(_, VipInfo { ring_slot: 1, .. })
        ));

        // A third table into stripe 0: only entries that differ from B.
        let ops = apply(&mut t, &two(2, 1));
        let c: Vec<u32> = (0..SIZE)
            .map(|i| t.maps().rings[&(t.stripe_region(0, 0).unwrap().base + i)])
            .collect();
        let differ = b.iter().zip(&c).filter(|(x, y)| x != y).count();
        assert_eq!(ring_writes(&ops), differ);
        assert!(
            differ > 0 && differ < SIZE as usize / 2,
            "{differ} entries changed"
        );
        assert_ne!(a, c);
    }

    #[test]
    fn weight_zero_keeps_the_slot_up_and_out_of_the_table() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let b0 = slot(&t, "198.18.1.10:8080");
        apply(&mut t, &two(0, 1));
        assert_eq!(slot(&t, "198.18.1.10:8080"), b0, "slot is stable");
        assert_ne!(
            t.maps().backends[&b0].flags & UP,
            0,
            "weight 0 keeps established flows"
        );
        let info = t.maps().vips[&ep(V)];
        assert!((0..SIZE).all(|i| t.maps().rings[&(info.ring_base + i)] != b0));
    }

    #[test]
    fn removal_clears_up_and_reverse_after_the_flip() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let b0 = slot(&t, "198.18.1.10:8080");
        let mut spec = two(1, 1);
        spec[0].backends.remove(0);
        let ops = apply(&mut t, &spec);
        assert_eq!(t.maps().backends[&b0].flags & UP, 0);
        assert!(!t.maps().reverse.contains_key(&ep("198.18.1.10:8080")));
        assert_eq!(t.backend_slot(&ep(V), &ep("198.18.1.10:8080")), None);
        let flip = ops
            .iter()
            .position(|o| matches!(o, Op::SetVip(..)))
            .expect("flip");
        let down = ops
            .iter()
            .position(|o| matches!(o, Op::SetBackend(s, _) if *s == b0))
            .expect("b0 down");
        assert!(
            flip < down,
            "the new table is live before the slot goes down: {ops:?}"
        );
        assert!(
            ops[flip..]
                .iter()
                .any(|o| matches!(o, Op::RemoveReverse(_)))
        );
    }

    #[test]
    fn down_backends_keep_their_slot_and_lose_up_after_the_flip() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let b0 = slot(&t, "198.18.1.10:8080");
        let mut spec = two(1, 1);
        spec[0].backends[0].up = false;
        let ops = apply(&mut t, &spec);
        assert_eq!(slot(&t, "198.18.1.10:8080"), b0);
        assert_eq!(t.maps().backends[&b0].flags & UP, 0);
        let flip = ops
            .iter()
            .position(|o| matches!(o, Op::SetVip(..)))
            .expect("flip");
        let down = ops
            .iter()
            .position(|o| matches!(o, Op::SetBackend(s, _) if *s == b0))
            .expect("b0 down");
        assert!(flip < down, "{ops:?}");
        // Back up: same slot, same generation (same backend).
        let gen_before = t.slot_generation(b0);
        apply(&mut t, &two(1, 1));
        assert_ne!(t.maps().backends[&b0].flags & UP, 0);
        assert_eq!(t.slot_generation(b0), gen_before);
    }

    #[test]
    fn a_slot_given_to_another_backend_gets_a_new_generation() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let b0 = slot(&t, "198.18.1.10:8080");
        let g0 = t.maps().backends[&b0].generation;
        apply(&mut t, &[vip(V, vec![backend("198.18.1.11:8080", 1)])]);
        apply(
            &mut t,
            &[vip(
                V,
                vec![
                    backend("198.18.1.11:8080", 1),
                    backend("198.18.1.12:8080", 1),
                ],
            )],
        );
        assert_eq!(slot(&t, "198.18.1.12:8080"), b0, "the freed slot is reused");
        let b = t.maps().backends[&b0];
        assert_eq!(b.endpoint, ep("198.18.1.12:8080"));
        assert_eq!(b.generation, g0 + 1);
        assert_ne!(b.flags & UP, 0);
        assert!(
            t.maps().log.contains(&Op::ResetBackendStats(b0)),
            "new occupant starts with zero counters"
        );
    }

    #[test]
    fn reverse_entries_carry_the_backend_slot() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        for b in ["198.18.1.10:8080", "198.18.1.11:8080"] {
            assert_eq!(t.maps().reverse[&ep(b)].backend_slot, slot(&t, b), "{b}");
        }
        // b0 leaves, b2 takes its slot, b0 comes back in another slot: the reply
        // path must count each backend's answers under its own slot.
        let b0 = slot(&t, "198.18.1.10:8080");
        apply(&mut t, &[vip(V, vec![backend("198.18.1.11:8080", 1)])]);
        apply(
            &mut t,
            &[vip(
                V,
                vec![
                    backend("198.18.1.11:8080", 1),
                    backend("198.18.1.12:8080", 1),
                ],
            )],
        );
        assert_eq!(slot(&t, "198.18.1.12:8080"), b0);
        apply(
            &mut t,
            &[vip(
                V,
                vec![
                    backend("198.18.1.10:8080", 1),
                    backend("198.18.1.11:8080", 1),
                    backend("198.18.1.12:8080", 1),
                ],
            )],
        );
        assert_ne!(slot(&t, "198.18.1.10:8080"), b0);
        for b in ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.1.12:8080"] {
            assert_eq!(t.maps().reverse[&ep(b)].backend_slot, slot(&t, b), "{b}");
        }
    }

    #[test]
    fn a_slot_freed_in_the_same_apply_is_not_reused_by_it() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let b0 = slot(&t, "198.18.1.10:8080");
        apply(
            &mut t,
            &[vip(
                V,
                vec![
                    backend("198.18.1.11:8080", 1),
                    backend("198.18.1.12:8080", 1),
                ],
            )],
        );
        assert_ne!(slot(&t, "198.18.1.12:8080"), b0);
    }

    #[test]
    fn removed_vips_and_shared_addresses() {
        let mut t = tables();
        let v2 = vip("198.18.0.100:443", vec![backend("198.18.1.20:8443", 1)]);
        let mut both = two(1, 1);
        both.push(v2.clone());
        apply(&mut t, &both);
        let addr = VipAddr::from(&ep(V));
        assert_eq!(t.maps().vip_addrs[&addr], 2);
        let slot20 = t
            .backend_slot(&v2.vip, &ep("198.18.1.20:8443"))
            .expect("slot");
        let ops = apply(&mut t, &two(1, 1));
        assert!(ops.contains(&Op::RemoveVip(v2.vip)));
        assert_eq!(t.maps().vip_addrs[&addr], 1);
        assert_eq!(t.maps().backends[&slot20].flags & UP, 0);
        assert!(!t.maps().reverse.contains_key(&ep("198.18.1.20:8443")));
        apply(&mut t, &[]);
        assert!(
            t.maps().vips.is_empty()
                && t.maps().vip_addrs.is_empty()
                && t.maps().reverse.is_empty()
        );
        assert!(t.maps().backends.values().all(|b| b.flags & UP == 0));
    }

    fn filter_has(t: &Tables<FakeMaps>, addr: &Endpoint, bit: fn(&[u32; 4]) -> u32) -> bool {
        let word = t
            .maps()
            .filter
            .get(&addr_filter::word(&addr.addr))
            .copied()
            .unwrap_or(0);
        word & bit(&addr.addr) != 0
    }

    #[test]
    fn prefilter_covers_vips_and_nat_backends_while_they_exist() {
        let mut t = tables();
        let ops = apply(&mut t, &two(1, 1));
        let first_filter = ops
            .iter()
            .position(|o| matches!(o, Op::SetFilter(..)))
            .expect("filter written");
        let first_vip = ops
            .iter()
            .position(|o| matches!(o, Op::SetVip(..)))
            .expect("flip");
        let first_rev = ops
            .iter()
            .position(|o| matches!(o, Op::SetReverse(..)))
            .expect("reverse");
        assert!(
            first_filter < first_vip && first_filter < first_rev,
            "bits set first: {ops:?}"
        );
        assert!(filter_has(&t, &ep(V), addr_filter::vip_bit));
        assert!(filter_has(
            &t,
            &ep("198.18.1.10:8080"),
            addr_filter::backend_bit
        ));
        assert!(filter_has(
            &t,
            &ep("198.18.1.11:8080"),
            addr_filter::backend_bit
        ));
        let ops = apply(&mut t, &[]);
        let last_filter = ops
            .iter()
            .rposition(|o| matches!(o, Op::SetFilter(..)))
            .expect("cleared");
        assert_eq!(last_filter, ops.len() - 1, "bits cleared last: {ops:?}");
        assert!(t.maps().filter.values().all(|&w| w == 0));
    }

    #[test]
    fn prediction_matches_the_maps() {
        let mut t = tables();
        apply(&mut t, &two(3, 1));
        apply(&mut t, &two(1, 2));
        for f in flows() {
            let (_, b) = t.maps().pick(&ep(V), &f).expect("a backend");
            assert_eq!(t.predict(&ep(V), &f), Some(b.endpoint));
        }
    }

    #[test]
    fn no_eligible_backend_means_ring_size_zero() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let ops = apply(&mut t, &two(0, 0));
        assert_eq!(ring_writes(&ops), 0);
        assert_eq!(t.maps().vips[&ep(V)].ring_size, 0);
        assert_eq!(t.predict(&ep(V), &flows().next().unwrap()), None);
        // Maglev's "no backend" never reaches the kernel.
        assert!(t.maps().rings.values().all(|&s| s != NO_BACKEND));
    }

    #[test]
    fn bad_input_is_rejected_before_any_write() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        let cases: Vec<(Vec<VipSpec>, &str)> = vec![
            (
                vec![VipSpec {
                    ring_size: 1000,
                    ..two(1, 1).remove(0)
                }],
                "prime",
            ),
            (
                vec![VipSpec {
                    ring_size: 1_048_583,
                    ..two(1, 1).remove(0)
                }],
                "prime",
            ),
            (
                // 4 × 2 × 655,373 entries: more than the default ring array.
                (0..4)
                    .map(|i| VipSpec {
                        ring_size: 655_373,
                        ..vip(&format!("198.18.0.{}:80", 200 + i), vec![])
                    })
                    .collect(),
                "limits.ring_entries",
            ),
            ([two(1, 1), two(1, 1)].concat(), "twice"),
            (
                vec![vip(
                    V,
                    vec![
                        backend("198.18.1.10:8080", 1),
                        backend("198.18.1.10:8080", 2),
                    ],
                )],
                "twice",
            ),
            (
                vec![vip(V, vec![backend("[2001:db8::10]:8080", 1)])],
                "family",
            ),
            (
                vec![
                    two(1, 1).remove(0),
                    vip("198.18.0.101:80", vec![backend("198.18.1.10:8080", 1)]),
                ],
                "two nat-mode VIPs",
            ),
            (
                vec![VipSpec {
                    mode: 7,
                    ..two(1, 1).remove(0)
                }],
                "mode",
            ),
        ];
        for (spec, want) in cases {
            t.maps_mut().log.clear();
            let err = t.apply(&spec).expect_err("invalid config");
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want:?}"
            );
            assert_eq!(t.maps().log, vec![], "nothing written for: {err}");
        }
        // DSR VIPs may share a backend with a nat VIP: no reverse entry is needed.
        let mut dsr = vip("198.18.0.101:80", vec![backend("198.18.1.10:8080", 1)]);
        dsr.mode = mode::DSR;
        t.apply(&[two(1, 1).remove(0), dsr])
            .expect("dsr VIP sharing a backend");
    }

    #[test]
    fn too_many_vips_and_backends() {
        let mut t = tables();
        let Limits {
            max_vips,
            max_backends,
            ..
        } = Limits::default();
        let vips: Vec<VipSpec> = (0..=max_vips)
            .map(|i| vip(&format!("198.18.0.{}:80", i + 1), vec![]))
            .collect();
        assert!(matches!(
            t.apply(&vips),
            Err(DataplaneError::TooManyVips { .. })
        ));
        let many: Vec<BackendSpec> = (0..=max_backends)
            .map(|i| backend(&format!("198.18.{}.{}:80", 2 + i / 250, i % 250), 1))
            .collect();
        assert!(matches!(
            t.apply(&[vip(V, many)]),
            Err(DataplaneError::TooManyBackends { .. })
        ));
        assert!(t.maps().log.is_empty());
    }

    fn small(max_vips: u32, max_backends: u32, ring_entries: u32) -> Tables<FakeMaps> {
        let limits = Limits {
            max_vips,
            max_backends,
            ring_entries,
            ..Limits::default()
        };
        Tables::recover(FakeMaps::default(), limits).expect("empty maps")
    }

    fn numbered_vips(count: u32, ring_size: u32, backends: u32) -> Vec<VipSpec> {
        (0..count)
            .map(|v| {
                let mut spec = vip(
                    &format!("198.18.0.{}:80", v + 1),
                    (0..backends)
                        .map(|b| backend(&format!("198.18.{}.{}:80", 2 + v, b + 1), 1))
                        .collect(),
                );
                spec.ring_size = ring_size;
                spec
            })
            .collect()
    }

    /// Every VIP's live table lies inside the ring array, apart from every other
    /// live table, and holds only that VIP's backends.
    fn check_live_tables(t: &Tables<FakeMaps>, specs: &[VipSpec]) {
        let mut spans = Vec::new();
        for spec in specs {
            let info = t.maps().vips[&spec.vip];
            assert_eq!(info.ring_size, spec.ring_size);
            let end = u64::from(info.ring_base) + u64::from(info.ring_size);
            assert!(end <= u64::from(t.limits().ring_entries), "{info:?}");
            spans.push((info.ring_base, end));
            let slots: HashSet<u32> = spec
                .backends
                .iter()
                .map(|b| t.backend_slot(&spec.vip, &b.endpoint).expect("slot"))
                .collect();
            for i in 0..info.ring_size {
                assert!(slots.contains(&t.maps().rings[&(info.ring_base + i)]));
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(u64::from(w[1].0) >= w[0].1, "overlapping tables {w:?}");
        }
    }

    #[test]
    fn tables_of_their_own_size_share_the_ring_array() {
        // Room for exactly 3 VIPs × 2 tables of 1009, as the limits check says.
        let mut t = small(4, 16, 6 * SIZE);
        let specs = numbered_vips(3, SIZE, 2);
        apply(&mut t, &specs);
        check_live_tables(&t, &specs);
        // Weight changes write the other table of each VIP and flip, still in room.
        let mut changed = specs.clone();
        for spec in &mut changed {
            spec.backends[0].weight = 3;
        }
        apply(&mut t, &changed);
        check_live_tables(&t, &changed);
        // A 4th VIP would need 2 × 1009 more.
        let err = t
            .apply(&numbered_vips(4, SIZE, 2))
            .expect_err("over limits.ring_entries");
        assert!(err.to_string().contains("limits.ring_entries"), "{err}");
    }

    #[test]
    fn a_vip_changing_table_size_moves_into_free_space() {
        let mut t = small(4, 16, 2 * 1009 + 2 * 2003);
        let mut specs = numbered_vips(2, 1009, 3);
        apply(&mut t, &specs);
        // VIP 0 grows to 2003, VIP 1 shrinks to 503: both fit with 2 tables each.
        specs[0].ring_size = 2003;
        specs[1].ring_size = 503;
        apply(&mut t, &specs);
        check_live_tables(&t, &specs);
        specs[0].backends[1].weight = 5;
        specs[1].backends[1].weight = 5;
        apply(&mut t, &specs);
        check_live_tables(&t, &specs);
        // Removing a VIP frees its tables for a new one.
        let mut next = vec![specs[0].clone()];
        next.extend(numbered_vips(3, 1009, 1).into_iter().skip(2));
        apply(&mut t, &next);
        check_live_tables(&t, &next);
    }

    #[test]
    fn many_vips_with_many_backends_fit_their_limits() {
        let mut t = small(100, 100 * 20, 100 * 2 * 211);
        let specs = numbered_vips(100, 211, 20);
        apply(&mut t, &specs);
        check_live_tables(&t, &specs);
        let err = t
            .apply(&numbered_vips(101, 211, 1))
            .expect_err("over limits.max_vips");
        assert!(matches!(err, DataplaneError::TooManyVips { max: 100, .. }));
    }

    #[test]
    fn a_restarted_agent_finds_tables_where_they_were_placed() {
        let mut t = small(4, 16, 6 * SIZE);
        let mut specs = numbered_vips(3, SIZE, 2);
        apply(&mut t, &specs);
        specs[1].backends[0].weight = 4;
        apply(&mut t, &specs);
        let maps = t.maps().clone();
        let mut t2 = Tables::recover(maps, *t.limits()).expect("recover");
        // The tables are unknown after a restart, so each VIP gets a new one; the live
        // ones were reserved, so none is written over while packets read it.
        let before: Vec<VipInfo> = specs.iter().map(|s| t2.maps().vips[&s.vip]).collect();
        specs[2].backends[0].weight = 7;
        apply(&mut t2, &specs);
        check_live_tables(&t2, &specs);
        for spec in &specs {
            let now = t2.maps().vips[&spec.vip];
            for old in &before {
                let apart = now.ring_base + now.ring_size <= old.ring_base
                    || old.ring_base + old.ring_size <= now.ring_base;
                assert!(apart, "{now:?} written over the live {old:?}");
            }
        }
    }

    #[test]
    fn a_restarted_agent_keeps_slots_and_tables() {
        let mut t = tables();
        apply(&mut t, &two(1, 1));
        apply(&mut t, &two(2, 1));
        let maps = t.maps().clone();
        let before: Vec<_> = flows().map(|f| maps.pick(&ep(V), &f)).collect();

        let mut t2 = Tables::recover(maps, Limits::default()).expect("recover");
        assert_eq!(
            t2.backend_slot(&ep(V), &ep("198.18.1.10:8080")),
            t.backend_slot(&ep(V), &ep("198.18.1.10:8080"))
        );
        let ops = apply(&mut t2, &two(2, 1));
        assert!(
            !ops.iter().any(|o| matches!(o, Op::SetBackend(..))),
            "backends untouched: {ops:?}"
        );
        let after: Vec<_> = flows().map(|f| t2.maps().pick(&ep(V), &f)).collect();
        assert_eq!(
            before, after,
            "every flow maps to the same slot and generation"
        );
        for f in flows() {
            assert_eq!(
                t2.predict(&ep(V), &f),
                t2.maps().pick(&ep(V), &f).map(|(_, b)| b.endpoint)
            );
        }
    }
}

#[cfg(test)]
mod live_share_tests {
    use keystone_common::{PROTO_TCP, mode};

    use super::*;
    use crate::dataplane::BackendSpec;

    const V: &str = "198.18.0.100:80";
    const B: [&str; 3] = ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.1.12:8080"];

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().expect("socket address"), PROTO_TCP)
    }

    fn spec(weights: &[(Endpoint, u32)]) -> Vec<VipSpec> {
        vec![VipSpec {
            name: "web".into(),
            vip: ep(V),
            mode: mode::NAT,
            flags: 0,
            ring_size: 1009,
            backends: weights
                .iter()
                .map(|&(endpoint, weight)| BackendSpec {
                    name: endpoint.socket_addr().to_string(),
                    endpoint,
                    weight,
                    up: true,
                })
                .collect(),
        }]
    }

    /// Share of the VIP's live table per backend, as the kernel would split new flows.
    fn split(maps: &FakeMaps) -> HashMap<Endpoint, f64> {
        let info = maps.vips[&ep(V)];
        let mut split = HashMap::new();
        for i in 0..info.ring_size {
            let b = maps.backends[&maps.rings[&(info.ring_base + i)]];
            *split.entry(b.endpoint).or_default() += 1.0 / f64::from(info.ring_size);
        }
        split
    }

    /// A pinned table, read back after a restart and rebuilt from the shares it gives,
    /// splits new flows as the pinned one did (±2 points), with backends in their slots.
    #[test]
    fn shares_read_back_rebuild_the_pinned_split() {
        let pinned_weights: [&[u32]; 3] = [&[0, 1, 0], &[1, 3, 0], &[5, 3, 2]];
        for pinned in pinned_weights {
            let mut t = Tables::recover(FakeMaps::default(), Limits::default()).expect("empty");
            let weights: Vec<(Endpoint, u32)> = B
                .iter()
                .map(|b| ep(b))
                .zip(pinned.iter().copied())
                .collect();
            // Two applies: the live table is in the second stripe.
            t.apply(&spec(&[(ep(B[0]), 1), (ep(B[1]), 1)]))
                .expect("apply");
            t.apply(&spec(&weights)).expect("apply");
            let before = split(t.maps());
            let t2 = Tables::recover(t.maps().clone(), Limits::default()).expect("recover");
            let shares = t2.live_shares().expect("read back");
            assert_eq!(shares.len(), 1, "{shares:?}");
            let recovered = shares[0].entries.clone();
            assert_eq!(
                recovered.iter().map(|(e, _)| *e).collect::<HashSet<_>>(),
                before.keys().copied().collect::<HashSet<_>>(),
                "exactly the backends the pinned table sends to, for {pinned:?}"
            );
            let mut t2 = t2;
            t2.apply(&spec(&recovered)).expect("apply recovered shares");
            assert!(
                t2.live_shares().expect("read").is_empty(),
                "only before the first apply"
            );
            let after = split(t2.maps());
            for (backend, share) in &before {
                let now = after.get(backend).copied().unwrap_or(0.0);
                assert!(
                    (now - share).abs() <= 0.02,
                    "{pinned:?}: {backend:?} had {share:.3} of new flows, now {now:.3}"
                );
                assert_eq!(
                    t2.backend_slot(&ep(V), backend),
                    t.backend_slot(&ep(V), backend),
                    "same slot, so established flows stay"
                );
            }
            assert!(after.keys().all(|b| before.contains_key(b)), "{after:?}");
        }
    }
}
