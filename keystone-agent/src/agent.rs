//! The agent's live state: the running config, health, deployments and the data plane.
//! The admin API, the webhook, signals and the engine's ticker all go through here.
//!
//! Lock order: `runtime` → `live` → `dataplane` (each held briefly, never across
//! an await).

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use keystone_common::{Endpoint, Reason, TrafficCounters, xdp_action_name};
use serde::{Deserialize, Serialize};

use crate::{
    admin_token::AdminToken,
    config::{
        ConfigError, DurationSpec, ForwardingMode, LoadedConfig, Problem, PrometheusQuery,
        Protocol, ResolvedTenant, Strategy,
    },
    dataplane::{
        ApplyError, Counters, Dataplane, LoadError, MapAccessError, VipSpec,
        pins::PinWatch,
        problems::{DataplaneProblem, problems},
    },
    deploy::{
        self, Action, DeployState, Deployment, Params, Samples, Signals, TrafficPlan,
        effective_weights,
    },
    health::{self, CheckSpec, HealthChecker, HealthState},
    metrics::DeploymentMetrics,
    notify::Notifier,
    outcome::TrafficSource,
    persist::{File, PersistStatus, Persistence},
    store::{PersistedState, Store, StoreError},
};

/// How far back the "live" traffic share looks.
pub const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);
/// How often deployments are advanced.
pub const TICK: Duration = Duration::from_millis(100);
/// Blue/green: how long the new side is watched after the flip (and the step interval
/// of a gradual switch) unless `canary_config.interval` or the request says.
pub const DEFAULT_SWITCH_INTERVAL: Duration = Duration::from_secs(10);
/// Blue/green validation: how long the idle side may take unless `switch_config` says.
pub const DEFAULT_VALIDATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config {path} is invalid:\n  {problem}")]
    NeedsRestart { path: PathBuf, problem: Problem },
    #[error("the data plane refused the new config (the previous one stays live): {0}")]
    Dataplane(#[source] ApplyError),
    #[error("{UNSAVED}: {0}")]
    Unsaved(#[source] StoreError),
}

/// Why a change is refused when its state cannot be written.
const UNSAVED: &str = "cannot save the agent's state, so the change was not applied";

impl ReloadError {
    /// Problems with field and line, for API answers.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ReloadError::Config(e) => e.problems().to_vec(),
            ReloadError::NeedsRestart { problem, .. } => vec![problem.clone()],
            ReloadError::Dataplane(_) | ReloadError::Unsaved(_) => Vec::new(),
        }
    }
}

/// Why a deployment request or action was refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// `field` names where the request said it (`service`, or the path's tenant).
    #[error("{field}: no tenant named '{tenant}'")]
    UnknownTenant { field: &'static str, tenant: String },
    #[error("no deployment with id '{id}'")]
    UnknownDeployment { id: String },
    #[error(
        "deployment {id} is already {state} for tenant '{tenant}'; promote, abort or roll it back first"
    )]
    AlreadyRunning {
        tenant: String,
        id: String,
        state: &'static str,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{reason}")]
    NotAllowed { reason: String },
    #[error("the data plane refused the change: {0}")]
    Dataplane(#[from] ApplyError),
    #[error("{UNSAVED}: {0}")]
    Unsaved(#[source] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot program the config into the data plane: {0}")]
    Dataplane(#[from] ApplyError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DeployError {
    DeployError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

struct Live {
    config: LoadedConfig,
    generation: u64,
    loaded_at: SystemTime,
}

/// Deployments and traffic plans: what is persisted.
struct Runtime {
    state: PersistedState,
}

pub struct Agent {
    live: RwLock<Live>,
    runtime: Mutex<Runtime>,
    dataplane: Mutex<Box<dyn Dataplane>>,
    health: HealthChecker,
    persistence: Persistence,
    notifier: Notifier,
    pub deploy_metrics: DeploymentMetrics,
    /// Counter samples, oldest first, covering about `TRAFFIC_WINDOW`.
    samples: Mutex<VecDeque<(Instant, Counters)>>,
    /// Blue/green switches whose old side has been drained out of the data plane.
    drained: Mutex<std::collections::BTreeSet<String>>,
    /// Latest value of each active deployment's Prometheus query, by deployment id.
    prometheus: Mutex<BTreeMap<String, Option<f64>>>,
    /// Reloads are serialised so SIGHUP and the API cannot interleave; changes through
    /// the API queue on it too ([`Agent::change_turn`]).
    reload_lock: tokio::sync::Mutex<()>,
    /// The data plane's pins, readable without its lock.
    pin_watch: Option<Arc<PinWatch>>,
    /// The admin API's token, resolved again by every reload.
    admin_token: std::sync::OnceLock<AdminToken>,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
            Self::keep_pinned_split(&config, dataplane.as_ref(), &persistence, &mut state);
        }
        let health = HealthChecker::default();
        health.restore(persistence.load_health());
        health.sync(&config);
        let notifier = Notifier::new(&config.config.notifications);
        let pin_watch = dataplane.pin_watch();
        let agent = Arc::new(Agent {
            live: RwLock::new(Live {
                config,
                generation: 1,
                loaded_at: SystemTime::now(),
            }),
            runtime: Mutex::new(Runtime { state }),
            dataplane: Mutex::new(dataplane),
            health,
            persistence,
            notifier,
            deploy_metrics: DeploymentMetrics::new(),
            samples: Mutex::new(VecDeque::new()),
            prometheus: Mutex::new(BTreeMap::new()),
            drained: Mutex::new(Default::default()),
            reload_lock: tokio::sync::Mutex::new(()),
            pin_watch,
            admin_token: std::sync::OnceLock::new(),
        });
        {
            let runtime = agent.runtime();
            let resumed: Vec<String> = runtime
                .state
                .deployments
                .iter()
                .filter(|d| d.state.is_active())
                .map(|d| format!("{} ({} at {}%)", d.id, d.state.name(), d.canary_percent))
                .collect();
            if !resumed.is_empty() {
                tracing::info!(deployments = ?resumed, "resuming saved deployments");
            }
            agent.reconcile(&runtime)?;
        }
        agent.save_config_copy();
        agent.resume_validations();
        Ok(agent)
    }

    /// With the saved plans lost, keeps what the pinned data plane forwards (e.g. a
    /// finished switch) as manual weights, saved at once, instead of the config's.
    fn keep_pinned_split(
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

    fn runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().expect("runtime lock poisoned")
    }

    pub fn config(&self) -> LoadedConfig {
        self.live
            .read()
            .expect("config lock poisoned")
            .config
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.live.read().expect("config lock poisoned").generation
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

    /// Whether `presented` is the admin API's token (none before `use_admin_token`).
    pub fn admin_token_matches(&self, presented: &str) -> bool {
        self.admin_token.get().is_some_and(|t| t.matches(presented))
    }

    /// The data plane's desired state: config + traffic plans + health.
    fn desired(&self, config: &LoadedConfig, runtime: &Runtime) -> Vec<VipSpec> {
        config
            .tenants
            .iter()
            .map(|t| {
                // From `config`, not `self.live`: reload calls this holding `live.write()`.
                let weights = weights_of(config, t, runtime);
                let now = unix_now();
                let latest = runtime
                    .state
                    .deployments
                    .iter()
                    .rev()
                    .find(|d| d.tenant == t.name);
                t.vip_spec(
                    |i, _| weights[i],
                    |s| {
                        self.health.is_up(&t.name, &s.name)
                            && !latest.is_some_and(|d| d.drained(&s.name, now))
                    },
                )
            })
            .collect()
    }

    /// Makes the data plane match config, plans and health.
    fn reconcile(&self, runtime: &Runtime) -> Result<(), ApplyError> {
        let config = self.config();
        let specs = self.desired(&config, runtime);
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .apply(&specs)
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

    /// Re-reads the config file and makes it live, or leaves the running config
    /// untouched and says why. Live outcomes of deployments stay (see `outcome`).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _serialised = self.reload_lock.lock().await;
        let path = self.config().path;
        let new = tokio::task::spawn_blocking(move || LoadedConfig::load(&path))
            .await
            .expect("config loader panicked")?;
        let old = self.config();
        if let Some(problem) = needs_restart(&old, &new) {
            return Err(ReloadError::NeedsRestart {
                path: new.path.clone(),
                problem,
            });
        }
        // Read before anything goes live: an unreadable token file refuses the reload.
        let token = match self.admin_token.get() {
            Some(t) => Some(
                t.resolve(&new.config.admin)
                    .map_err(|e| e.into_config_error(&new.path))?,
            ),
            None => None,
        };
        let mut runtime = self.runtime();
        let before = runtime.state.clone();
        let effects = crate::outcome::after_reload(&old, &new, &mut runtime.state, unix_now());
        let changed = runtime.state != before;
        if changed && let Err(e) = self.persist(&runtime) {
            runtime.state = before;
            return Err(ReloadError::Unsaved(e));
        }
        {
            let mut live = self.live.write().expect("config lock poisoned");
            let previous = std::mem::replace(&mut live.config, new.clone());
            let specs = self.desired(&new, &runtime);
            let applied = self
                .dataplane
                .lock()
                .expect("dataplane lock poisoned")
                .apply(&specs);
            if let Err(e) = applied {
                // Put back what was live; a half-applied change must not linger.
                live.config = previous;
                runtime.state = before;
                if changed {
                    let _ = self.persist(&runtime);
                }
                let specs = self.desired(&live.config, &runtime);
                if let Err(restore) = self
                    .dataplane
                    .lock()
                    .expect("dataplane lock poisoned")
                    .apply(&specs)
                {
                    tracing::error!(error = %restore, "could not restore the previous config in the data plane");
                }
                return Err(ReloadError::Dataplane(e));
            }
            live.generation += 1;
            live.loaded_at = SystemTime::now();
            if let (Some(live_token), Some(token)) = (self.admin_token.get(), token) {
                live_token.set(token);
            }
        }
        for warning in &new.warnings {
            tracing::warn!("config: {warning}");
        }
        for conflict in &effects.conflicts {
            tracing::warn!(conflict = %conflict, "reload conflicts with a live outcome");
        }
        self.health.sync(&new);
        self.notifier.update_targets(&new.config.notifications);
        self.publish(&runtime, &effects.events);
        drop(runtime);
        self.save_config_copy();
        let generation = self.generation();
        tracing::info!(generation, "config reloaded");
        Ok(Reloaded {
            generation,
            conflicts: effects.conflicts,
        })
    }

    fn save_config_copy(&self) {
        let Some(store) = self.persistence.store() else {
            return;
        };
        let path = self.config().path;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let _ = self
                    .persistence
                    .record(File::Config, store.save_config(&text));
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-read the live config to keep a copy"),
        }
    }

    /// Saves deployments and plans; a failure is counted and shown (see `persist`).
    fn persist(&self, runtime: &Runtime) -> Result<(), StoreError> {
        self.persistence.save_state(&runtime.state)
    }

    /// Makes a change to deployments or plans final: saves it, then makes the data
    /// plane match. If either fails, `before` is put back, so a change is live only
    /// when it is saved too.
    fn commit(&self, runtime: &mut Runtime, before: PersistedState) -> Result<(), DeployError> {
        if let Err(e) = self.persist(runtime) {
            runtime.state = before;
            return Err(DeployError::Unsaved(e));
        }
        if let Err(e) = self.reconcile(runtime) {
            runtime.state = before;
            let _ = self.persist(runtime);
            return Err(e.into());
        }
        Ok(())
    }

    /// The agent's files: saved or not, and why.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Logs, counts and sends the events.
    fn publish(&self, runtime: &Runtime, events: &[deploy::Event]) {
        for event in events {
            let Some(d) = runtime
                .state
                .deployments
                .iter()
                .find(|d| d.id == event.deployment_id)
            else {
                continue;
            };
            tracing::info!(
                deployment = %d.id, tenant = %d.tenant, event = event.kind, state = d.state.name(),
                canary_percent = d.canary_percent,
                reason = d.history.last().map(|s| s.reason.as_str()).unwrap_or(""),
                "deployment event"
            );
            self.deploy_metrics.record(d, event.kind);
            self.notifier.notify(
                event.kind,
                serde_json::to_value(d).expect("deployment serialises"),
            );
        }
    }

    /// Advances every active deployment; called every `TICK`.
    pub fn tick(&self) {
        let counters = self.counters().ok();
        let config = self.config();
        let mut runtime = self.runtime();
        let now = unix_now();
        let mut events = Vec::new();
        let mut changed = false;
        for i in 0..runtime.state.deployments.len() {
            let d = &runtime.state.deployments[i];
            if !d.state.is_active() {
                continue;
            }
            let signals = self.signals(&config, d, counters.as_ref());
            let d = &mut runtime.state.deployments[i];
            // Persist when the history grows (a step or a hold), not on every fresh
            // analysis: that would fsync ten times a second during a rollout.
            let before = d.history.len();
            let new = d.tick(now, &signals);
            changed |= before != d.history.len();
            if !new.is_empty() {
                let plan = TrafficPlan::of(d);
                let tenant = d.tenant.clone();
                runtime.state.plans.insert(tenant, plan);
                events.extend(new);
            }
        }
        // A blue/green drain deadline passing changes the desired state once.
        let drains_due: Vec<String> = runtime
            .state
            .deployments
            .iter()
            .filter(|d| d.stable_backends.iter().any(|s| d.drained(s, now)))
            .map(|d| d.id.clone())
            .filter(|id| {
                !self
                    .drained
                    .lock()
                    .expect("drained lock poisoned")
                    .contains(id)
            })
            .collect();
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
                self.drained
                    .lock()
                    .expect("drained lock poisoned")
                    .extend(drains_due);
            }
            return;
        }
        self.drained
            .lock()
            .expect("drained lock poisoned")
            .extend(drains_due);
        if let Err(e) = self.reconcile(&runtime) {
            tracing::error!(error = %e, "cannot apply a deployment step to the data plane");
        }
        let _ = self.persist(&runtime);
        self.publish(&runtime, &events);
    }

    /// What the deployment's new backends have shown since the agent started.
    fn signals(
        &self,
        config: &LoadedConfig,
        d: &Deployment,
        counters: Option<&Counters>,
    ) -> Signals {
        let Some(tenant) = config.tenants.iter().find(|t| t.name == d.tenant) else {
            return Signals::default();
        };
        let mut signals = Signals::default();
        let mut checked = 0;
        let mut down = 0;
        for name in &d.canary_backends {
            if let Some(h) = self.health.get(&tenant.name, name) {
                signals.probes = signals.probes.plus(Samples {
                    ok: h.total_ok,
                    failed: h.total_failed,
                });
                checked += 1;
                down += usize::from(h.state == HealthState::Down);
            }
        }
        signals.all_down = checked > 0 && checked == d.canary_backends.len() && down == checked;
        signals.prometheus = self
            .prometheus
            .lock()
            .expect("prometheus lock poisoned")
            .get(&d.id)
            .copied()
            .flatten();
        if tenant.mode == ForwardingMode::Nat
            && tenant.protocol == Protocol::Tcp
            && let Some(counters) = counters
        {
            let vip = tenant.vip_endpoint();
            for s in tenant
                .services
                .iter()
                .filter(|s| d.canary_backends.contains(&s.name))
            {
                let endpoint = Endpoint::new(s.address, tenant.protocol.number());
                if let Some((_, _, l4)) = counters
                    .backend_l4
                    .iter()
                    .find(|(v, b, _)| *v == vip && *b == endpoint)
                {
                    // Completed handshakes, not SYN-ACKs: an answer the client
                    // drops (bad checksum, broken path) is a failure.
                    let completed = l4.established.min(l4.syn);
                    signals.handshakes = signals.handshakes.plus(Samples {
                        ok: completed,
                        failed: l4.syn - completed,
                    });
                }
            }
        }
        signals
    }

    /// Sends one empty UDP datagram to the discard port of every backend so the kernel
    /// resolves its neighbour entry: `bpf_fib_lookup` only forwards to known
    /// neighbours, and `dsr` packets cannot fall back to the kernel (their destination
    /// is the VIP). Health checks keep entries fresh; this covers backends without one.
    pub fn prime_neighbours(&self) {
        let config = self.config();
        let mut addresses: Vec<std::net::IpAddr> = config
            .tenants
            .iter()
            .flat_map(|t| t.services.iter().map(|s| s.address.ip()))
            .collect();
        addresses.sort();
        addresses.dedup();
        for ip in addresses {
            let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let sent =
                std::net::UdpSocket::bind(bind).and_then(|socket| socket.send_to(&[], (ip, 9)));
            if let Err(e) = sent {
                tracing::debug!(%ip, error = %e, "cannot prime the neighbour entry");
            }
        }
    }

    /// Runs the Prometheus query of every active deployment that has one and keeps
    /// the latest values for `tick`; called about once a second. Blocking (HTTP).
    pub fn poll_prometheus(&self) {
        let queries: Vec<(String, PrometheusQuery, String, String)> = self
            .runtime()
            .state
            .deployments
            .iter()
            .filter(|d| d.state.is_active())
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
            let value = match prometheus_value(&query, &tenant, &version) {
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

    /// The tenant `name`, given in the request's `field`.
    fn tenant(&self, name: &str, field: &'static str) -> Result<ResolvedTenant, DeployError> {
        self.config()
            .tenants
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| DeployError::UnknownTenant {
                field,
                tenant: name.to_owned(),
            })
    }

    fn check_not_running(runtime: &Runtime, tenant: &str) -> Result<(), DeployError> {
        match runtime
            .state
            .deployments
            .iter()
            .find(|d| d.tenant == tenant && d.state.is_active())
        {
            Some(d) => Err(DeployError::AlreadyRunning {
                tenant: tenant.to_owned(),
                id: d.id.clone(),
                state: d.state.name(),
            }),
            None => Ok(()),
        }
    }

    /// Starts a canary of `version` (its backends are the services with that
    /// `labels.version`) against the services now taking traffic.
    pub fn start_canary(&self, req: CanaryRequest) -> Result<Deployment, DeployError> {
        deploy::check_pipeline(req.pipeline.as_ref()).map_err(|e| invalid("pipeline", e))?;
        let tenant = self.tenant(&req.service, "service")?;
        let raw = self.raw_tenant(&tenant.name);
        let mut params = Params::from_canary_config(raw.canary_config.as_ref());
        ParamOverrides::from_params(&req.params)?.apply(&mut params)?;
        let canary: Vec<String> = tenant
            .services
            .iter()
            .filter(|s| s.version == req.version)
            .map(|s| s.name.clone())
            .collect();
        if canary.is_empty() {
            let versions: Vec<&str> = tenant.services.iter().map(|s| s.version.as_str()).collect();
            return Err(invalid(
                "version",
                format!(
                    "no service of tenant '{}' has labels.version '{}' (versions: {})",
                    tenant.name,
                    req.version,
                    versions.join(", ")
                ),
            ));
        }
        let mut runtime = self.runtime();
        Self::check_not_running(&runtime, &tenant.name)?;
        let weights = weights_of(&self.config(), &tenant, &runtime);
        let stable: Vec<String> = tenant
            .services
            .iter()
            .zip(&weights)
            .filter(|(s, w)| **w > 0 && !canary.contains(&s.name))
            .map(|(s, _)| s.name.clone())
            .collect();
        if stable.is_empty() {
            return Err(invalid(
                "version",
                format!(
                    "tenant '{}' has no other service taking traffic to compare the canary with",
                    tenant.name
                ),
            ));
        }
        let env = tenant
            .services
            .iter()
            .find(|s| canary.contains(&s.name))
            .and_then(|s| s.environment.clone());
        let d = self.new_deployment(
            &mut runtime,
            &tenant,
            Strategy::Canary,
            Some(req.version),
            stable,
            canary,
            params,
            req.pipeline,
        );
        let d = Deployment {
            to_environment: env,
            ..d
        };
        self.launch(runtime, d, "started")
    }

    /// Starts a blue/green switch to environment `to`: validate it, then flip.
    pub fn start_switch(self: &Arc<Self>, req: SwitchRequest) -> Result<Deployment, DeployError> {
        deploy::check_pipeline(req.pipeline.as_ref()).map_err(|e| invalid("pipeline", e))?;
        let tenant = self.tenant(&req.service, "service")?;
        let raw = self.raw_tenant(&tenant.name);
        let in_env = |env: &str| -> Vec<String> {
            tenant
                .services
                .iter()
                .filter(|s| s.environment.as_deref() == Some(env))
                .map(|s| s.name.clone())
                .collect()
        };
        let to = in_env(&req.to);
        if to.is_empty() {
            return Err(invalid(
                "to",
                format!(
                    "no service of tenant '{}' is in environment '{}'",
                    tenant.name, req.to
                ),
            ));
        }
        let mut runtime = self.runtime();
        Self::check_not_running(&runtime, &tenant.name)?;
        let weights = weights_of(&self.config(), &tenant, &runtime);
        let from_env = match req.from.clone() {
            Some(from) => from,
            None => {
                let mut live: Vec<String> = tenant
                    .services
                    .iter()
                    .zip(&weights)
                    .filter(|(s, w)| **w > 0 && !to.contains(&s.name))
                    .filter_map(|(s, _)| s.environment.clone())
                    .collect();
                live.dedup();
                match live.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(invalid(
                            "from",
                            "no other environment takes traffic now; nothing to switch from",
                        ));
                    }
                    many => {
                        return Err(invalid(
                            "from",
                            format!(
                                "several environments take traffic ({}); say which with \"from\"",
                                many.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        if from_env == req.to {
            return Err(invalid(
                "to",
                format!(
                    "'{}' is already the environment being switched from",
                    req.to
                ),
            ));
        }
        let from = in_env(&from_env);
        let switch = raw.switch_config.clone().unwrap_or_default();
        let strategy = req
            .strategy
            .clone()
            .or(switch.strategy.clone())
            .unwrap_or_else(|| "instant".into());
        let mut params = Params::from_canary_config(raw.canary_config.as_ref());
        if let Some(interval) = &switch.interval {
            params.interval_seconds = interval.get().as_secs_f64();
        } else if raw.canary_config.is_none() {
            params.interval_seconds = DEFAULT_SWITCH_INTERVAL.as_secs_f64();
        }
        if let Some(increment) = switch.increment {
            params.increment = increment;
            params.initial_traffic = increment;
        }
        match strategy.as_str() {
            "instant" => {
                params.initial_traffic = 100.0;
                params.increment = 100.0;
                params.max_traffic = 100.0;
            }
            "gradual" => params.max_traffic = 100.0,
            other => {
                return Err(invalid(
                    "strategy",
                    format!("unknown switch strategy '{other}'; expected instant or gradual"),
                ));
            }
        }
        params.rollback_on_failure = switch.rollback_on_failure.unwrap_or(true);
        params.drain_timeout_seconds = switch.drain_timeout.as_ref().map(|d| d.get().as_secs_f64());
        params.validation_timeout_seconds = Some(
            switch
                .validation_timeout
                .as_ref()
                .map(DurationSpec::get)
                .unwrap_or(DEFAULT_VALIDATION_TIMEOUT)
                .as_secs_f64(),
        );
        ParamOverrides::from_params(&req.params)?.apply(&mut params)?;
        let d = self.new_deployment(
            &mut runtime,
            &tenant,
            Strategy::BlueGreen,
            None,
            from,
            to,
            params,
            req.pipeline,
        );
        let d = Deployment {
            canary_percent: 0.0,
            from_environment: Some(from_env),
            to_environment: Some(req.to.clone()),
            ..d
        };
        let id = d.id.clone();
        let d = self.launch(runtime, d, "started; validating the idle side")?;
        self.spawn_validation(id);
        Ok(d)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor for every strategy"
    )]
    fn new_deployment(
        &self,
        runtime: &mut Runtime,
        tenant: &ResolvedTenant,
        strategy: Strategy,
        version: Option<String>,
        stable: Vec<String>,
        canary: Vec<String>,
        params: Params,
        pipeline: Option<serde_json::Value>,
    ) -> Deployment {
        let now = unix_now();
        runtime.state.next_seq += 1;
        let id = format!("{}-{}-{}", tenant.name, now as u64, runtime.state.next_seq);
        Deployment {
            id,
            tenant: tenant.name.clone(),
            strategy,
            version,
            state: DeployState::Progressing,
            canary_percent: params.initial_traffic,
            stable_backends: stable,
            canary_backends: canary,
            from_environment: None,
            to_environment: None,
            next_step_at: now + params.interval_seconds,
            params,
            analysis: Default::default(),
            history: Vec::new(),
            started_at: deploy::rfc3339(now),
            updated_at: deploy::rfc3339(now),
            finished_at: None,
            pipeline,
            started_unix: now,
            finished_unix: None,
            validated: false,
            baseline: None,
        }
    }

    /// Records, applies, persists and announces a new deployment.
    fn launch(
        &self,
        mut runtime: MutexGuard<'_, Runtime>,
        mut d: Deployment,
        reason: &str,
    ) -> Result<Deployment, DeployError> {
        let now = unix_now();
        d.history.push(deploy::Step {
            at: deploy::rfc3339(now),
            canary_percent: d.canary_percent,
            state: d.state,
            reason: reason.to_owned(),
        });
        let before = runtime.state.clone();
        runtime
            .state
            .plans
            .insert(d.tenant.clone(), TrafficPlan::of(&d));
        runtime.state.deployments.push(d.clone());
        let overflow = runtime
            .state
            .deployments
            .len()
            .saturating_sub(deploy::HISTORY_LIMIT);
        if overflow > 0 {
            // Drop the oldest finished ones.
            let mut dropped = 0;
            runtime.state.deployments.retain(|x| {
                let drop = dropped < overflow && !x.state.is_active();
                dropped += usize::from(drop);
                !drop
            });
        }
        self.commit(&mut runtime, before)?;
        let event = deploy::Event {
            deployment_id: d.id.clone(),
            kind: "started",
        };
        self.publish(&runtime, std::slice::from_ref(&event));
        Ok(d)
    }

    fn resume_validations(self: &Arc<Self>) {
        let pending: Vec<String> = self
            .runtime()
            .state
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

    /// Probes every backend of the new side (its health check, or a TCP connect) until
    /// all pass or the validation timeout runs out, then lets the deployment flip.
    fn spawn_validation(self: &Arc<Self>, id: String) {
        let agent = self.clone();
        tokio::spawn(async move {
            let Some(Validation {
                targets,
                timeout,
                remaining,
            }) = agent.validation(&id)
            else {
                return;
            };
            let deadline = Instant::now() + remaining;
            // Probed at least once, even when a restart comes after the deadline.
            let result = loop {
                let mut failures = Vec::new();
                for (name, spec) in &targets {
                    if let Err(e) = health::probe(spec).await {
                        failures.push(format!("{name}: {e}"));
                    }
                }
                if failures.is_empty() {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(failures.join("; "));
                }
                let pause = targets
                    .first()
                    .map(|(_, s)| s.interval)
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            };
            let result = result.map_err(|e| format!("{e} (gave up after {timeout:?})"));
            let mut runtime = agent.runtime();
            let Some(d) = runtime.state.deployments.iter_mut().find(|d| d.id == id) else {
                return;
            };
            let events = d.validation_done(unix_now(), result);
            if events.is_empty() {
                return;
            }
            let plan = TrafficPlan::of(d);
            let tenant = d.tenant.clone();
            runtime.state.plans.insert(tenant, plan);
            if let Err(e) = agent.reconcile(&runtime) {
                tracing::error!(error = %e, "cannot apply a blue/green flip to the data plane");
            }
            let _ = agent.persist(&runtime);
            agent.publish(&runtime, &events);
        });
    }

    fn validation(&self, id: &str) -> Option<Validation> {
        let runtime = self.runtime();
        let d = runtime.state.deployments.iter().find(|d| d.id == id)?;
        let config = self.config();
        let tenant = config.tenants.iter().find(|t| t.name == d.tenant)?;
        let raw = config.config.tenants.iter().find(|t| t.name == d.tenant)?;
        let endpoint = raw
            .switch_config
            .as_ref()
            .and_then(|s| s.validation_endpoint.as_deref());
        let targets = tenant
            .services
            .iter()
            .zip(&raw.services)
            .filter(|(s, _)| d.canary_backends.contains(&s.name))
            .map(|(s, r)| {
                let spec = health::validation_spec(s.address, r.health.as_ref(), endpoint);
                (s.name.clone(), spec)
            })
            .collect();
        let timeout = d
            .params
            .validation_timeout_seconds
            .unwrap_or(DEFAULT_VALIDATION_TIMEOUT.as_secs_f64());
        let remaining = (d.started_unix + timeout - unix_now()).clamp(0.0, timeout);
        Some(Validation {
            targets,
            timeout: Duration::from_secs_f64(timeout),
            remaining: Duration::from_secs_f64(remaining),
        })
    }

    /// promote / abort / rollback / pause / resume.
    pub fn act(&self, id: &str, action: Action) -> Result<Deployment, DeployError> {
        let mut runtime = self.runtime();
        let i = runtime
            .state
            .deployments
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| DeployError::UnknownDeployment { id: id.to_owned() })?;
        let tenant = runtime.state.deployments[i].tenant.clone();
        if action == Action::Rollback
            && let Some(newer) = runtime.state.deployments[i + 1..]
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
        let before = runtime.state.clone();
        let d = &mut runtime.state.deployments[i];
        let event = d
            .act(unix_now(), action)
            .map_err(|reason| DeployError::NotAllowed { reason })?;
        let plan = TrafficPlan::of(d);
        let d = d.clone();
        runtime.state.plans.insert(tenant, plan);
        self.commit(&mut runtime, before)?;
        self.publish(&runtime, &[event]);
        Ok(d)
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        let mut list = self.runtime().state.deployments.clone();
        list.reverse();
        list
    }

    pub fn deployment(&self, id: &str) -> Result<Deployment, DeployError> {
        self.runtime()
            .state
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
    ) -> Result<TenantView, DeployError> {
        let t = self.tenant(tenant, "tenant")?;
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
        Self::check_not_running(&runtime, tenant)?;
        let before = runtime.state.clone();
        runtime.state.plans.insert(
            tenant.to_owned(),
            TrafficPlan::Manual {
                weights,
                reason: None,
            },
        );
        self.commit(&mut runtime, before)?;
        drop(runtime);
        Ok(self
            .tenants()
            .into_iter()
            .find(|v| v.name == tenant)
            .expect("tenant exists"))
    }

    fn raw_tenant(&self, name: &str) -> crate::config::Tenant {
        self.config()
            .config
            .tenants
            .into_iter()
            .find(|t| t.name == name)
            .expect("resolved tenants come from the config")
    }

    pub fn tenants(&self) -> Vec<TenantView> {
        let config = self.config();
        let runtime = self.runtime();
        config
            .tenants
            .iter()
            .map(|t| {
                let weights = weights_of(&config, t, &runtime);
                let total: u64 = weights.iter().map(|w| *w as u64).sum();
                TenantView {
                    name: t.name.clone(),
                    vip: t.vip.to_string(),
                    protocol: t.protocol,
                    mode: t.mode,
                    strategy: t.strategy,
                    active_environment: active_environment(&config, &t.name),
                    traffic_source: TrafficSource::of(&runtime.state, &t.name),
                    deployment_id: runtime
                        .state
                        .deployments
                        .iter()
                        .rev()
                        .find(|d| d.tenant == t.name && d.state.is_active())
                        .map(|d| d.id.clone()),
                    backends: t
                        .services
                        .iter()
                        .zip(&weights)
                        .map(|(s, w)| TenantBackendView {
                            name: s.name.clone(),
                            address: s.address.to_string(),
                            environment: s.environment.clone(),
                            version: s.version.clone(),
                            configured_weight: s.weight,
                            effective_weight: *w,
                            traffic_percent: share(*w as u64, total) * 100.0,
                            health: self
                                .health
                                .get(&t.name, &s.name)
                                .map_or(HealthState::Unknown, |h| h.state),
                            health_local_error: self.health.local_error(&t.name, &s.name),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown_dataplane(&self, keep_forwarding: bool) -> Result<(), LoadError> {
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .shutdown(keep_forwarding)
    }

    /// Pins again whatever was removed from the pin directory under the running agent
    /// (see [`Dataplane::restore_pins`]).
    pub fn restore_pins(&self) {
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .restore_pins();
    }

    /// The data plane's pins, for `/health` and `/metrics`.
    pub fn pin_watch(&self) -> Option<&Arc<PinWatch>> {
        self.pin_watch.as_ref()
    }

    pub fn counters(&self) -> Result<Counters, MapAccessError> {
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .counters()
    }

    /// Records a counter sample for the live traffic share; called about once a second.
    pub fn sample(&self) -> Result<(), MapAccessError> {
        let counters = self.counters()?;
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("samples lock poisoned");
        // Logged when a problem starts (the previous second did not show it).
        let last = samples.back().map(|(_, c)| c);
        let earlier = samples.len().checked_sub(2).and_then(|i| samples.get(i));
        if let Some(last) = last {
            let ongoing = problems(last, earlier.map(|(_, c)| c));
            for p in problems(&counters, Some(last)) {
                if !ongoing.iter().any(|o| o.kind == p.kind) {
                    tracing::warn!(problem = p.kind, "{}", p.message);
                }
            }
        }
        samples.push_back((now, counters));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= TRAFFIC_WINDOW)
        {
            samples.pop_front();
        }
        Ok(())
    }

    /// Everything `keystone-ctl status` shows.
    pub fn status(&self) -> Result<Status, MapAccessError> {
        let now = self.counters()?;
        let oldest = self
            .samples
            .lock()
            .expect("samples lock poisoned")
            .front()
            .cloned();
        let views = self.tenants();
        let live = self.live.read().expect("config lock poisoned");
        let window = oldest.as_ref().map(|(t, c)| (t.elapsed(), c));
        let find =
            |list: &[(Endpoint, Endpoint, TrafficCounters)], vip: &Endpoint, backend: &Endpoint| {
                list.iter()
                    .find(|(v, b, _)| v == vip && b == backend)
                    .map(|(_, _, c)| *c)
                    .unwrap_or_default()
            };
        let tenants = live
            .config
            .tenants
            .iter()
            .zip(views)
            .map(|(t, view)| {
                let vip = t.vip_endpoint();
                let mut backends: Vec<BackendStatus> = t
                    .services
                    .iter()
                    .zip(&view.backends)
                    .map(|(s, v)| {
                        let endpoint = Endpoint::new(s.address, t.protocol.number());
                        let total = find(&now.backends, &vip, &endpoint);
                        let recent = window.map(|(_, then)| {
                            total
                                .new_flows
                                .saturating_sub(find(&then.backends, &vip, &endpoint).new_flows)
                        });
                        let l4 = now
                            .backend_l4
                            .iter()
                            .find(|(a, b, _)| *a == vip && *b == endpoint)
                            .map(|(_, _, c)| *c)
                            .unwrap_or_default();
                        BackendStatus {
                            name: s.name.clone(),
                            address: s.address.to_string(),
                            environment: s.environment.clone(),
                            version: s.version.clone(),
                            weight: s.weight,
                            effective_weight: v.effective_weight,
                            weight_share: v.traffic_percent / 100.0,
                            health: v.health,
                            health_local_error: v.health_local_error.clone(),
                            packets: total.packets,
                            bytes: total.bytes,
                            new_connections: total.new_flows,
                            recent_new_connections: recent.unwrap_or(0),
                            traffic_share: 0.0,
                            tcp_syn: l4.syn,
                            tcp_syn_ack: l4.syn_ack,
                            tcp_rst: l4.rst,
                            tcp_established: l4.established,
                        }
                    })
                    .collect();
                let recent_total: u64 = backends.iter().map(|b| b.recent_new_connections).sum();
                for b in &mut backends {
                    b.traffic_share = share(b.recent_new_connections, recent_total);
                }
                let vip_counters = now
                    .vips
                    .iter()
                    .find(|(v, _)| *v == vip)
                    .map(|(_, c)| *c)
                    .unwrap_or_default();
                TenantStatus {
                    name: t.name.clone(),
                    vip: t.vip.to_string(),
                    protocol: t.protocol,
                    mode: t.mode,
                    strategy: t.strategy,
                    active_environment: view.active_environment,
                    traffic_source: view.traffic_source,
                    deployment_id: view.deployment_id,
                    packets: vip_counters.packets,
                    bytes: vip_counters.bytes,
                    new_connections: vip_counters.new_flows,
                    backends,
                }
            })
            .collect();
        Ok(Status {
            problems: problems(&now, window.map(|(_, c)| c)),
            config_path: live.config.path.display().to_string(),
            config_generation: live.generation,
            config_loaded_at: humantime::format_rfc3339_seconds(live.loaded_at).to_string(),
            traffic_window_seconds: window.map(|(d, _)| d.as_secs_f64()).unwrap_or(0.0),
            tenants,
            persistence: self.persistence.status(),
            xdp_actions: now
                .actions
                .iter()
                .enumerate()
                .map(|(i, &n)| (xdp_action_name(i as u32).to_owned(), n))
                .collect(),
            packet_reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), now.reasons[*r as usize]))
                .collect(),
        })
    }
}

/// Runs `query` (with `{{tenant}}`/`{{version}}` filled in) and returns its value:
/// the first sample of a vector, or a scalar; `None` when the result is empty.
fn prometheus_value(
    query: &PrometheusQuery,
    tenant: &str,
    version: &str,
) -> Result<Option<f64>, String> {
    let promql = query
        .query
        .replace("{{tenant}}", tenant)
        .replace("{{version}}", version);
    let encoded: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let url = format!(
        "{}/api/v1/query?query={encoded}",
        query.address.trim_end_matches('/')
    );
    let client: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = client
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading {url}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{url} answered {status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|r| &r["value"]),
        Some("scalar") => Some(&data["result"]),
        other => {
            return Err(format!(
                "{url}: result type {other:?}; the query must return a scalar or vector"
            ));
        }
    };
    let Some(sample) = sample else {
        return Ok(None);
    };
    let value = sample[1].as_str().and_then(|v| v.parse::<f64>().ok());
    match value {
        Some(v) if v.is_finite() => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// Effective weights of `tenant`'s services under `config` and the runtime's plan.
fn weights_of(config: &LoadedConfig, tenant: &ResolvedTenant, runtime: &Runtime) -> Vec<u32> {
    let active_env = active_environment(config, &tenant.name);
    effective_weights(
        tenant,
        active_env.as_deref(),
        runtime.state.plans.get(&tenant.name),
    )
}

pub(crate) fn active_environment(config: &LoadedConfig, tenant: &str) -> Option<String> {
    config
        .config
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .and_then(|t| t.active_environment.clone())
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// Fields a reload cannot change in place.
fn needs_restart(old: &LoadedConfig, new: &LoadedConfig) -> Option<Problem> {
    let lines = crate::yaml_lines::index(&std::fs::read_to_string(&new.path).unwrap_or_default());
    let problem = |field: &str, what: String| Problem {
        field: field.to_owned(),
        line: crate::yaml_lines::line_of(&lines, field),
        reason: format!("{what} cannot change on reload; restart the agent to apply it"),
    };
    if old.config.interfaces != new.config.interfaces {
        return Some(problem(
            "interfaces",
            "the interfaces the XDP program is attached to".into(),
        ));
    }
    if old.config.attach != new.config.attach {
        return Some(problem("attach", "how the XDP program is attached".into()));
    }
    if old.config.admin.listen != new.config.admin.listen {
        return Some(problem("admin.listen", "the admin API address".into()));
    }
    for ((field, old_value), (_, new_value)) in old
        .config
        .limits
        .fields()
        .into_iter()
        .zip(new.config.limits.fields())
    {
        if old_value != new_value {
            return Some(problem(
                &format!("limits.{field}"),
                format!("a data plane capacity ({old_value} → {new_value})"),
            ));
        }
    }
    let webhook = |c: &LoadedConfig| serde_json::to_value(&c.config.webhook).ok();
    if webhook(old) != webhook(new) {
        return Some(problem(
            "webhook",
            "the webhook secret and tolerance".into(),
        ));
    }
    None
}

/// A blue/green validation: what to probe, the timeout and how much of it is left (it
/// counts from the deployment's start, so an agent restart does not start it again).
struct Validation {
    targets: Vec<(String, CheckSpec)>,
    timeout: Duration,
    remaining: Duration,
}

/// What a reload did: the new generation, and where it contradicts a live outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Reloaded {
    #[serde(rename = "config_generation")]
    pub generation: u64,
    pub conflicts: Vec<String>,
}

/// A request's step parameters as sent: every field that is not the request's own.
pub type StepParams = serde_json::Map<String, serde_json::Value>;

/// Optional step parameters of a deployment request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ParamOverrides {
    pub initial_traffic: Option<f64>,
    pub increment: Option<f64>,
    pub interval: Option<DurationSpec>,
    pub max_traffic: Option<f64>,
    pub health_threshold: Option<f64>,
    pub rollback_threshold: Option<f64>,
    pub min_samples: Option<u64>,
    pub validation_timeout: Option<DurationSpec>,
    pub rollback_on_failure: Option<bool>,
}

/// The step parameters a deployment request may set.
pub const PARAMETER_NAMES: [&str; 9] = [
    "initial_traffic",
    "increment",
    "interval",
    "max_traffic",
    "health_threshold",
    "rollback_threshold",
    "min_samples",
    "validation_timeout",
    "rollback_on_failure",
];

impl ParamOverrides {
    /// Reads a request's step parameters. A misspelt parameter is refused by name
    /// (never a silently kept default), and so is a value of the wrong type (serde's
    /// flattened fields would lose the name, hence the separate pass).
    pub fn from_params(params: &StepParams) -> Result<ParamOverrides, DeployError> {
        if let Some(name) = params
            .keys()
            .find(|k| !PARAMETER_NAMES.contains(&k.as_str()))
        {
            return Err(invalid(
                name.as_str(),
                format!("unknown parameter; known: {}", PARAMETER_NAMES.join(", ")),
            ));
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(params.clone()))
            .map_err(|e| invalid(e.path().to_string(), e.into_inner().to_string()))
    }

    pub fn apply(&self, p: &mut Params) -> Result<(), DeployError> {
        if let Some(v) = self.initial_traffic {
            p.initial_traffic = v;
        }
        if let Some(v) = self.increment {
            p.increment = v;
        }
        if let Some(v) = &self.interval {
            p.interval_seconds = v
                .parse()
                .map_err(|reason| invalid("interval", reason))?
                .as_secs_f64();
        }
        if let Some(v) = self.max_traffic {
            p.max_traffic = v;
        }
        if let Some(v) = self.health_threshold {
            p.health_threshold = deploy::threshold_rate(v, &v.to_string())
                .map_err(|reason| invalid("health_threshold", reason))?;
        }
        if let Some(v) = self.rollback_threshold {
            p.rollback_threshold = deploy::threshold_rate(v, &v.to_string())
                .map_err(|reason| invalid("rollback_threshold", reason))?;
        }
        if let Some(v) = self.min_samples {
            p.min_samples = v;
        }
        if let Some(v) = &self.validation_timeout {
            p.validation_timeout_seconds = Some(
                v.parse()
                    .map_err(|reason| invalid("validation_timeout", reason))?
                    .as_secs_f64(),
            );
        }
        if let Some(v) = self.rollback_on_failure {
            p.rollback_on_failure = v;
        }
        match p.problems().into_iter().next() {
            Some((field, reason)) => Err(invalid(field, reason)),
            None => Ok(()),
        }
    }
}

/// `POST /deployments/canary`.
#[derive(Clone, Debug, Deserialize)]
pub struct CanaryRequest {
    /// The tenant.
    pub service: String,
    /// `labels.version` of the canary backends.
    pub version: String,
    /// Step parameters (`ParamOverrides::from_params` reads them).
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
}

/// `POST /deployments/blue-green/switch`.
#[derive(Clone, Debug, Deserialize)]
pub struct SwitchRequest {
    pub service: String,
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    /// `instant` or `gradual`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Step parameters (`ParamOverrides::from_params` reads them).
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantView {
    pub name: String,
    pub vip: String,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub strategy: Strategy,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    /// Where the effective weights come from (the config, a deployment, the API).
    pub traffic_source: TrafficSource,
    pub backends: Vec<TenantBackendView>,
    pub deployment_id: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantBackendView {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    pub configured_weight: u32,
    pub effective_weight: u32,
    /// Share of new connections the weights give this backend.
    pub traffic_percent: f64,
    pub health: HealthState,
    /// Why its last check could not run on this host (the health stays as it was).
    pub health_local_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// What makes traffic fail now although everything looks up (see
    /// `dataplane::problems`); empty when all is well.
    pub problems: Vec<DataplaneProblem>,
    pub config_path: String,
    pub config_generation: u64,
    pub config_loaded_at: String,
    /// Seconds covered by `recent_new_connections` / `traffic_share`.
    pub traffic_window_seconds: f64,
    pub tenants: Vec<TenantStatus>,
    /// Whether the agent's files are saved (see `/health`).
    pub persistence: PersistStatus,
    pub xdp_actions: BTreeMap<String, u64>,
    pub packet_reasons: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub name: String,
    pub vip: String,
    pub protocol: Protocol,
    pub mode: ForwardingMode,
    pub strategy: Strategy,
    /// The config's `active_environment`.
    pub active_environment: Option<String>,
    /// Where `effective_weight` comes from: the config's `weight`, a deployment, the API.
    pub traffic_source: TrafficSource,
    pub deployment_id: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the data plane now (deployments and manual weights applied).
    pub effective_weight: u32,
    /// This backend's share of the tenant's effective weight.
    pub weight_share: f64,
    pub health: HealthState,
    /// Why its last check could not run on this host (the health stays as it was).
    pub health_local_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    /// New connections within the traffic window.
    pub recent_new_connections: u64,
    /// Share of the tenant's new connections within the traffic window.
    pub traffic_share: f64,
    /// Passive L4 signals (TCP): SYNs sent, SYN-ACKs and RSTs answered (`nat`),
    /// handshakes completed (`L4Counters::established`).
    pub tcp_syn: u64,
    pub tcp_syn_ack: u64,
    pub tcp_rst: u64,
    pub tcp_established: u64,
}
