//! What a previous agent left pinned: maps of another size replaced, maps of an
//! earlier layout migrated, capacities that cannot change refused.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo},
};
use keystone_common::{
    Backend, Endpoint, Event, FlowKey, FlowState, Reason, ReverseNat, VipInfo, backend_flags,
    legacy::{FlowStateV1, ReverseNatV1, VipInfoV1, v1_ring_base},
    limits::ring::NO_BACKEND,
    names,
};

use super::{maps::map_err, sized_maps};
use crate::dataplane::{Limits, LoadError, start::Start};

/// Unpins the connection table if it is pinned with another size than `entries`,
/// so the loader creates it anew (reusing it would silently keep the old size); the
/// old one is pinned back if the start fails.
pub(super) fn replace_resized_conn_table(
    pin_dir: &Path,
    entries: u32,
    start: &mut Start,
) -> Result<(), LoadError> {
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
pub(super) fn replace_resized_counter_maps(
    pin_dir: &Path,
    start: &mut Start,
) -> Result<(), LoadError> {
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
pub(super) fn pinned_entries(pin_dir: &Path, map: &'static str) -> Result<Option<u32>, LoadError> {
    let path = pin_dir.join(map);
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&path).map_err(map_err(map))?;
    Ok(Some(info.max_entries()))
}

/// Upgrades from an agent whose REVERSE map was `names::REVERSE_V1` (no backend slot):
/// copies its entries into the new map, with each backend's slot found in the reused
/// BACKENDS map, before the new program is attached, so replies of established `nat`
/// flows stay translated across the upgrade (the first `apply` then rewrites the
/// entries from the config). Returns whether a V1 map was found.
pub(super) fn migrate_reverse_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, LoadError> {
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
        let map = ebpf.map(names::BACKENDS).ok_or(LoadError::MissingMap {
            map: names::BACKENDS,
        })?;
        let array = Array::<_, Backend>::try_from(map).map_err(map_err(names::BACKENDS))?;
        (0..array.len())
            .map(|i| array.get(&i, 0).map_err(map_err(names::BACKENDS)))
            .collect::<Result<_, _>>()?
    };
    let map = ebpf.map_mut(names::REVERSE).ok_or(LoadError::MissingMap {
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
pub(super) fn migrate_conns_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, LoadError> {
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
        .ok_or(LoadError::MissingMap { map: names::CONNS })?;
    let mut new = HashMap::<_, FlowKey, FlowState>::try_from(map).map_err(map_err(names::CONNS))?;
    let mut copied = 0;
    for entry in old.iter().take(capacity as usize) {
        let (flow, v1) = match entry {
            Ok(entry) => entry,
            // Evicted between finding its key and reading it.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(v1_err(e).into()),
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
pub(super) fn check_pinned_capacities(pin_dir: &Path, limits: &Limits) -> Result<(), LoadError> {
    for (map, field, wanted) in sized_maps(limits) {
        if map == names::CONNS {
            continue;
        }
        let Some(pinned) = pinned_entries(pin_dir, map)? else {
            continue;
        };
        if pinned != wanted {
            return Err(LoadError::PinnedCapacity {
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
            return Err(LoadError::PinnedCapacity {
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
pub(super) fn migrate_vips_v1(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<bool, LoadError> {
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
        .ok_or(LoadError::MissingMap { map: names::VIPS })?;
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
