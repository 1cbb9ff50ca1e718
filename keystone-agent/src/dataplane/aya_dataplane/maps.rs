//! The program's maps, typed, behind [`MapWriter`].

use std::os::fd::AsFd;

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use keystone_common::{
    Backend, Endpoint, L4Counters, ReverseNat, TrafficCounters, VipAddr, VipInfo, names,
};

use crate::dataplane::{LoadError, MapAccessError, tables::MapWriter};

/// The program's maps, typed.
pub struct AyaMaps {
    vips: HashMap<MapData, Endpoint, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddr, u32>,
    filter: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    reverse: HashMap<MapData, Endpoint, ReverseNat>,
    pub(super) vip_stats: PerCpuArray<MapData, TrafficCounters>,
    pub(super) backend_stats: PerCpuArray<MapData, TrafficCounters>,
    pub(super) backend_l4: PerCpuArray<MapData, L4Counters>,
    pub(super) action_stats: PerCpuArray<MapData, u64>,
    pub(super) reason_stats: PerCpuArray<MapData, u64>,
    pub(super) event_stats: PerCpuArray<MapData, u64>,
}

pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoadError> {
    ebpf.take_map(name)
        .ok_or(LoadError::MissingMap { map: name })
}

pub(super) fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    Ok(T::try_from(take(ebpf, name)?).map_err(|source| MapAccessError { map: name, source })?)
}

pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> MapAccessError {
    move |source| MapAccessError { map, source }
}

impl AyaMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
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

pub(super) fn zeroed_per_cpu<T: aya::Pod + Default>(
    map: &'static str,
) -> Result<PerCpuValues<T>, MapAccessError> {
    let cpus = nr_cpus().map_err(|(_, e)| MapAccessError {
        map,
        source: MapError::IoError(e),
    })?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| MapAccessError {
        map,
        source: MapError::IoError(e),
    })
}

impl MapWriter for AyaMaps {
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, MapAccessError> {
        self.vips
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIPS))
    }

    fn read_backends(&self) -> Result<Vec<Backend>, MapAccessError> {
        (0..self.backends.len())
            .map(|i| self.backends.get(&i, 0).map_err(map_err(names::BACKENDS)))
            .collect()
    }

    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, MapAccessError> {
        self.reverse
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::REVERSE))
    }

    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, MapAccessError> {
        self.vip_addrs
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIP_ADDRS))
    }

    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, MapAccessError> {
        (base..base + len)
            .map(|i| self.rings.get(&i, 0).map_err(map_err(names::RINGS)))
            .collect()
    }

    fn read_filter(&self) -> Result<Vec<u32>, MapAccessError> {
        self.filter
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ADDR_FILTER))
    }

    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), MapAccessError> {
        self.filter
            .set(index, word, 0)
            .map_err(map_err(names::ADDR_FILTER))
    }

    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), MapAccessError> {
        self.vips.insert(vip, info, 0).map_err(map_err(names::VIPS))
    }

    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), MapAccessError> {
        ignore_missing(self.vips.remove(vip)).map_err(map_err(names::VIPS))
    }

    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), MapAccessError> {
        self.vip_addrs
            .insert(addr, count, 0)
            .map_err(map_err(names::VIP_ADDRS))
    }

    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), MapAccessError> {
        ignore_missing(self.vip_addrs.remove(addr)).map_err(map_err(names::VIP_ADDRS))
    }

    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), MapAccessError> {
        self.backends
            .set(slot, backend, 0)
            .map_err(map_err(names::BACKENDS))
    }

    fn set_ring_entries(&mut self, indexes: &[u32], slots: &[u32]) -> Result<(), MapAccessError> {
        let fd = IterableMap::map(&self.rings).fd().as_fd();
        crate::dataplane::map_batch::update(fd, indexes, slots).map_err(|e| MapAccessError {
            map: names::RINGS,
            source: MapError::IoError(e),
        })
    }

    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), MapAccessError> {
        self.reverse
            .insert(backend, rev, 0)
            .map_err(map_err(names::REVERSE))
    }

    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), MapAccessError> {
        ignore_missing(self.reverse.remove(backend)).map_err(map_err(names::REVERSE))
    }

    fn reset_vip_stats(&mut self, index: u32) -> Result<(), MapAccessError> {
        let zero = zeroed_per_cpu(names::VIP_STATS)?;
        self.vip_stats
            .set(index, zero, 0)
            .map_err(map_err(names::VIP_STATS))
    }

    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), MapAccessError> {
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

pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
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
