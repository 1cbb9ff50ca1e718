//! Map programming without the kernel: stable VIP indexes and backend slots, Maglev
//! tables written as diffs into the inactive stripe, one-write flips, and the order
//! of writes that keeps established flows where they are. Raw map operations go
//! through [`MapWriter`], so all of this runs against [`FakeMaps`] in tests.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use keystone_common::{
    Backend, Endpoint, FlowKey, ReverseNat, VipAddr, VipInfo, addr_filter, backend_flags,
    flow_hash,
    limits::{filter::ADDR_FILTER_WORDS, ring::SLOTS_PER_VIP},
    vip_flags,
};

use super::{
    ApplyError, Limits, MapAccessError, VipSpec,
    rings::{Region, RingSpace},
};

mod fake;
mod hash;
#[cfg(test)]
mod live_share_tests;
mod recover;
mod slots;
mod stripes;
#[cfg(test)]
mod tests;
mod validate;

pub use fake::{FakeMaps, Op};
pub use hash::{TableHash, table_hash};
use validate::validate;

/// The raw map operations `Tables` needs. Reads are only used once, to pick up the
/// state a previous agent left in pinned maps.
pub trait MapWriter {
    /// Every VIPS entry.
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, MapAccessError>;
    /// Every BACKENDS slot, `limits.max_backends` of them.
    fn read_backends(&self) -> Result<Vec<Backend>, MapAccessError>;
    /// Every REVERSE entry.
    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, MapAccessError>;
    /// Every VIP_ADDRS entry.
    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, MapAccessError>;
    /// `len` ring array entries from `base`.
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, MapAccessError>;
    /// The address prefilter, `ADDR_FILTER_WORDS` words.
    fn read_filter(&self) -> Result<Vec<u32>, MapAccessError>;

    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), MapAccessError>;
    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), MapAccessError>;
    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), MapAccessError>;
    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), MapAccessError>;
    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), MapAccessError>;
    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), MapAccessError>;
    /// Ring array entries: `slots[i]` at `indexes[i]` (absolute: stripe base +
    /// offset), all in one batch. On an error an unknown prefix may be written.
    fn set_ring_entries(&mut self, indexes: &[u32], slots: &[u32]) -> Result<(), MapAccessError>;
    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), MapAccessError>;
    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), MapAccessError>;
    /// Zeroes a VIP index's counters (the index is given to a new VIP).
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), MapAccessError>;
    /// Zeroes a backend slot's counters, traffic and L4 (the slot is given to a new
    /// backend).
    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), MapAccessError>;
}

/// (VIP, backend): what a backend slot is allocated to.
type SlotKey = (Endpoint, Endpoint);

/// Where one apply spent its time, summed over the tables it changed. The table
/// hash is not here: it is computed when status or metrics first read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyTiming {
    /// Tables built and flipped.
    pub tables: u32,
    /// Validation, allocation, VIP addresses, backends and reverse-NAT entries.
    pub prepare: Duration,
    /// The Maglev builds.
    pub build: Duration,
    /// Comparing with the inactive stripe and writing the changed entries.
    pub write: Duration,
    /// The VIPS writes that flip to the new tables.
    pub flip: Duration,
    /// After the flips: backends marked down or removed, stale entries.
    pub finish: Duration,
}

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
    /// The spec the last successful apply made live: an apply passes over a VIP whose
    /// spec equals it (`None`: unknown, so the next apply looks at everything).
    applied: Option<VipSpec>,
    /// The live table's hash (see `hash.rs`), computed when first read.
    hash: hash::LiveHash,
    work: VipWork,
}

impl Vip {
    fn new(name: String, index: u32, written: Option<VipInfo>) -> Vip {
        Vip {
            name,
            index,
            table: None,
            written,
            applied: None,
            hash: hash::LiveHash::default(),
            work: VipWork::default(),
        }
    }
}

/// What applies did for one VIP: for tests and logs that check a change to one VIP
/// leaves the others alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipWork {
    /// Applies that looked at the VIP's spec (it had changed, or was unknown).
    pub evaluated: u64,
    /// Maglev tables built for it.
    pub builds: u64,
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
    /// Where the last apply that changed a table spent its time.
    last_timing: Option<ApplyTiming>,
}

impl<W: MapWriter> Tables<W> {
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

    /// What applies did for `vip` so far (`None`: not programmed).
    pub fn vip_work(&self, vip: &Endpoint) -> Option<VipWork> {
        self.vips.get(vip).map(|v| v.work)
    }

    /// Where the last apply that changed a table spent its time (`None`: none yet).
    pub fn last_timing(&self) -> Option<ApplyTiming> {
        self.last_timing
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
    ///
    /// A VIP whose spec equals the one the last successful apply made live is passed
    /// over (steps 2 and 3 look only at the others): a change to one tenant costs the
    /// same whatever the others hold. Any failure forgets every applied spec, so the
    /// next apply looks at everything again.
    pub fn apply(&mut self, specs: &[VipSpec]) -> Result<(), ApplyError> {
        let result = self.apply_changes(specs);
        match &result {
            Ok(()) => {
                for spec in specs {
                    if let Some(v) = self.vips.get_mut(&spec.vip)
                        && v.applied.as_ref() != Some(spec)
                    {
                        v.applied = Some(spec.clone());
                    }
                }
            }
            Err(_) => self.vips.values_mut().for_each(|v| v.applied = None),
        }
        result
    }

    fn apply_changes(&mut self, specs: &[VipSpec]) -> Result<(), ApplyError> {
        let started = Instant::now();
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
            let index = free_indexes.next().ok_or(ApplyError::TooManyVips {
                count: specs.len(),
                max: max_vips,
            })?;
            self.maps.reset_vip_stats(index)?;
            self.vips
                .insert(spec.vip, Vip::new(spec.name.clone(), index, None));
        }
        // From here on only the VIPs whose spec changed.
        let changed: Vec<&VipSpec> = specs
            .iter()
            .filter(|s| self.vips[&s.vip].applied.as_ref() != Some(*s))
            .collect();
        for spec in &changed {
            self.vips
                .get_mut(&spec.vip)
                .expect("allocated above")
                .work
                .evaluated += 1;
        }
        let changed_vips: HashSet<Endpoint> = changed.iter().map(|s| s.vip).collect();
        let wanted: HashSet<SlotKey> = changed
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s.vip, b.endpoint)))
            .collect();
        let gone: Vec<SlotKey> = self
            .slot_of
            .keys()
            .filter(|k| changed_vips.contains(&k.0) && !wanted.contains(k))
            .copied()
            .collect();
        let mut to_remove = Vec::new();
        for key in gone {
            let slot = self.slot_of[&key];
            self.free_slot(key);
            freed.insert(slot);
            to_remove.push(slot);
        }
        let total = specs.iter().map(|s| s.backends.len()).sum();
        for spec in &changed {
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
        for spec in &changed {
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
        for (backend, rev) in reverse
            .iter()
            .filter(|(_, r)| changed_vips.contains(&r.vip))
        {
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
        let mut timing = ApplyTiming {
            prepare: started.elapsed(),
            ..ApplyTiming::default()
        };
        for spec in &changed {
            self.apply_table(spec, &mut timing)?;
        }
        let finishing = Instant::now();

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
        if timing.tables > 0 {
            timing.finish = finishing.elapsed();
            self.last_timing = Some(timing);
        }
        Ok(())
    }

    /// Writes the prefilter words that differ from what the kernel holds.
    fn write_filter(&mut self, filter: &[u32]) -> Result<(), ApplyError> {
        for (i, &word) in filter.iter().enumerate() {
            if self.filter[i] != word {
                self.maps.set_filter_word(i as u32, word)?;
                self.filter[i] = word;
            }
        }
        Ok(())
    }
}
