//! The rollout controller: owns the persisted runtime (deployments and traffic plans)
//! behind the `runtime` lock, its persistence, blue/green drains, the analysis inputs
//! and the notifications. Every change goes runtime → (config read) → reconciler, so
//! the data plane is only written with the runtime lock held.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
};

use keystone_api::{CanaryRequest, EventKind, SwitchRequest};

use crate::{
    clock::unix_now,
    config::{LoadedConfig, PrometheusQuery, Strategy},
    dataplane::{ApplyError, Counters, Dataplane},
    deploy::{self, Action, Actor, DeployState, Deployment, TrafficPlan},
    deploy_metrics::DeploymentMetrics,
    errors::{DeployError, ReloadError, invalid},
    health::HealthChecker,
    live::LiveConfig,
    notify::Notifier,
    persist::{File, Persistence},
    reconcile::Reconciler,
    store::{PersistedState, StoreError},
    strategy::{self, check_not_running},
    validation::Validation,
};

pub struct Rollouts {
    /// Deployments and traffic plans: what is persisted.
    runtime: Mutex<PersistedState>,
    /// Blue/green switches whose old side has been drained out of the data plane.
    drained: Mutex<BTreeSet<String>>,
    /// Latest value of each active deployment's Prometheus query, by deployment id.
    prometheus: Mutex<BTreeMap<String, Option<f64>>>,
    persistence: Persistence,
    notifier: Notifier,
    metrics: Arc<DeploymentMetrics>,
    /// What the controller reconciles against (shared with the agent).
    live: Arc<LiveConfig>,
    reconciler: Arc<Reconciler>,
    health: Arc<HealthChecker>,
}

/// With the saved plans lost, keeps what the pinned data plane forwards (e.g. a
/// finished switch) as manual weights, saved at once, instead of the config's.
pub fn keep_pinned_split(
    config: &LoadedConfig,
    dataplane: &dyn Dataplane,
    persistence: &Persistence,
    state: &mut PersistedState,
) {
    let shares = dataplane.live_shares().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read the pinned data plane's tables back");
        Vec::new()
    });
    state.plans = crate::recover::plans(config, &shares);
    if state.plans.is_empty() {
        persistence.recovered_with("started from the config alone");
        return;
    }
    let tenants: Vec<&str> = state.plans.keys().map(String::as_str).collect();
    persistence.recovered_with(&format!(
        "kept the split the pinned data plane was forwarding as manual weights for \
         tenant(s) {}",
        tenants.join(", ")
    ));
    // A failure is counted and shown; the split still holds until the next restart.
    let _ = persistence.save_state(state);
}

impl Rollouts {
    pub fn new(
        state: PersistedState,
        persistence: Persistence,
        metrics: Arc<DeploymentMetrics>,
        live: Arc<LiveConfig>,
        reconciler: Arc<Reconciler>,
        health: Arc<HealthChecker>,
    ) -> Rollouts {
        Rollouts {
            runtime: Mutex::new(state),
            drained: Mutex::new(BTreeSet::new()),
            prometheus: Mutex::new(BTreeMap::new()),
            persistence,
            notifier: Notifier::new(&live.get().config.notifications),
            metrics,
            live,
            reconciler,
            health,
        }
    }

    /// Programs the data plane with the restored deployments and resumes their
    /// validations; called once at start.
    pub fn resume(self: &Arc<Self>) -> Result<(), ApplyError> {
        {
            let runtime = self.runtime();
            let resumed: Vec<String> = runtime
                .deployments
                .iter()
                .filter(|d| d.state.is_running())
                .map(|d| format!("{} ({} at {}%)", d.id, d.state.name(), d.canary_percent))
                .collect();
            if !resumed.is_empty() {
                tracing::info!(deployments = ?resumed, "resuming saved deployments");
            }
            self.reconcile(&runtime)?;
        }
        self.save_config_copy();
        self.resume_validations();
        Ok(())
    }

    fn runtime(&self) -> MutexGuard<'_, PersistedState> {
        self.runtime.lock().expect("runtime lock poisoned")
    }

    /// Reads the runtime (deployments and plans) under its lock.
    pub fn with_state<R>(&self, read: impl FnOnce(&PersistedState) -> R) -> R {
        read(&self.runtime())
    }

    /// The agent's files: saved or not, and why.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Makes the data plane match the live config, `runtime` and health.
    fn reconcile(&self, runtime: &PersistedState) -> Result<(), ApplyError> {
        self.reconciler
            .reconcile(&self.live.get(), runtime, &self.health)
    }

    /// Saves deployments and plans; a failure is counted and shown (see `persist`).
    fn persist(&self, runtime: &PersistedState) -> Result<(), StoreError> {
        self.persistence.save_state(runtime)
    }

    /// Makes a change to deployments or plans final: saves it, then makes the data
    /// plane match. If either fails, `before` is put back, so a change is live only
    /// when it is saved too.
    fn commit(
        &self,
        runtime: &mut PersistedState,
        before: PersistedState,
    ) -> Result<(), DeployError> {
        if let Err(e) = self.persist(runtime) {
            *runtime = before;
            return Err(DeployError::Unsaved(e));
        }
        if let Err(e) = self.reconcile(runtime) {
            *runtime = before;
            let _ = self.persist(runtime);
            return Err(e.into());
        }
        Ok(())
    }

    /// Logs, counts and sends the events.
    fn publish(&self, runtime: &PersistedState, events: &[deploy::Event]) {
        for event in events {
            let Some(d) = runtime
                .deployments
                .iter()
                .find(|d| d.id == event.deployment_id)
            else {
                continue;
            };
            tracing::info!(
                deployment = %d.id, tenant = %d.tenant, event = %event.kind, state = d.state.name(),
                canary_percent = d.canary_percent,
                reason = d.history.last().map(|s| s.reason.as_str()).unwrap_or(""),
                "deployment event"
            );
            self.metrics.record(d, event.kind);
            self.notifier.notify(
                event.kind,
                serde_json::to_value(d.view()).expect("deployment serialises"),
            );
        }
    }

    /// Keeps a copy of the live config's text beside the state.
    pub fn save_config_copy(&self) {
        let Some(store) = self.persistence.store() else {
            return;
        };
        let text = &self.live.get().source;
        let _ = self
            .persistence
            .record(File::Config, store.save_config(text));
    }

    /// Re-applies after a health change, and saves the health for the next agent.
    pub fn health_changed(&self) {
        let runtime = self.runtime();
        if let Err(e) = self.reconcile(&runtime) {
            tracing::error!(error = %e, "cannot apply a health change to the data plane");
        }
        drop(runtime);
        self.persistence.save_health(self.health.known());
    }

    /// Makes `new` the live config: what it does to deployments (see `outcome`) is
    /// saved, and the data plane programmed, before it goes live; on any failure the
    /// running config and runtime stay as they were. Returns the conflicts with
    /// live outcomes.
    pub fn adopt(&self, new: Arc<LoadedConfig>) -> Result<Vec<String>, ReloadError> {
        let old = self.live.get();
        let mut runtime = self.runtime();
        let before = runtime.clone();
        let effects = crate::outcome::after_reload(&old, &new, &mut runtime, unix_now());
        let changed = *runtime != before;
        if changed && let Err(e) = self.persist(&runtime) {
            *runtime = before;
            return Err(ReloadError::Unsaved(e));
        }
        if let Err(e) = self.reconciler.reconcile(&new, &runtime, &self.health) {
            // Put back what was live; a half-applied change must not linger.
            *runtime = before;
            if changed {
                let _ = self.persist(&runtime);
            }
            if let Err(restore) = self.reconcile(&runtime) {
                tracing::error!(error = %restore, "could not restore the previous config in the data plane");
            }
            return Err(ReloadError::Dataplane(e));
        }
        self.live.replace(new.clone());
        self.notifier.update_targets(&new.config.notifications);
        self.publish(&runtime, &effects.events);
        Ok(effects.conflicts)
    }

    /// Advances every active deployment; called every `TICK`.
    pub fn tick(&self) {
        let counters = self.reconciler.counters().ok();
        let config = self.live.get();
        let mut runtime = self.runtime();
        let now = unix_now();
        let (events, mut changed) = self.advance(&config, &mut runtime, counters.as_ref(), now);
        // A blue/green drain deadline passing changes the desired state once.
        let drains_due = self.drains_due(&runtime, now);
        // A save that failed is tried again (at most once a second) until it works.
        changed |= self.persistence.state_retry_due();
        if events.is_empty() {
            if changed {
                let _ = self.persist(&runtime);
            }
            if !drains_due.is_empty() {
                tracing::info!(deployments = ?drains_due, "drain timeout passed: old side taken out");
                if let Err(e) = self.reconcile(&runtime) {
                    tracing::error!(error = %e, "cannot apply a drain to the data plane");
                    return;
                }
                self.drained().extend(drains_due);
            }
            return;
        }
        self.drained().extend(drains_due);
        if let Err(e) = self.reconcile(&runtime) {
            tracing::error!(error = %e, "cannot apply a deployment step to the data plane");
        }
        let _ = self.persist(&runtime);
        self.publish(&runtime, &events);
    }

    /// Ticks every active deployment with its signals; returns the events and whether
    /// any history grew.
    fn advance(
        &self,
        config: &LoadedConfig,
        runtime: &mut PersistedState,
        counters: Option<&Counters>,
        now: f64,
    ) -> (Vec<deploy::Event>, bool) {
        let mut events = Vec::new();
        let mut changed = false;
        for d in runtime.deployments.iter_mut() {
            if !d.state.is_running() {
                continue;
            }
            let signals = match config.tenants.iter().find(|t| t.name == d.tenant) {
                Some(tenant) => {
                    let prometheus = self.prometheus_value(&d.id);
                    crate::analysis::signals(tenant, d, &self.health, prometheus, counters)
                }
                None => Default::default(),
            };
            // Persist when the history grows (a step or a hold), not on every fresh
            // analysis: that would fsync ten times a second during a rollout.
            let before = d.history.len();
            let new = d.tick(now, &signals);
            changed |= before != d.history.len();
            if !new.is_empty() {
                runtime.plans.insert(d.tenant.clone(), TrafficPlan::of(d));
                events.extend(new);
            }
        }
        (events, changed)
    }

    fn drained(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.drained.lock().expect("drained lock poisoned")
    }

    /// Blue/green switches whose drain deadline has passed but not yet been applied.
    fn drains_due(&self, runtime: &PersistedState, now: f64) -> Vec<String> {
        runtime
            .deployments
            .iter()
            .filter(|d| d.stable_backends.iter().any(|s| d.drained(s, now)))
            .map(|d| d.id.clone())
            .filter(|id| !self.drained().contains(id))
            .collect()
    }

    fn prometheus_value(&self, id: &str) -> Option<f64> {
        self.prometheus
            .lock()
            .expect("prometheus lock poisoned")
            .get(id)
            .copied()
            .flatten()
    }

    /// Runs the Prometheus query of every active deployment that has one and keeps
    /// the latest values for `tick`; called about once a second. Blocking (HTTP).
    pub fn poll_prometheus(&self) {
        let queries: Vec<(String, PrometheusQuery, String, String)> = self
            .runtime()
            .deployments
            .iter()
            .filter(|d| d.state.is_running())
            .filter_map(|d| {
                let q = d.params.prometheus.clone()?;
                Some((
                    d.id.clone(),
                    q,
                    d.tenant.clone(),
                    d.version.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let mut results = BTreeMap::new();
        for (id, query, tenant, version) in queries {
            let value = match crate::analysis::prometheus_value(&query, &tenant, &version) {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "Prometheus analysis query failed");
                    None
                }
            };
            results.insert(id, value);
        }
        *self.prometheus.lock().expect("prometheus lock poisoned") = results;
    }

    /// Starts a canary (see [`strategy::canary`]).
    pub fn start_canary(
        &self,
        req: CanaryRequest,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        let (runtime, start) = self.build_start(
            // Owned copies: `req` itself moves into the builder.
            req.pipeline.clone().as_ref(),
            &req.service.clone(),
            |tenant, runtime| strategy::canary(tenant, runtime, req),
        )?;
        self.launch(runtime, start, "started", actor)
    }

    /// Starts a blue/green switch (see [`strategy::switch`]): validate, then flip.
    pub fn start_switch(
        self: &Arc<Self>,
        req: SwitchRequest,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        let (runtime, start) = self.build_start(
            // Owned copies: `req` itself moves into the builder.
            req.pipeline.clone().as_ref(),
            &req.service.clone(),
            |tenant, runtime| strategy::switch(tenant, runtime, req),
        )?;
        let d = self.launch(runtime, start, "started; validating the idle side", actor)?;
        self.spawn_validation(d.id.clone());
        Ok(d)
    }

    /// Records, applies, persists and announces a new deployment.
    /// What every start does first: checks the pipeline object, finds the tenant in
    /// the live config and builds the start under the runtime lock (returned held).
    fn build_start(
        &self,
        pipeline: Option<&serde_json::Value>,
        service: &str,
        build: impl FnOnce(
            &crate::config::ResolvedTenant,
            &PersistedState,
        ) -> Result<deploy::Start, DeployError>,
    ) -> Result<(MutexGuard<'_, PersistedState>, deploy::Start), DeployError> {
        deploy::check_pipeline(pipeline).map_err(|e| invalid("pipeline", e))?;
        let config = self.live.get();
        let tenant = strategy::tenant(&config, service, "service")?;
        let runtime = self.runtime();
        let start = build(tenant, &runtime)?;
        Ok((runtime, start))
    }

    fn launch(
        &self,
        mut runtime: MutexGuard<'_, PersistedState>,
        start: deploy::Start,
        reason: &str,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        runtime.next_seq += 1;
        let d = Deployment::new(start, runtime.next_seq, unix_now(), reason, actor);
        let before = runtime.clone();
        runtime.plans.insert(d.tenant.clone(), TrafficPlan::of(&d));
        runtime.deployments.push(d.clone());
        let overflow = runtime
            .deployments
            .len()
            .saturating_sub(deploy::HISTORY_LIMIT);
        if overflow > 0 {
            // Drop the oldest finished ones.
            let mut dropped = 0;
            runtime.deployments.retain(|x| {
                let drop = dropped < overflow && !x.state.is_running();
                dropped += usize::from(drop);
                !drop
            });
        }
        self.commit(&mut runtime, before)?;
        let event = deploy::Event {
            deployment_id: d.id.clone(),
            kind: EventKind::Started,
        };
        self.publish(&runtime, std::slice::from_ref(&event));
        Ok(d)
    }

    fn resume_validations(self: &Arc<Self>) {
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
    fn spawn_validation(self: &Arc<Self>, id: String) {
        let rollouts = self.clone();
        tokio::spawn(async move {
            let Some(validation) = rollouts.validation(&id) else {
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

    fn validation_done(&self, id: &str, result: Result<(), String>) {
        let mut runtime = self.runtime();
        let Some(d) = runtime.deployments.iter_mut().find(|d| d.id == id) else {
            return;
        };
        let events = d.validation_done(unix_now(), result);
        if events.is_empty() {
            return;
        }
        let plan = TrafficPlan::of(d);
        let tenant = d.tenant.clone();
        runtime.plans.insert(tenant, plan);
        if let Err(e) = self.reconcile(&runtime) {
            tracing::error!(error = %e, "cannot apply a blue/green flip to the data plane");
        }
        let _ = self.persist(&runtime);
        self.publish(&runtime, &events);
    }

    /// promote / abort / rollback / pause / resume, by `actor`.
    pub fn act(&self, id: &str, action: Action, actor: Actor) -> Result<Deployment, DeployError> {
        let mut runtime = self.runtime();
        let i = runtime
            .deployments
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| DeployError::UnknownDeployment { id: id.to_owned() })?;
        let tenant = runtime.deployments[i].tenant.clone();
        if action == Action::Rollback
            && let Some(newer) = runtime.deployments[i + 1..]
                .iter()
                .find(|d| d.tenant == tenant)
        {
            return Err(DeployError::NotAllowed {
                reason: format!(
                    "deployment {} of the same tenant is newer; roll that one back instead",
                    newer.id
                ),
            });
        }
        let before = runtime.clone();
        let d = &mut runtime.deployments[i];
        let event = d
            .act(unix_now(), action, actor)
            .map_err(|reason| DeployError::NotAllowed { reason })?;
        let plan = TrafficPlan::of(d);
        let d = d.clone();
        runtime.plans.insert(tenant, plan);
        self.commit(&mut runtime, before)?;
        self.publish(&runtime, &[event]);
        Ok(d)
    }

    /// Newest first.
    pub fn deployments(&self) -> Vec<Deployment> {
        let mut list = self.runtime().deployments.clone();
        list.reverse();
        list
    }

    pub fn deployment(&self, id: &str) -> Result<Deployment, DeployError> {
        self.runtime()
            .deployments
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| DeployError::UnknownDeployment { id: id.to_owned() })
    }

    /// Manual weights for a tenant, until the next deployment or new weights (a
    /// reload keeps them, see `outcome`).
    pub fn set_weights(
        &self,
        tenant: &str,
        weights: BTreeMap<String, u32>,
    ) -> Result<(), DeployError> {
        let config = self.live.get();
        let t = strategy::tenant(&config, tenant, "tenant")?;
        for (name, w) in &weights {
            if !t.services.iter().any(|s| &s.name == name) {
                return Err(invalid(
                    format!("weights.{name}"),
                    format!("tenant '{tenant}' has no service '{name}'"),
                ));
            }
            crate::config::check_weight(*w)
                .map_err(|reason| invalid(format!("weights.{name}"), reason))?;
        }
        crate::config::check_not_all_zero(weights.values().copied())
            .map_err(|reason| invalid("weights", reason))?;
        let mut runtime = self.runtime();
        check_not_running(&runtime, tenant)?;
        let before = runtime.clone();
        runtime.plans.insert(
            tenant.to_owned(),
            TrafficPlan::Manual {
                weights,
                reason: None,
            },
        );
        self.commit(&mut runtime, before)
    }
}
