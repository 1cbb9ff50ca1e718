//! Blue/green flips this gateway validated but could not write to etcd (see
//! `rollout::flip`): `keystone_fleet_flip_waiting{tenant}` is 1 while one waits and
//! `keystone_fleet_flip_refused_total{tenant}` counts the refused writes.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus::{
    IntCounterVec, IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

pub struct FlipWaits {
    /// Deployment id → tenant of each flip that waits. A leaf lock.
    waiting: Mutex<BTreeMap<String, String>>,
    gauge: IntGaugeVec,
    refused: IntCounterVec,
}

impl Default for FlipWaits {
    fn default() -> FlipWaits {
        FlipWaits::new()
    }
}

impl FlipWaits {
    pub fn new() -> FlipWaits {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        FlipWaits {
            waiting: Mutex::new(BTreeMap::new()),
            gauge: IntGaugeVec::new(
                opts(
                    "keystone_fleet_flip_waiting",
                    "1 while a blue/green flip this gateway validated waits for etcd to take it (the gateway keeps the old side).",
                ),
                &["tenant"],
            )
            .expect("valid gauge"),
            refused: IntCounterVec::new(
                opts(
                    "keystone_fleet_flip_refused_total",
                    "Blue/green flip writes the fleet refused (each retry of a waiting flip counts).",
                ),
                &["tenant"],
            )
            .expect("valid counter"),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.waiting.lock().expect("flip waits lock poisoned")
    }

    /// Counts a refused flip write of deployment `id` of `tenant`; true if the flip
    /// starts waiting with it (the first refusal).
    pub fn refused(&self, id: &str, tenant: &str) -> bool {
        self.refused.with_label_values(&[tenant]).inc();
        let first = self
            .waiting()
            .insert(id.to_owned(), tenant.to_owned())
            .is_none();
        self.gauge.with_label_values(&[tenant]).set(1);
        first
    }

    /// Deployment `id`'s flip no longer waits (made, or nothing left to flip); true
    /// if it was waiting.
    pub fn settled(&self, id: &str) -> bool {
        let Some(tenant) = self.waiting().remove(id) else {
            return false;
        };
        self.gauge.with_label_values(&[&tenant]).set(0);
        true
    }

    pub fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.gauge.desc();
        descs.extend(self.refused.desc());
        descs
    }

    pub fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.gauge.collect();
        families.extend(self.refused.collect());
        families
    }
}
