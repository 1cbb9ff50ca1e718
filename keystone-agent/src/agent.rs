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

use keystone_api::{CanaryRequest, Reloaded, Status, SwitchRequest, Tenant as TenantView};

use crate::{
    admin_token::AdminToken,
    config::LoadedConfig,
    dataplane::{Counters, Dataplane, LoadError, MapAccessError, pins::PinWatch},
    deploy::{Action, Actor, Deployment},
    deploy_metrics::DeploymentMetrics,
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
}

impl Agent {
    /// Restores saved deployments, starts health checks, and programs the data plane.
    /// Must run inside a Tokio runtime (health checks and notifications are tasks).
    pub fn start(
        config: LoadedConfig,
        dataplane: Box<dyn Dataplane>,
        store: Option<Store>,
    ) -> Result<Arc<Agent>, StartError> {
        let persistence = Persistence::new(store);
        let mut state = persistence.load_state();
        if persistence.state_was_unreadable() {
            keep_pinned_split(&config, dataplane.as_ref(), &persistence, &mut state);
        }
        let health = Arc::new(HealthChecker::default());
        health.restore(persistence.load_health());
        health.sync(&config);
        let live = Arc::new(LiveConfig::new(config));
        let reconciler = Arc::new(Reconciler::new(dataplane));
        let deploy_metrics = Arc::new(DeploymentMetrics::new());
        let rollouts = Arc::new(Rollouts::new(
            state,
            persistence,
            deploy_metrics.clone(),
            live.clone(),
            reconciler.clone(),
            health.clone(),
        ));
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
        }))
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

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown_dataplane(&self, keep_forwarding: bool) -> Result<(), LoadError> {
        self.reconciler.shutdown(keep_forwarding)
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
        Ok(crate::status::status(
            &live,
            views,
            &now,
            &self.samples,
            self.persistence().status(),
        ))
    }
}
