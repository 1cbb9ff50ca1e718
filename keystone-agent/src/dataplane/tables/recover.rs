//! Picking up what a previous agent left in pinned maps.

use std::collections::HashMap;

use keystone_common::{Endpoint, backend_flags, limits::filter::ADDR_FILTER_WORDS};

use super::{MapWriter, Slot, Tables, Vip};
use crate::dataplane::{
    Limits, LiveShares, LoadError, MapAccessError,
    rings::{Region, RingSpace},
};

impl<W: MapWriter> Tables<W> {
    /// Takes over `maps` (sized by `limits`), picking up what a previous agent left in
    /// them (VIP indexes, live tables' places, slot owners and generations), so
    /// established flows survive an agent restart.
    pub fn recover(maps: W, limits: Limits) -> Result<Self, LoadError> {
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
            last_timing: None,
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
                t.vips
                    .insert(vip, Vip::new(String::new(), u32::MAX, Some(info)));
                continue;
            }
            by_index.insert(info.index, vip);
            t.live_stripe[info.index as usize] = info.ring_slot & 1;
            if info.ring_size > 0 {
                t.stripes[info.index as usize][(info.ring_slot & 1) as usize].region = Some(live);
            }
            t.vips
                .insert(vip, Vip::new(String::new(), info.index, Some(info)));
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

    /// See [`super::Dataplane::live_shares`]: counts each picked-up VIP's live table
    /// entries per backend slot that is up and belongs to it.
    pub fn live_shares(&self) -> Result<Vec<LiveShares>, MapAccessError> {
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
}
