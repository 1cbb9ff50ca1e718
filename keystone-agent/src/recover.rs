//! After an unreadable `state.json`: the pinned data plane still forwards the split the
//! lost state asked for (a finished switch, manual weights), so the agent keeps that
//! split, as manual weights, rather than going back to the config's weights.

use std::collections::BTreeMap;

use keystone_common::Endpoint;

use crate::{
    config::{LoadedConfig, ProtocolNumber},
    dataplane::LiveShares,
    deploy::TrafficPlan,
};

/// The `reason` of the plans made here (status: "weights recovered from …").
pub const REASON: &str = "recovered from the pinned data plane";

/// A manual plan for each tenant whose VIP the data plane forwards to one of its
/// services: each service weighs the live table entries pointing at its address.
pub fn plans(config: &LoadedConfig, shares: &[LiveShares]) -> BTreeMap<String, TrafficPlan> {
    config
        .tenants
        .iter()
        .filter_map(|t| {
            let live = shares.iter().find(|s| s.vip == t.vip_endpoint())?;
            let weights: BTreeMap<String, u32> = t
                .services
                .iter()
                .map(|s| {
                    let endpoint = Endpoint::new(s.address, t.protocol.number());
                    let entries = live.entries.iter().find(|(e, _)| *e == endpoint);
                    (s.name.clone(), entries.map_or(0, |(_, n)| *n))
                })
                .collect();
            let plan = TrafficPlan::Manual {
                weights,
                reason: Some(REASON.to_owned()),
            };
            plan.sends_traffic().then(|| (t.name.clone(), plan))
        })
        .collect()
}
