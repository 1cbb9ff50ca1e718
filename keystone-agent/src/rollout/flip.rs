//! Blue/green validation and the flip it lets happen: the idle side is probed (see
//! `validation`), then the switch moves to it. In a fleet the flip is the fleet's:
//! it is written to etcd first, and a gateway that cannot write it keeps the old side,
//! validates again every [`FLIP_RETRY`] and flips once the fleet takes the flip (or
//! another gateway's change made it moot). The wait is shown by
//! `keystone_fleet_flip_waiting{tenant}` and logged once when it starts and once when
//! the flip is made.

use std::{sync::Arc, time::Duration};

use super::Rollouts;
use crate::{
    clock::unix_now, config::Strategy, deploy::DeployState, deploy::TrafficPlan,
    validation::Validation,
};

/// Backoff before a gateway that could not share a blue/green flip with the fleet
/// validates and tries again.
const FLIP_RETRY: Duration = Duration::from_secs(1);

impl Rollouts {
    /// Validates again every saved switch whose idle side was not validated yet;
    /// called once at start.
    pub(super) fn resume_validations(self: &Arc<Self>) {
        let pending: Vec<String> = self
            .runtime()
            .deployments
            .iter()
            .filter(|d| {
                d.state == DeployState::Progressing
                    && d.strategy == Strategy::BlueGreen
                    && !d.validated
            })
            .map(|d| d.id.clone())
            .collect();
        for id in pending {
            self.spawn_validation(id);
        }
    }

    /// Validates the new side of switch `id` (see `validation`), then lets it flip.
    pub(super) fn spawn_validation(self: &Arc<Self>, id: String) {
        let rollouts = self.clone();
        tokio::spawn(async move {
            let Some(validation) = rollouts.validation(&id) else {
                // The switch or its tenant is gone (e.g. a reload dropped it).
                rollouts.flip_settled(&id);
                return;
            };
            let result = validation.run().await;
            rollouts.validation_done(&id, result);
        });
    }

    fn validation(&self, id: &str) -> Option<Validation> {
        let runtime = self.runtime();
        let d = runtime.deployments.iter().find(|d| d.id == id)?;
        Validation::of(&self.live.get(), d, unix_now())
    }

    fn validation_done(self: &Arc<Self>, id: &str, result: Result<(), String>) {
        let mut runtime = self.runtime();
        let before = runtime.clone();
        let Some(d) = runtime.deployments.iter_mut().find(|d| d.id == id) else {
            drop(runtime);
            self.flip_settled(id);
            return;
        };
        let events = d.validation_done(unix_now(), result);
        if events.is_empty() {
            // Not progressing any more, or validated elsewhere: nothing left to flip.
            drop(runtime);
            self.flip_settled(id);
            return;
        }
        let plan = TrafficPlan::of(d);
        let tenant = d.tenant.clone();
        runtime.plans.insert(tenant.clone(), plan);
        // In a fleet the flip is made in etcd first: a gateway that cannot write it
        // must not flip alone (the others would keep the old side). It validates
        // again and retries until the fleet takes the flip or another gateway has.
        let shared = match &self.fleet {
            Some(fleet) => match fleet.write_state(&runtime) {
                Ok(revision) => Some((fleet, revision)),
                Err(e) => {
                    *runtime = before;
                    drop(runtime);
                    if fleet.flips().refused(id, &tenant) {
                        tracing::warn!(deployment = id, tenant, error = %e, "the blue/green flip waits for the fleet; validating again every {:?} (keystone_fleet_flip_waiting)", FLIP_RETRY);
                    }
                    self.retry_validation(id.to_owned());
                    return;
                }
            },
            None => None,
        };
        if let Err(e) = self.reconcile(&runtime) {
            tracing::error!(error = %e, "cannot apply a blue/green flip to the data plane");
        }
        if let Some((fleet, revision)) = shared {
            self.confirm(fleet, revision);
            if fleet.flips().settled(id) {
                tracing::info!(
                    deployment = id,
                    tenant,
                    revision,
                    "the blue/green flip that waited for the fleet is made"
                );
            }
        }
        let _ = self.persist(&runtime);
        self.publish(&runtime, &events);
    }

    /// Switch `id` has nothing left to flip: it no longer waits for the fleet.
    fn flip_settled(&self, id: &str) {
        if let Some(fleet) = &self.fleet
            && fleet.flips().settled(id)
        {
            tracing::info!(
                deployment = id,
                "the blue/green flip no longer waits for the fleet (the switch moved on or is gone)"
            );
        }
    }

    /// [`Self::spawn_validation`] again after [`FLIP_RETRY`] (a backoff, not a wait
    /// for anything: the validation itself checks the idle side again).
    fn retry_validation(self: &Arc<Self>, id: String) {
        let rollouts = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FLIP_RETRY).await;
            rollouts.spawn_validation(id);
        });
    }
}
