//! Per-CPU counters, summed.

use aya::maps::{MapData, PerCpuArray};
use keystone_common::{L4Counters, TrafficCounters, names};

use super::maps::map_err;
use crate::dataplane::MapAccessError;

pub(super) fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficCounters>,
    name: &'static str,
    index: u32,
) -> Result<TrafficCounters, MapAccessError> {
    let values = map
        .get(&index, 0)
        .map_err(|source| MapAccessError { map: name, source })?;
    let mut total = TrafficCounters::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

pub(super) fn sum_l4(
    map: &PerCpuArray<MapData, L4Counters>,
    index: u32,
) -> Result<L4Counters, MapAccessError> {
    let values = map.get(&index, 0).map_err(map_err(names::BACKEND_L4))?;
    let mut total = L4Counters::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

pub(super) fn sum_u64(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    index: u32,
) -> Result<u64, MapAccessError> {
    let values = map
        .get(&index, 0)
        .map_err(|source| MapAccessError { map: name, source })?;
    Ok(values.iter().sum())
}
