//! `keystone_fleet_leader`, `keystone_fleet_stale`, `keystone_fleet_applied_revision`
//! and `keystone_fleet_config_mismatch`, read from the fleet's view at scrape time,
//! and the flip waits of `flips`.

use std::sync::Arc;

use prometheus::{
    IntGauge,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::Fleet;

pub struct FleetCollector {
    fleet: Arc<Fleet>,
    leader: IntGauge,
    stale: IntGauge,
    applied: IntGauge,
    mismatch: IntGauge,
}

impl FleetCollector {
    pub fn new(fleet: Arc<Fleet>) -> FleetCollector {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid gauge");
        FleetCollector {
            fleet,
            leader: gauge(
                "keystone_fleet_leader",
                "1 while this gateway leads the fleet (ticks its deployments).",
            ),
            stale: gauge(
                "keystone_fleet_stale",
                "1 while this gateway is not in step with the fleet (etcd unreachable, data refused); status.fleet.stale_reason says why.",
            ),
            applied: gauge(
                "keystone_fleet_applied_revision",
                "The etcd revision of the fleet's desired state this gateway's maps hold.",
            ),
            mismatch: gauge(
                "keystone_fleet_config_mismatch",
                "Tenants whose config differs between live members (their deployments are not advanced); status.fleet.config_mismatch says how.",
            ),
        }
    }
}

impl FleetCollector {
    fn gauges(&self) -> [&IntGauge; 4] {
        [&self.leader, &self.stale, &self.applied, &self.mismatch]
    }
}

impl Collector for FleetCollector {
    fn desc(&self) -> Vec<&Desc> {
        let gauges = self.gauges().into_iter().flat_map(|g| g.desc());
        gauges.chain(self.fleet.flips().desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.leader.set(i64::from(self.fleet.is_leader()));
        self.stale
            .set(i64::from(self.fleet.stale_reason().is_some()));
        self.applied.set(self.fleet.applied_revision());
        self.mismatch.set(self.fleet.config_mismatch().len() as i64);
        let gauges = self.gauges().into_iter().flat_map(|g| g.collect());
        gauges.chain(self.fleet.flips().collect()).collect()
    }
}
