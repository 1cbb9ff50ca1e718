//! The agent: a thin facade over the owners of its state, which the admin API, the
//! webhook, signals and the engine's ticker go through.
//!
//! - `live` — the running config (one `Arc<LoadedConfig>`, see [`crate::live`]);
//! - `rollouts` — deployments and traffic plans (see [`crate::rollout`]);
//! - `reconciler` — the data plane (see [`crate::reconcile`]);
//! - `health`, `samples` — health checks and the counter samples of the status views.
//!
//! Lock order: `reload_lock` → rollouts' `runtime` → reconciler's `dataplane`; the
//! others are leaves (each held briefly, never across an await).

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use keystone_api::{
    AnnounceStatus, CanaryRequest, Plan, PlanRequest, Reloaded, Status, SwitchRequest,
    Tenant as TenantView,
};

use crate::{
    admin_token::AdminToken,
    announce::Announcer,
    config::LoadedConfig,
    dataplane::{Counters, Dataplane, LoadError, MapAccessError, pins::PinWatch},
    deploy::{Action, Actor, Deployment},
    deploy_metrics::DeploymentMetrics,
    fleet::{Apply, Fleet},
    health::HealthChecker,
    live::LiveConfig,
    persist::Persistence,
    reconcile::Reconciler,
    rollout::{Rollouts, keep_pinned_split},
    status::TrafficSamples,
    store::Store,
};
pub use crate::{
    clock::unix_now,
    errors::{DeployError, ReloadError, StartError},
    status::TRAFFIC_WINDOW,
    strategy::{DEFAULT_SWITCH_INTERVAL, DEFAULT_VALIDATION_TIMEOUT},
};

/// How often deployments are advanced.
pub const TICK: Duration = Duration::from_millis(100);

pub struct Agent {
    live: Arc<LiveConfig>,
    rollouts: Arc<Rollouts>,
    reconciler: Arc<Reconciler>,
    health: Arc<HealthChecker>,
    samples: TrafficSamples,
    pub deploy_metrics: Arc<DeploymentMetrics>,
    /// Reloads are serialised so SIGHUP and the API cannot interleave; changes through
    /// the API queue on it too ([`Agent::change_turn`]).
    reload_lock: tokio::sync::Mutex<()>,
    /// The admin API's token, resolved again by every reload.
    admin_token: OnceLock<AdminToken>,
    /// The fleet this gateway is a member of (`fleet:` in the config).
    fleet: Option<Arc<Fleet>>,
    /// BGP announcements (idle without a `bgp:` block).
    announcer: Arc<Announcer>,
    /// Where the last change through the admin API spent its time.
    last_change: std::sync::Mutex<crate::change_timing::Stages>,
}

impl Agent {
    /// Restores saved deployments, starts health checks, and programs the data plane.
    /// Must run inside a Tokio runtime (health checks and notifications are tasks).
    pub fn start(
        config: LoadedConfig,
        dataplane: Box<dyn Dataplane>,
        store: Option<Store>,
    ) -> Result<Arc<Agent>, StartError> {
        Agent::start_in_fleet(config, dataplane, store, None)
    }

    /// [`Agent::start`] as a member of `fleet`: it forwards its saved state until
    /// the fleet's (see [`Agent::fleet_task`]) replaces it.
    pub fn start_in_fleet(
        config: LoadedConfig,
        dataplane: Box<dyn Dataplane>,
        store: Option<Store>,
        fleet: Option<Arc<Fleet>>,
    ) -> Result<Arc<Agent>, StartError> {
        let persistence = Persistence::new(store);
        let mut state = persistence.load_state();
        if persistence.state_was_unreadable() {
            keep_pinned_split(&config, dataplane.as_ref(), &persistence, &mut state);
        }
        let announcer = Arc::new(Announcer::new());
        if let Some(saved) = persistence.load_drain() {
            announcer.restore_drain(saved);
        }
        let health = Arc::new(HealthChecker::default());
        health.restore(persistence.load_health());
        health.sync(&config);
        let live = Arc::new(LiveConfig::new(config));
        let reconciler = Arc::new(Reconciler::new(dataplane));
        let deploy_metrics = Arc::new(DeploymentMetrics::new());
        let rollouts = Arc::new(
            Rollouts::new(
                state,
                persistence,
                deploy_metrics.clone(),
                live.clone(),
                reconciler.clone(),
                health.clone(),
            )
            .in_fleet(fleet.clone()),
        );
        rollouts.resume()?;
        Ok(Arc::new(Agent {
            live,
            rollouts,
            reconciler,
            health,
            samples: TrafficSamples::default(),
            deploy_metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            admin_token: OnceLock::new(),
            fleet,
            announcer,
            last_change: Default::default(),
        }))
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The fleet and how its states are applied here, for `fleet::run`.
    pub fn fleet_task(&self) -> Option<(Arc<Fleet>, Apply)> {
        let rollouts = self.rollouts.clone();
        let apply: Apply = Arc::new(move |revision, state| rollouts.apply_shared(revision, state));
        Some((self.fleet.clone()?, apply))
    }

    /// The running config (shared, not copied).
    pub fn config(&self) -> Arc<LoadedConfig> {
        self.live.get()
    }

    pub fn generation(&self) -> u64 {
        self.live.generation()
    }

    /// Waits for the caller's turn to change something (weights, deployments), after
    /// the changes and reloads that asked before it. Tokio's mutex queues in arrival
    /// order; the agent's own locks do not, and under a burst of changes some callers
    /// waited many times longer than others.
    pub async fn change_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().await
    }

    /// Where the last change through the admin API spent its time, by stage.
    pub fn last_change(&self) -> crate::change_timing::Stages {
        self.last_change
            .lock()
            .expect("last change lock poisoned")
            .clone()
    }

    pub fn set_last_change(&self, stages: crate::change_timing::Stages) {
        *self.last_change.lock().expect("last change lock poisoned") = stages;
    }

    pub fn health(&self) -> &HealthChecker {
        &self.health
    }

    /// Gives the agent the admin API's token, to keep current across reloads (once).
    pub fn use_admin_token(&self, token: AdminToken) {
        if self.admin_token.set(token).is_err() {
            tracing::warn!("the admin token was already set; keeping the first");
        }
    }

    /// What `presented` may do on the admin API, if it is one of its tokens (none
    /// before `use_admin_token`).
    pub fn token_role(&self, presented: &str) -> Option<crate::token_role::Role> {
        self.admin_token.get().and_then(|t| t.role(presented))
    }

    /// Re-applies after a health change, and saves the health for the next agent.
    pub fn health_changed(&self) {
        self.rollouts.health_changed();
    }

    /// Re-reads the config file and makes it live (see [`crate::reload`]).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _serialised = self.reload_lock.lock().await;
        crate::reload::reload(
            &self.live,
            &self.rollouts,
            &self.health,
            self.admin_token.get(),
        )
        .await
    }

    /// The agent's files: saved or not, and why.
    pub fn persistence(&self) -> &Persistence {
        self.rollouts.persistence()
    }

    /// Advances every active deployment; called every `TICK`.
    pub fn tick(&self) {
        self.rollouts.tick();
    }

    /// See [`crate::reconcile::prime_neighbours`].
    pub fn prime_neighbours(&self) {
        crate::reconcile::prime_neighbours(&self.config());
    }

    /// Runs the deployments' Prometheus queries; called about once a second.
    pub fn poll_prometheus(&self) {
        self.rollouts.poll_prometheus();
    }

    /// Starts a canary of `version` (its backends are the services with that
    /// `labels.version`) against the services now taking traffic.
    pub fn start_canary(
        &self,
        req: CanaryRequest,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        self.rollouts.start_canary(req, actor)
    }

    /// Starts a blue/green switch to environment `to`: validate it, then flip.
    pub fn start_switch(
        &self,
        req: SwitchRequest,
        actor: Actor,
    ) -> Result<Deployment, DeployError> {
        self.rollouts.start_switch(req, actor)
    }

    /// promote / abort / rollback / pause / resume, by `actor`.
    pub fn act(&self, id: &str, action: Action, actor: Actor) -> Result<Deployment, DeployError> {
        self.rollouts.act(id, action, actor)
    }

    /// Starts a coordinated plan (see [`crate::orchestration`]).
    pub fn start_plan(&self, req: PlanRequest, actor: Actor) -> Result<Plan, DeployError> {
        self.rollouts.start_plan(req, actor)
    }

    pub fn abort_plan(&self, id: &str, actor: Actor) -> Result<Plan, DeployError> {
        self.rollouts.abort_plan(id, actor)
    }

    /// Newest first.
    pub fn plans(&self) -> Vec<Plan> {
        self.rollouts.plans()
    }

    pub fn plan(&self, id: &str) -> Result<Plan, DeployError> {
        self.rollouts.plan(id)
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.rollouts.deployments()
    }

    pub fn deployment(&self, id: &str) -> Result<Deployment, DeployError> {
        self.rollouts.deployment(id)
    }

    /// Manual weights for a tenant, until the next deployment or new weights (a
    /// reload keeps them, see `outcome`).
    pub fn set_weights(
        &self,
        tenant: &str,
        weights: BTreeMap<String, u32>,
    ) -> Result<TenantView, DeployError> {
        self.rollouts.set_weights(tenant, weights)?;
        Ok(self
            .tenants()
            .into_iter()
            .find(|v| v.about.name == tenant)
            .expect("tenant exists"))
    }

    pub fn tenants(&self) -> Vec<TenantView> {
        let config = self.config();
        self.rollouts
            .with_state(|runtime| crate::status::tenant_views(&config, runtime, &self.health))
    }

    /// Delivers the deployment notifications still queued, within `grace`; returns
    /// how many were left undelivered.
    pub async fn flush_notifications(&self, grace: std::time::Duration) -> usize {
        self.rollouts.flush_notifications(grace).await
    }

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown_dataplane(&self, keep_forwarding: bool) -> Result<(), LoadError> {
        // Routes first: once BIRD withdrew them, the routers stop sending flows here.
        if !keep_forwarding {
            self.announcer.stop();
            self.announce();
        }
        self.reconciler.shutdown(keep_forwarding)
    }

    /// Announces or withdraws VIPs to match the data plane, health and drain state
    /// (see [`crate::announce`]); without a `bgp:` block, only empties the routes
    /// file an earlier config had.
    pub fn announce(&self) {
        self.announce_then(|_, _| ());
    }

    /// One announcement update, after `first` (given the `bgp:` block and the new
    /// connections so far); saves the drain when it changed.
    fn announce_then(&self, first: impl FnOnce(&crate::config::BgpConfig, u64)) {
        let config = self.config();
        let bgp = config.config.bgp.as_ref();
        if bgp.is_none() && !self.announcer.withdrawing_stale(None) {
            return;
        }
        let counters = self.counters().ok();
        let inputs = crate::announce::inputs::gather(&config, &self.health, counters.as_ref());
        if let Some(bgp) = bgp {
            first(bgp, inputs.new_connections);
        }
        self.announcer.update(bgp, inputs);
        if let Some(drain) = self.announcer.drain_to_save()
            && self.persistence().save_drain(&drain)
        {
            self.announcer.drain_saved(drain);
        }
    }

    /// Withdraws every VIP, then watches for new connections to stop (bounded by
    /// `timeout`, else the config's `bgp.drain_timeout`). `None` without `bgp:`.
    pub fn drain(&self, timeout: Option<Duration>) -> Option<AnnounceStatus> {
        self.config().config.bgp.as_ref()?;
        self.announce_then(|bgp, new_connections| {
            self.announcer
                .start_drain(timeout.unwrap_or(bgp.drain_timeout()), new_connections)
        });
        self.announce_status()
    }

    /// Announces again what qualifies. `None` without `bgp:`.
    pub fn undrain(&self) -> Option<AnnounceStatus> {
        self.config().config.bgp.as_ref()?;
        self.announcer.undrain();
        self.announce();
        self.announce_status()
    }

    /// `status.announce`: `None` without `bgp:` (unless the routes file an earlier
    /// config named is still to be emptied).
    pub fn announce_status(&self) -> Option<AnnounceStatus> {
        let config = self.config();
        let bgp = config.config.bgp.as_ref();
        (bgp.is_some() || self.announcer.withdrawing_stale(bgp)).then(|| self.announcer.status())
    }

    pub fn announcer(&self) -> &Arc<Announcer> {
        &self.announcer
    }

    /// Pins again whatever was removed from the pin directory under the running agent
    /// (see [`Dataplane::restore_pins`]).
    pub fn restore_pins(&self) {
        self.reconciler.restore_pins();
    }

    /// The data plane's pins, for `/health` and `/metrics`.
    pub fn pin_watch(&self) -> Option<&Arc<PinWatch>> {
        self.reconciler.pin_watch()
    }

    pub fn counters(&self) -> Result<Counters, MapAccessError> {
        self.reconciler.counters()
    }

    /// Records a counter sample for the live traffic share; called about once a second.
    pub fn sample(&self) -> Result<(), MapAccessError> {
        self.samples.record(self.counters()?);
        Ok(())
    }

    /// Everything `keystone-ctl status` shows.
    pub fn status(&self) -> Result<Status, MapAccessError> {
        let now = self.counters()?;
        let live = self.live.snapshot();
        let views = self
            .rollouts
            .with_state(|runtime| crate::status::tenant_views(&live.config, runtime, &self.health));
        let mut status = crate::status::status(
            &live,
            views,
            &now,
            &self.samples,
            self.persistence().status(),
        );
        status.fleet = self.fleet.as_ref().map(|f| f.status());
        status.announce = self.announce_status();
        Ok(status)
    }
}
