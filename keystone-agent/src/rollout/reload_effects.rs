//! What a reload does to deployments, made under the runtime lock (see `outcome`):
//! saved and applied before the new config goes live, and in a fleet written to etcd
//! first (built again on the fleet's newer state when another gateway wrote first).

use std::sync::Arc;

use super::{CONFLICT_RETRIES, Rollouts};
use crate::{
    clock::unix_now,
    config::LoadedConfig,
    errors::ReloadError,
    fleet::{Fleet, FleetError},
    outcome::ReloadEffects,
    store::PersistedState,
};

impl Rollouts {
    /// Makes `new` the live config: what it does to deployments (see `outcome`) is
    /// saved, and the data plane programmed, before it goes live; on any failure the
    /// running config and runtime stay as they were. Returns the conflicts with
    /// live outcomes.
    ///
    /// In a fleet what it does to deployments is written to etcd first (built again
    /// on the fleet's newer state when another gateway wrote first); a refused write
    /// refuses the reload.
    pub fn adopt(&self, new: Arc<LoadedConfig>) -> Result<Vec<String>, ReloadError> {
        let old = self.live.get();
        let mut runtime = self.runtime();
        let ReloadMade {
            before,
            effects,
            shared,
        } = self.reload_effects(&old, &new, &mut runtime)?;
        let changed = *runtime != before;
        if changed
            && let Err(e) = self.persist(&runtime)
            && shared.is_none()
        {
            *runtime = before;
            return Err(ReloadError::Unsaved(e));
        }
        if let Err(e) = self.reconciler.reconcile(&new, &runtime, &self.health) {
            // Put back what was live; a half-applied change must not linger.
            *runtime = before;
            if changed {
                let _ = self.persist(&runtime);
            }
            if let Some((fleet, _)) = shared
                && let Err(undo) = fleet.write_state(&runtime)
            {
                tracing::error!(error = %undo, "could not take the refused reload's changes back out of the fleet's state");
            }
            if let Err(restore) = self.reconcile(&runtime) {
                tracing::error!(error = %restore, "could not restore the previous config in the data plane");
            }
            return Err(ReloadError::Dataplane(e));
        }
        self.live.replace(new.clone());
        if let Some(fleet) = &self.fleet {
            fleet.set_config(&new);
        }
        if let Some((fleet, revision)) = shared {
            self.confirm(fleet, revision);
        }
        self.notifier.update_targets(&new.config.notifications);
        self.publish(&runtime, &effects.events);
        Ok(effects.conflicts)
    }

    /// What a reload from `old` to `new` does to `runtime` (see `outcome`), made:
    /// returns the runtime before it, the effects, and in a fleet the revision it
    /// was written as (a lost race reads the fleet's newer state, makes it this
    /// gateway's and builds the effects again on it).
    fn reload_effects(
        &self,
        old: &LoadedConfig,
        new: &LoadedConfig,
        runtime: &mut PersistedState,
    ) -> Result<ReloadMade<'_>, ReloadError> {
        let mut lost = 0;
        loop {
            let before = runtime.clone();
            let effects = crate::outcome::after_reload(old, new, runtime, unix_now());
            let fleet = match &self.fleet {
                Some(fleet) if *runtime != before => fleet,
                _ => {
                    let shared = None;
                    return Ok(ReloadMade {
                        before,
                        effects,
                        shared,
                    });
                }
            };
            match fleet.write_state(runtime) {
                Ok(revision) => {
                    let shared = Some((fleet.as_ref(), revision));
                    return Ok(ReloadMade {
                        before,
                        effects,
                        shared,
                    });
                }
                Err(FleetError::Conflict) if lost < CONFLICT_RETRIES => {
                    lost += 1;
                    *runtime = before;
                    self.catch_up_held(fleet, runtime)?;
                }
                Err(e) => {
                    *runtime = before;
                    return Err(e.into());
                }
            }
        }
    }
}

/// A reload's effects made on the runtime (see `Rollouts::reload_effects`).
struct ReloadMade<'a> {
    /// The runtime before them.
    before: PersistedState,
    effects: ReloadEffects,
    /// In a fleet, where they were written: the fleet and the revision.
    shared: Option<(&'a Fleet, i64)>,
}
