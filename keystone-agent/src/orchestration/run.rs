//! A plan moved phase by phase over the deployment engine: each phase starts a canary
//! per service, completes when all of them completed, and fails when one of them
//! ends any other way. Pure: the engine is behind [`Engine`].

use keystone_api::{
    DeployState, OnFailure, PhaseState, Plan, PlanEvent, PlanPhase, PlanState, PlanStrategy,
};

use super::spec::Phase;
use crate::clock::rfc3339;

/// What a plan needs from the deployment engine. The controller implements it over
/// the runtime it persists, so a plan's changes and the deployments they start or
/// roll back are saved together (a restart neither repeats nor loses a start).
pub trait Engine {
    /// Deployment `id`'s state and latest reason; None when it is gone.
    fn state(&self, id: &str) -> Option<(DeployState, String)>;
    /// Starts a canary of `version` for tenant `service`; returns its id.
    fn start_canary(&mut self, plan: &Plan, service: &str, version: &str)
    -> Result<String, String>;
    /// Rolls deployment `id` back (running or completed).
    fn roll_back(&mut self, id: &str) -> Result<(), String>;
    /// Aborts running deployment `id`.
    fn abort(&mut self, id: &str) -> Result<(), String>;
}

/// What a plan starts from; [`new`] fills in the rest.
pub struct PlanStart {
    pub phases: Vec<Phase>,
    pub on_failure: OnFailure,
    pub dependencies: Vec<String>,
    pub versions: std::collections::BTreeMap<String, String>,
    pub params: keystone_api::StepParams,
    pub pipeline: Option<serde_json::Value>,
}

/// A plan (the `seq`-th) started at `now`; nothing runs until [`advance`].
pub fn new(start: PlanStart, seq: u64, now: f64) -> Plan {
    let mut plan = Plan {
        id: format!("plan-{seq}"),
        state: PlanState::Running,
        strategy: PlanStrategy::CoordinatedCanary,
        on_failure: start.on_failure,
        dependencies: start.dependencies,
        phases: start
            .phases
            .into_iter()
            .map(|(name, services)| PlanPhase {
                name,
                services,
                state: PhaseState::Pending,
                deployments: Default::default(),
            })
            .collect(),
        versions: start.versions,
        params: start.params,
        pipeline: start.pipeline,
        started_at: rfc3339(now),
        ..Plan::default()
    };
    record(&mut plan, now, "started");
    plan
}

fn record(plan: &mut Plan, now: f64, reason: impl Into<String>) {
    plan.updated_at = rfc3339(now);
    if !plan.is_running() {
        plan.finished_at = Some(plan.updated_at.clone());
    }
    plan.history.push(PlanEvent {
        at: plan.updated_at.clone(),
        state: plan.state,
        reason: reason.into(),
    });
}

/// How a running phase stands.
enum Outcome {
    Running,
    Completed,
    Failed(String),
}

fn outcome(phase: &PlanPhase, engine: &dyn Engine) -> Outcome {
    let mut all_completed = true;
    for (service, id) in &phase.deployments {
        match engine.state(id) {
            None => return Outcome::Failed(format!("{service}'s canary {id} is gone")),
            Some((DeployState::Completed, _)) => {}
            Some((state, _)) if state.is_running() => all_completed = false,
            Some((state, reason)) => {
                return Outcome::Failed(format!("{service}'s canary {id} {state}: {reason}"));
            }
        }
    }
    if all_completed {
        Outcome::Completed
    } else {
        Outcome::Running
    }
}

/// Moves `plan` on as far as its deployments allow; returns whether it changed.
pub fn advance(plan: &mut Plan, engine: &mut dyn Engine, now: f64) -> bool {
    let mut changed = false;
    while plan.is_running() {
        let Some(i) = plan
            .phases
            .iter()
            .position(|p| p.state != PhaseState::Completed)
        else {
            plan.state = PlanState::Completed;
            record(plan, now, "every phase completed");
            return true;
        };
        match plan.phases[i].state {
            PhaseState::Pending => {
                start_phase(plan, i, engine, now);
                changed = true;
            }
            PhaseState::Running => match outcome(&plan.phases[i], engine) {
                Outcome::Running => break,
                Outcome::Completed => {
                    plan.phases[i].state = PhaseState::Completed;
                    let name = plan.phases[i].name.clone();
                    record(plan, now, format!("{name} completed"));
                    changed = true;
                }
                Outcome::Failed(reason) => {
                    fail(plan, i, engine, now, reason);
                    return true;
                }
            },
            // A running plan has no finished phase but completed ones.
            _ => break,
        }
    }
    changed
}

/// Starts a canary for each service of phase `i`; one that cannot start fails it.
fn start_phase(plan: &mut Plan, i: usize, engine: &mut dyn Engine, now: f64) {
    plan.phases[i].state = PhaseState::Running;
    for service in plan.phases[i].services.clone() {
        let version = plan.versions.get(&service).cloned().unwrap_or_default();
        match engine.start_canary(plan, &service, &version) {
            Ok(id) => {
                plan.phases[i].deployments.insert(service, id);
            }
            Err(e) => {
                let reason = format!("cannot start {service}'s canary of {version}: {e}");
                return fail(plan, i, engine, now, reason);
            }
        }
    }
    let phase = &plan.phases[i];
    let started: Vec<String> = phase
        .deployments
        .iter()
        .map(|(s, id)| format!("{s} ({id})"))
        .collect();
    let reason = format!("{} started: {}", phase.name, started.join(", "));
    record(plan, now, reason);
}

/// Rolls phase `i` back (and, with `rollback_all`, every earlier one) and ends the plan.
fn fail(plan: &mut Plan, i: usize, engine: &mut dyn Engine, now: f64, why: String) {
    let rollback_all = plan.on_failure == OnFailure::RollbackAll;
    let mut rolled = Vec::new();
    let mut troubles = Vec::new();
    for j in (0..=i).rev().take(if rollback_all { i + 1 } else { 1 }) {
        let phase = &mut plan.phases[j];
        for id in phase.deployments.values() {
            let live = engine
                .state(id)
                .is_some_and(|(s, _)| s.is_running() || s == DeployState::Completed);
            if live && let Err(e) = engine.roll_back(id) {
                troubles.push(format!("cannot roll back {id}: {e}"));
            }
        }
        phase.state = PhaseState::RolledBack;
        rolled.push(phase.name.clone());
    }
    let failed = &plan.phases[i].name;
    let mut reason = format!("{failed} failed: {why}; rolled back {}", rolled.join(", "));
    if rollback_all {
        plan.state = PlanState::RolledBack;
        reason.push_str(" (on_failure: rollback_all)");
    } else {
        plan.state = PlanState::Held;
        let kept: Vec<&str> = plan.phases[..i].iter().map(|p| p.name.as_str()).collect();
        if !kept.is_empty() {
            reason.push_str(&format!("; {} held (on_failure: hold)", kept.join(", ")));
        }
    }
    for t in troubles {
        reason.push_str("; ");
        reason.push_str(&t);
    }
    record(plan, now, reason);
}

/// Aborts a running plan: its running phase's canaries are aborted, earlier phases
/// keep their version.
pub fn abort(plan: &mut Plan, engine: &mut dyn Engine, now: f64) -> Result<(), String> {
    if !plan.is_running() {
        return Err(format!("cannot abort a plan that is {}", plan.state));
    }
    let mut reason = "aborted by operator".to_owned();
    if let Some(phase) = plan
        .phases
        .iter_mut()
        .find(|p| p.state == PhaseState::Running)
    {
        reason.push_str(&format!(" in {}", phase.name));
        for id in phase.deployments.values() {
            let running = engine.state(id).is_some_and(|(s, _)| s.is_running());
            if running && let Err(e) = engine.abort(id) {
                reason.push_str(&format!("; cannot abort {id}: {e}"));
            }
        }
        phase.state = PhaseState::Aborted;
    }
    plan.state = PlanState::Aborted;
    record(plan, now, reason);
    Ok(())
}
