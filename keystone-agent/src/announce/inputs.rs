//! The decision's inputs, gathered from the running config, health and data plane.

use keystone_common::Endpoint;

use super::{Health, Inputs, Table, TenantInput};
use crate::{
    config::LoadedConfig,
    dataplane::{Counters, tables::table_hash},
    health::{HealthChecker, HealthState},
};

/// Every tenant's address, table and backends' health; `counters` is `None` when the
/// data plane could not be read (every table then counts as missing).
pub fn gather(
    config: &LoadedConfig,
    health: &HealthChecker,
    counters: Option<&Counters>,
) -> Inputs {
    let empty = table_hash(std::iter::empty());
    let table_of = |vip: &Endpoint| match counters
        .and_then(|c| c.table_hashes.iter().find(|(v, _)| v == vip))
    {
        None => Table::Missing,
        Some((_, hash)) if *hash == empty => Table::Empty,
        Some(_) => Table::Live,
    };
    let tenants = config
        .tenants
        .iter()
        .map(|t| TenantInput {
            address: t.vip.ip(),
            table: table_of(&t.vip_endpoint()),
            backends: t
                .services
                .iter()
                .map(|s| match (&s.health, health.get(&t.name, &s.name)) {
                    (None, _) => Health::Up,
                    (Some(_), None) => Health::Unknown,
                    (Some(_), Some(h)) => match h.state {
                        HealthState::Up => Health::Up,
                        HealthState::Down => Health::Down,
                        HealthState::Unknown => Health::Unknown,
                    },
                })
                .collect(),
        })
        .collect();
    let new_connections = counters.map_or(0, |c| {
        config
            .tenants
            .iter()
            .filter_map(|t| c.vips.iter().find(|(v, _)| *v == t.vip_endpoint()))
            .map(|(_, traffic)| traffic.new_flows)
            .sum()
    });
    Inputs {
        tenants,
        new_connections,
    }
}
