//! The controller's side of coordinated plans (see `orchestration`): starting one,
//! moving every running plan on at each tick, aborting one. The plan's [`Engine`] is
//! the runtime itself, so a plan's change and the deployments it starts or rolls
//! back are committed (saved, then applied) together.

use keystone_api::{CanaryRequest, EventKind, Plan, PlanRequest};

use super::{Rollouts, act_on, record_start};
use crate::{
    clock::unix_now,
    config::LoadedConfig,
    deploy::{self, Action, Actor, DeployState},
    errors::{DeployError, invalid},
    orchestration::{self, Engine},
    store::PersistedState,
    strategy,
};

/// The deployment engine as a plan sees it, over the runtime being changed.
struct RuntimeEngine<'a> {
    config: &'a LoadedConfig,
    runtime: &'a mut PersistedState,
    now: f64,
    actor: Actor,
    events: Vec<deploy::Event>,
}

/// The canary request a plan makes for one of its services.
fn canary_request(plan: &Plan, service: &str, version: &str) -> CanaryRequest {
    CanaryRequest {
        service: service.to_owned(),
        version: version.to_owned(),
        params: plan.params.clone(),
        pipeline: plan.pipeline.clone(),
    }
}

impl<'a> RuntimeEngine<'a> {
    fn new(
        config: &'a LoadedConfig,
        runtime: &'a mut PersistedState,
        now: f64,
        actor: Actor,
    ) -> Self {
        RuntimeEngine {
            config,
            runtime,
            now,
            actor,
            events: Vec::new(),
        }
    }

    fn act(&mut self, id: &str, action: Action) -> Result<(), String> {
        let (_, event) =
            act_on(self.runtime, id, action, Actor::Agent, self.now).map_err(|e| e.to_string())?;
        self.events.push(event);
        Ok(())
    }

    /// The canary a plan would start for `service` now, or why not.
    fn canary(
        &self,
        plan: &Plan,
        service: &str,
        version: &str,
    ) -> Result<deploy::Start, DeployError> {
        let tenant = strategy::tenant(self.config, service, "service")?;
        strategy::canary(tenant, self.runtime, canary_request(plan, service, version))
    }
}

impl Engine for RuntimeEngine<'_> {
    fn state(&self, id: &str) -> Option<(DeployState, String)> {
        let d = self.runtime.deployments.iter().find(|d| d.id == id)?;
        let reason = d
            .history
            .last()
            .map(|s| s.reason.clone())
            .unwrap_or_default();
        Some((d.state, reason))
    }

    fn start_canary(
        &mut self,
        plan: &Plan,
        service: &str,
        version: &str,
    ) -> Result<String, String> {
        let start = self
            .canary(plan, service, version)
            .map_err(|e| e.to_string())?;
        let reason = format!("started by {}", plan.id);
        let d = record_start(self.runtime, start, self.now, &reason, self.actor);
        self.events.push(deploy::Event {
            deployment_id: d.id.clone(),
            kind: EventKind::Started,
        });
        Ok(d.id)
    }

    fn roll_back(&mut self, id: &str) -> Result<(), String> {
        self.act(id, Action::Rollback)
    }

    fn abort(&mut self, id: &str) -> Result<(), String> {
        self.act(id, Action::Abort)
    }
}

/// One error for a plan's problems: the first names the field, the rest follow.
fn spec_error(problems: Vec<orchestration::SpecError>) -> DeployError {
    let mut all = problems.into_iter();
    let first = all.next().expect("at least one problem");
    let rest: Vec<String> = all.map(|e| format!("{}: {}", e.field, e.reason)).collect();
    let mut reason = first.reason;
    if !rest.is_empty() {
        reason = format!("{reason}; {}", rest.join("; "));
    }
    invalid(first.field, reason)
}

impl Rollouts {
    /// Starts a plan (the request's, else the config's `deployment_orchestration`):
    /// checked whole, every canary it will start built once as a dry run, then its
    /// first phase started, all in one commit.
    pub fn start_plan(&self, req: PlanRequest, actor: Actor) -> Result<Plan, DeployError> {
        deploy::check_pipeline(req.pipeline.as_ref()).map_err(|e| invalid("pipeline", e))?;
        let config = self.live.get();
        let orchestration = req
            .orchestration
            .clone()
            .or_else(|| config.config.deployment_orchestration.clone())
            .ok_or_else(|| {
                invalid(
                    "orchestration",
                    "the request has none and the config has no deployment_orchestration",
                )
            })?;
        let tenants: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
        let start = orchestration::start(&orchestration, &req, &tenants).map_err(spec_error)?;
        let mut runtime = self.runtime();
        for other in runtime.orchestrations.iter().filter(|p| p.is_running()) {
            if let Some(s) = start
                .versions
                .keys()
                .find(|s| other.versions.contains_key(*s))
            {
                return Err(DeployError::NotAllowed {
                    reason: format!("plan {} is running for '{s}'; abort it first", other.id),
                });
            }
        }
        let now = unix_now();
        let before = runtime.clone();
        let seq = runtime.next_plan_seq + 1;
        let mut plan = orchestration::new(start, seq, now);
        let mut engine = RuntimeEngine::new(&config, &mut runtime, now, actor);
        // Every service's canary must be possible now (its version exists, nothing
        // else runs for it), not only the first phase's.
        for (service, version) in &plan.versions {
            engine
                .canary(&plan, service, version)
                .map_err(|e| match e {
                    DeployError::Invalid { reason, .. } => {
                        invalid(format!("versions.{service}"), reason)
                    }
                    other => other,
                })?;
        }
        orchestration::advance(&mut plan, &mut engine, now);
        let events = std::mem::take(&mut engine.events);
        runtime.next_plan_seq = seq;
        runtime.orchestrations.push(plan.clone());
        self.commit(&mut runtime, before)?;
        tracing::info!(plan = %plan.id, summary = %plan.summary(), "plan started");
        self.publish(&runtime, &events);
        Ok(plan)
    }

    /// Moves every running plan on (after the deployments' own tick); returns the
    /// deployment events and whether a plan changed.
    pub(super) fn advance_plans(
        &self,
        config: &LoadedConfig,
        runtime: &mut PersistedState,
        now: f64,
    ) -> (Vec<deploy::Event>, bool) {
        let mut plans = std::mem::take(&mut runtime.orchestrations);
        let mut engine = RuntimeEngine::new(config, runtime, now, Actor::Agent);
        let mut changed = false;
        for plan in plans.iter_mut().filter(|p| p.is_running()) {
            if orchestration::advance(plan, &mut engine, now) {
                tracing::info!(plan = %plan.id, summary = %plan.summary(), "plan event");
                changed = true;
            }
        }
        let events = engine.events;
        runtime.orchestrations = plans;
        (events, changed)
    }

    /// Aborts plan `id`: its running phase's canaries are aborted.
    pub fn abort_plan(&self, id: &str, actor: Actor) -> Result<Plan, DeployError> {
        let config = self.live.get();
        let mut runtime = self.runtime();
        let before = runtime.clone();
        let mut plans = std::mem::take(&mut runtime.orchestrations);
        let Some(plan) = plans.iter_mut().find(|p| p.id == id) else {
            runtime.orchestrations = plans;
            return Err(DeployError::UnknownPlan { id: id.to_owned() });
        };
        let now = unix_now();
        let mut engine = RuntimeEngine::new(&config, &mut runtime, now, actor);
        let result = orchestration::abort(plan, &mut engine, now);
        let events = std::mem::take(&mut engine.events);
        let plan = plan.clone();
        runtime.orchestrations = plans;
        if let Err(reason) = result {
            *runtime = before;
            return Err(DeployError::NotAllowed { reason });
        }
        self.commit(&mut runtime, before)?;
        self.publish(&runtime, &events);
        Ok(plan)
    }

    /// Newest first.
    pub fn plans(&self) -> Vec<Plan> {
        self.with_state(|r| r.orchestrations.iter().rev().cloned().collect())
    }

    pub fn plan(&self, id: &str) -> Result<Plan, DeployError> {
        self.with_state(|r| r.orchestrations.iter().find(|p| p.id == id).cloned())
            .ok_or_else(|| DeployError::UnknownPlan { id: id.to_owned() })
    }
}
