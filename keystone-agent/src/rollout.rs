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
    config::{LoadedConfig, PrometheusQuery},
    dataplane::{ApplyError, Counters, Dataplane},
    deploy::{self, Action, Actor, Deployment, TrafficPlan},
    deploy_metrics::DeploymentMetrics,
    errors::{DeployError, invalid},
    fleet::{Fleet, FleetError},
    health::HealthChecker,
    live::LiveConfig,
    notify::Notifier,
    persist::{File, Persistence},
    reconcile::Reconciler,
    store::{PersistedState, StoreError},
    strategy::{self, check_not_running},
};

mod flip;
mod plans;
mod reload_effects;

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
    /// The fleet this gateway shares deployments and plans with, if any (see `fleet`).
    fleet: Option<Arc<Fleet>>,
}

/// How often a change is built again on the fleet's newer state after another
/// gateway's write won the compare-and-swap.
const CONFLICT_RETRIES: usize = 3;

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
            fleet: None,
        }
    }

    /// Shares deployments and plans with `fleet` (see `fleet`).
    pub fn in_fleet(mut self, fleet: Option<Arc<Fleet>>) -> Rollouts {
        if let Some(fleet) = &fleet {
            fleet.set_config(&self.live.get());
        }
        self.fleet = fleet;
        self
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

    /// Makes a change to deployments or plans final: saves it and makes the data
    /// plane match at once (the kernel's write does not wait for the fsync; the
    /// caller's answer waits for both, so an answered change is saved). If either
    /// fails, `before` is put back: in the file and in the data plane, which held an
    /// unsaved change only for as long as its save took to fail.
    fn commit(
        &self,
        runtime: &mut PersistedState,
        before: PersistedState,
    ) -> Result<(), DeployError> {
        crate::change_timing::lap("check");
        // In a fleet the change is made in etcd first: a refused write changes nothing.
        let shared = match &self.fleet {
            Some(fleet) => match fleet.write_state(runtime) {
                Ok(revision) => Some((fleet, revision)),
                Err(e) => {
                    *runtime = before;
                    return Err(e.into());
                }
            },
            None => None,
        };
        if shared.is_some() {
            crate::change_timing::lap("etcd");
        }
        let (saved, applied) = crate::change_timing::save_while_applying(
            || self.persist(runtime),
            || self.reconcile(runtime),
        );
        // In a fleet etcd holds the change: a failed local copy is counted and shown
        // (and saved again later), the change stands.
        if let Err(e) = saved
            && shared.is_none()
        {
            *runtime = before;
            if let Err(put_back) = self.reconcile(runtime) {
                tracing::error!(error = %put_back, "cannot put back the data plane after a failed save");
            }
            return Err(DeployError::Unsaved(e));
        }
        if let Err(e) = applied {
            *runtime = before;
            let _ = self.persist(runtime);
            return Err(e.into());
        }
        if let Some((fleet, revision)) = shared {
            self.confirm(fleet, revision);
        }
        Ok(())
    }

    /// Runs `change` (which commits), built again on the fleet's newer state when
    /// another gateway wrote first: of two starts for one tenant, the second then
    /// finds the first running.
    fn shared<R>(
        &self,
        mut change: impl FnMut() -> Result<R, DeployError>,
    ) -> Result<R, DeployError> {
        for _ in 0..CONFLICT_RETRIES {
            match change() {
                Err(DeployError::Fleet(FleetError::Conflict)) => self.catch_up()?,
                other => return other,
            }
        }
        change()
    }

    /// Reads the fleet's state now and makes it this gateway's.
    fn catch_up(&self) -> Result<(), DeployError> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        Ok(self.catch_up_held(fleet, &mut self.runtime())?)
    }

    /// [`Self::catch_up`] with the runtime lock already held.
    fn catch_up_held(&self, fleet: &Fleet, runtime: &mut PersistedState) -> Result<(), FleetError> {
        if let Some((revision, state)) = fleet.read_state()? {
            self.take_shared(fleet, runtime, revision, state);
        }
        Ok(())
    }

    /// Makes the fleet's desired state at `revision` this gateway's: the watch calls
    /// this for every new revision.
    pub fn apply_shared(&self, revision: i64, state: PersistedState) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let mut runtime = self.runtime();
        self.take_shared(fleet, &mut runtime, revision, state);
    }

    /// Programs `state` into the maps and confirms `revision`; on a refusal the
    /// previous state stays and nothing is confirmed.
    fn take_shared(
        &self,
        fleet: &Fleet,
        runtime: &mut PersistedState,
        revision: i64,
        state: PersistedState,
    ) {
        if revision <= fleet.applied_revision() {
            return;
        }
        let before = std::mem::replace(runtime, state);
        if let Err(e) = self.reconcile(runtime) {
            tracing::error!(error = %e, revision, "cannot apply the fleet's state to the data plane");
            *runtime = before;
            return;
        }
        // The local copy lets a restart without etcd forward the last applied split.
        let _ = self.persist(runtime);
        self.confirm(fleet, revision);
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
            self.notifier.notify(event.kind, d.view());
        }
    }

    /// At a clean stop, after the background tasks: delivers the queued deployment
    /// notifications within `grace` (see [`Notifier::flush`]).
    pub async fn flush_notifications(&self, grace: std::time::Duration) -> usize {
        self.notifier.flush(grace).await
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

    /// Advances every active deployment; called every `TICK`.
    pub fn tick(&self) {
        // Health saves only on a change: one that failed (disk full) is tried again.
        if self.persistence.retry_due(File::Health) {
            self.persistence.save_health(self.health.known());
        }
        let mut counters = self.reconciler.counters().ok();
        // Tenants whose config differs between members hold still (see `fleet`).
        let mut held = BTreeMap::new();
        if let Some(fleet) = &self.fleet {
            fleet.set_local(self.table_hashes(counters.as_ref()), counters.as_ref());
            // Only the leader advances, on the whole fleet's counters.
            if !fleet.may_advance() {
                return;
            }
            counters = Some(fleet.fleet_counters());
            held = fleet.config_mismatch();
        }
        let config = self.live.get();
        let mut runtime = self.runtime();
        let now = unix_now();
        let before = self.fleet.as_ref().map(|_| runtime.clone());
        let inputs = TickInputs {
            counters: counters.as_ref(),
            held: &held,
        };
        let (mut events, mut changed) = self.advance(&config, &mut runtime, inputs, now);
        // Plans see this tick's deployment outcomes at once.
        let (plan_events, plans_changed) = self.advance_plans(&config, &mut runtime, now);
        events.extend(plan_events);
        changed |= plans_changed;
        if let (Some(fleet), Some(before)) = (&self.fleet, before)
            && (changed || !events.is_empty())
        {
            match fleet.write_state(&runtime) {
                Ok(revision) => {
                    // Applied (again below with the drains, a no-op) before confirming.
                    if let Err(e) = self.reconcile(&runtime) {
                        tracing::error!(error = %e, "cannot apply a deployment step to the data plane");
                    }
                    self.confirm(fleet, revision);
                }
                Err(e) => {
                    // Not shared, so not done: the next tick tries again.
                    tracing::warn!(error = %e, "cannot share a deployment step with the fleet");
                    *runtime = before;
                    return;
                }
            }
        }
        // A blue/green drain deadline passing changes the desired state once.
        let drains_due = self.drains_due(&runtime, now);
        // A save that failed is tried again (at most once a second) until it works.
        changed |= self.persistence.retry_due(File::State);
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

    /// Ticks every active deployment with its signals (but those of `held` tenants);
    /// returns the events and whether any history grew.
    fn advance(
        &self,
        config: &LoadedConfig,
        runtime: &mut PersistedState,
        inputs: TickInputs<'_>,
        now: f64,
    ) -> (Vec<deploy::Event>, bool) {
        let mut events = Vec::new();
        let mut changed = false;
        for d in runtime.deployments.iter_mut() {
            if !d.state.is_running() || inputs.held.contains_key(&d.tenant) {
                continue;
            }
            let signals = match config.tenants.iter().find(|t| t.name == d.tenant) {
                Some(tenant) => {
                    let prometheus = self.prometheus_value(&d.id);
                    let counters = inputs.counters;
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

    /// Confirms to the fleet that the maps hold `revision`, with the tables' hashes
    /// as now written (so a confirmation never carries the previous table's hash).
    fn confirm(&self, fleet: &Fleet, revision: i64) {
        let counters = self.reconciler.counters().ok();
        fleet.set_local(self.table_hashes(counters.as_ref()), counters.as_ref());
        fleet.applied(revision);
    }

    /// Per tenant, the hash of the live table this gateway forwards with.
    fn table_hashes(&self, counters: Option<&Counters>) -> BTreeMap<String, String> {
        let Some(counters) = counters else {
            return BTreeMap::new();
        };
        self.live
            .get()
            .tenants
            .iter()
            .filter_map(|t| {
                let vip = t.vip_endpoint();
                let (_, hash) = counters.table_hashes.iter().find(|(v, _)| *v == vip)?;
                Some((t.name.clone(), hash.to_string()))
            })
            .collect()
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
        self.shared(|| {
            let req = req.clone();
            let (runtime, start) = self.build_start(
                // Owned copies: `req` itself moves into the builder.
                req.pipeline.clone().as_ref(),
                &req.service.clone(),
                |tenant, runtime| strategy::canary(tenant, runtime, req),
            )?;
            self.launch(runtime, start, "started", actor)
        })
    }

    /// Starts a blue/green switch (see [`strategy::switch`]): validate, then flip.
    pub fn start_switch(
        self: &Arc<Self>,
        req: SwitchRequest,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        let d = self.shared(|| {
            let req = req.clone();
            let (runtime, start) = self.build_start(
                // Owned copies: `req` itself moves into the builder.
                req.pipeline.clone().as_ref(),
                &req.service.clone(),
                |tenant, runtime| strategy::switch(tenant, runtime, req),
            )?;
            self.launch(runtime, start, "started; validating the idle side", actor)
        })?;
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
        let before = runtime.clone();
        let d = record_start(&mut runtime, start, unix_now(), reason, actor);
        self.commit(&mut runtime, before)?;
        let event = deploy::Event {
            deployment_id: d.id.clone(),
            kind: EventKind::Started,
        };
        self.publish(&runtime, std::slice::from_ref(&event));
        Ok(d)
    }

    /// promote / abort / rollback / pause / resume, by `actor`.
    pub fn act(&self, id: &str, action: Action, actor: Actor) -> Result<Deployment, DeployError> {
        self.shared(|| self.act_once(id, action, actor))
    }

    fn act_once(&self, id: &str, action: Action, actor: Actor) -> Result<Deployment, DeployError> {
        let mut runtime = self.runtime();
        let before = runtime.clone();
        let (d, event) = act_on(&mut runtime, id, action, actor, unix_now())?;
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
        // A set: one lookup per weight, not a scan of the services (1,000 × 1,000).
        let services: BTreeSet<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
        for (name, w) in &weights {
            if !services.contains(name.as_str()) {
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
        self.shared(|| {
            let mut runtime = self.runtime();
            check_not_running(&runtime, tenant)?;
            let before = runtime.clone();
            runtime.plans.insert(
                tenant.to_owned(),
                TrafficPlan::Manual {
                    weights: weights.clone(),
                    reason: None,
                },
            );
            self.commit(&mut runtime, before)
        })
    }
}

/// What one tick advances deployments on.
#[derive(Clone, Copy)]
struct TickInputs<'a> {
    /// Passive counters: this gateway's, or the fleet's summed.
    counters: Option<&'a Counters>,
    /// Tenants not advanced, with why (their config differs between members).
    held: &'a BTreeMap<String, String>,
}

/// Records a new deployment (and its traffic plan) in `runtime`, dropping the oldest
/// finished ones beyond the history limit; the caller commits.
fn record_start(
    runtime: &mut PersistedState,
    start: deploy::Start,
    now: f64,
    reason: &str,
    actor: Actor,
) -> Deployment {
    runtime.next_seq += 1;
    let d = Deployment::new(start, runtime.next_seq, now, reason, actor);
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
    d
}

/// promote / abort / rollback / pause / resume of deployment `id` in `runtime`; the
/// caller commits and publishes the event.
fn act_on(
    runtime: &mut PersistedState,
    id: &str,
    action: Action,
    actor: Actor,
    now: f64,
) -> Result<(Deployment, deploy::Event), DeployError> {
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
    let d = &mut runtime.deployments[i];
    let event = d
        .act(now, action, actor)
        .map_err(|reason| DeployError::NotAllowed { reason })?;
    let plan = TrafficPlan::of(d);
    let d = d.clone();
    runtime.plans.insert(tenant, plan);
    Ok((d, event))
}
