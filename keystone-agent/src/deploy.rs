//! The deployment engine's model and state machine: canary, blue/green and manual
//! traffic plans. Pure logic driven by `tick(now, signals)`; the agent supplies the
//! signals (health probes, the data plane's L4 counters), applies the resulting
//! weights, persists the state, and sends the events.

use std::collections::BTreeMap;

pub use keystone_api::{Action, Actor, Analysis, DeployState, EventKind, Step, Verdict};
use serde::{Deserialize, Serialize};

/// Step parameters and their rules live beside the config, which validates with
/// them; named here too, where the engine's users look for them.
pub use crate::config::{
    DEFAULT_INCREMENT, DEFAULT_INITIAL, DEFAULT_INTERVAL_SECS, DEFAULT_MIN_SAMPLES, Params,
    threshold_rate,
};
use crate::{
    clock::rfc3339,
    config::{ResolvedService, ResolvedTenant, Strategy},
};

/// Sum of effective weights in a tenant under a plan: fine-grained enough for
/// 0.01 % canary steps, small enough for Maglev's credit arithmetic.
pub const WEIGHT_SCALE: f64 = 1_000_000.0;
/// How many finished deployments are kept.
pub const HISTORY_LIMIT: usize = 100;
/// Most bytes of JSON a deployment's `pipeline` object may have.
pub const MAX_PIPELINE_BYTES: usize = 16 * 1024;

/// A deployment's `pipeline` object is kept verbatim with it (in the state file and
/// every answer about it), so past `MAX_PIPELINE_BYTES` of JSON it is refused.
pub fn check_pipeline(pipeline: Option<&serde_json::Value>) -> Result<(), String> {
    let size = pipeline.map_or(0, |p| p.to_string().len());
    if size > MAX_PIPELINE_BYTES {
        return Err(format!(
            "{size} bytes of JSON; at most {MAX_PIPELINE_BYTES} are kept with a deployment (send an id or a URL)"
        ));
    }
    Ok(())
}

/// The notification event a transition into `state` sends.
fn event_of(state: DeployState) -> EventKind {
    match state {
        DeployState::Progressing => EventKind::Step,
        DeployState::Paused | DeployState::AwaitingApproval => EventKind::Paused,
        DeployState::Completed => EventKind::Promoted,
        DeployState::RolledBack => EventKind::RolledBack,
        DeployState::Aborted => EventKind::Aborted,
        DeployState::Failed => EventKind::Failed,
        DeployState::Unknown => EventKind::Unknown,
    }
}

/// Successes and failures, cumulative; analysis works on differences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Samples {
    pub ok: u64,
    pub failed: u64,
}

impl Samples {
    pub fn since(self, base: Samples) -> Samples {
        Samples {
            ok: self.ok.saturating_sub(base.ok),
            failed: self.failed.saturating_sub(base.failed),
        }
    }
    pub fn total(self) -> u64 {
        self.ok + self.failed
    }
    pub fn plus(self, other: Samples) -> Samples {
        Samples {
            ok: self.ok + other.ok,
            failed: self.failed + other.failed,
        }
    }
}

/// What the agent measured about a deployment's new backends, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Active health probes of the new backends.
    pub probes: Samples,
    /// Passive L4 signals from the data plane (`nat` TCP only): handshakes answered
    /// vs SYNs sent.
    pub handshakes: Samples,
    /// Every new backend is marked down by its health checks.
    pub all_down: bool,
    /// Latest value of the deployment's Prometheus query (None: no data yet).
    pub prometheus: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
    /// A word this agent does not know makes the state file unreadable, as before.
    #[serde(deserialize_with = "keystone_api::known")]
    pub strategy: Strategy,
    pub version: Option<String>,
    pub state: DeployState,
    /// Share of new connections the new backends get.
    pub canary_percent: f64,
    pub stable_backends: Vec<String>,
    pub canary_backends: Vec<String>,
    pub from_environment: Option<String>,
    pub to_environment: Option<String>,
    pub params: Params,
    pub analysis: Analysis,
    pub history: Vec<Step>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub pipeline: Option<serde_json::Value>,
    /// Unix seconds when the current step may advance (wall clock, so a restarted
    /// agent resumes the same schedule).
    pub next_step_at: f64,
    /// Unix seconds the deployment started; for the duration metric.
    pub started_unix: f64,
    /// Unix seconds it finished (blue/green drain deadlines count from here).
    #[serde(default)]
    pub finished_unix: Option<f64>,
    /// Blue/green: the idle side has passed validation.
    #[serde(default)]
    pub validated: bool,
    /// Signal counters at the start of the current step (not persisted: a restarted
    /// agent starts a fresh measurement window).
    #[serde(skip)]
    pub baseline: Option<(Samples, Samples)>,
}

/// A state change worth an event, a log line and a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub deployment_id: String,
    pub kind: EventKind,
}

/// What a new deployment starts from; [`Deployment::new`] fills in the rest.
pub struct Start {
    pub tenant: String,
    pub strategy: Strategy,
    pub version: Option<String>,
    pub stable: Vec<String>,
    pub canary: Vec<String>,
    pub params: Params,
    pub pipeline: Option<serde_json::Value>,
    pub from_environment: Option<String>,
    pub to_environment: Option<String>,
}

impl Deployment {
    /// A deployment started at `now` (the tenant's `seq`-th) by `actor`, its first
    /// history entry saying `reason`. A blue/green switch starts at 0% until validated.
    pub fn new(start: Start, seq: u64, now: f64, reason: &str, actor: Actor) -> Deployment {
        let params = start.params;
        let canary_percent = match start.strategy {
            Strategy::BlueGreen => 0.0,
            _ => params.initial_traffic,
        };
        let mut d = Deployment {
            id: format!("{}-{}-{seq}", start.tenant, now as u64),
            tenant: start.tenant,
            strategy: start.strategy,
            version: start.version,
            state: DeployState::Progressing,
            canary_percent,
            stable_backends: start.stable,
            canary_backends: start.canary,
            from_environment: start.from_environment,
            to_environment: start.to_environment,
            next_step_at: now + params.interval_seconds,
            params,
            analysis: Default::default(),
            history: Vec::new(),
            started_at: rfc3339(now),
            updated_at: rfc3339(now),
            finished_at: None,
            pipeline: start.pipeline,
            started_unix: now,
            finished_unix: None,
            validated: false,
            baseline: None,
        };
        d.record(now, reason, actor);
        d
    }

    fn record(&mut self, now: f64, reason: impl Into<String>, actor: Actor) {
        let step = Step {
            at: rfc3339(now),
            canary_percent: self.canary_percent,
            state: self.state,
            reason: reason.into(),
            actor,
        };
        self.updated_at = step.at.clone();
        if !self.state.is_running() {
            self.finished_at = Some(step.at.clone());
            self.finished_unix = Some(now);
        }
        self.history.push(step);
    }

    /// The engine's own move to `state` at `percent`, recording why; returns the event.
    fn transition(
        &mut self,
        now: f64,
        state: DeployState,
        percent: f64,
        reason: impl Into<String>,
    ) -> Event {
        self.transition_by(now, state, percent, reason, Actor::Agent)
    }

    /// [`Self::transition`] made by `actor`.
    fn transition_by(
        &mut self,
        now: f64,
        state: DeployState,
        percent: f64,
        reason: impl Into<String>,
        actor: Actor,
    ) -> Event {
        self.state = state;
        self.canary_percent = percent;
        self.baseline = None;
        self.next_step_at = now + self.params.interval_seconds;
        self.record(now, reason, actor);
        Event {
            deployment_id: self.id.clone(),
            kind: event_of(state),
        }
    }

    fn analyse(&mut self, signals: &Signals) -> Verdict {
        let (probes_base, handshakes_base) = *self
            .baseline
            .get_or_insert((signals.probes, signals.handshakes));
        let probes = signals.probes.since(probes_base);
        let handshakes = signals.handshakes.since(handshakes_base);
        let all = probes.plus(handshakes);
        let mut source = Vec::new();
        if probes.total() > 0 {
            source.push(format!("health probes {}/{}", probes.ok, probes.total()));
        }
        if handshakes.total() > 0 {
            source.push(format!(
                "tcp handshakes {}/{}",
                handshakes.ok,
                handshakes.total()
            ));
        }
        let rate = (all.total() > 0).then(|| all.ok as f64 / all.total() as f64);
        let judge = |rate: f64| {
            if rate < self.params.rollback_threshold {
                Verdict::Fail
            } else if rate >= self.params.health_threshold {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            }
        };
        // Each source gives a verdict; any failure fails, every source must pass.
        let mut verdicts = Vec::new();
        if signals.all_down {
            source.insert(0, "every new backend is failing its health checks".into());
            verdicts.push(Verdict::Fail);
        }
        if let Some(query) = &self.params.prometheus {
            match signals.prometheus {
                Some(value) => {
                    source.push(format!("prometheus {value:.3}"));
                    verdicts.push(judge(value));
                }
                None => {
                    source.push(format!("prometheus at {}: no data yet", query.address));
                    verdicts.push(Verdict::Inconclusive);
                }
            }
        }
        // With a Prometheus query, a deployment without probes or L4 signals (e.g.
        // dsr) is judged by the query alone.
        if all.total() > 0 || self.params.prometheus.is_none() {
            verdicts.push(match rate {
                _ if all.total() < self.params.min_samples => Verdict::Inconclusive,
                Some(rate) => judge(rate),
                None => Verdict::Inconclusive,
            });
        }
        let verdict = if verdicts.contains(&Verdict::Fail) {
            Verdict::Fail
        } else if verdicts.iter().all(|v| *v == Verdict::Pass) {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        };
        self.analysis = Analysis {
            success_rate: rate,
            samples: all.total(),
            verdict: Some(verdict),
            source: if source.is_empty() {
                "no samples yet".into()
            } else {
                source.join(", ")
            },
        };
        verdict
    }

    fn verdict_reason(&self) -> String {
        let a = &self.analysis;
        match (a.verdict, a.success_rate) {
            (Some(Verdict::Fail), _) if a.source.starts_with("every new backend") => {
                a.source.clone()
            }
            (Some(Verdict::Inconclusive), _) if a.samples < self.params.min_samples => {
                format!(
                    "inconclusive: {} samples < min_samples {}; holding",
                    a.samples, self.params.min_samples
                )
            }
            (_, Some(rate)) => format!(
                "success rate {:.1}% over {} samples ({})",
                rate * 100.0,
                a.samples,
                a.source
            ),
            _ => a.source.clone(),
        }
    }

    /// Advances the deployment; returns the events it produced.
    pub fn tick(&mut self, now: f64, signals: &Signals) -> Vec<Event> {
        let events = self.advance(now, signals);
        if !events.is_empty() {
            // A new step measures from here.
            self.baseline = Some((signals.probes, signals.handshakes));
        }
        events
    }

    fn advance(&mut self, now: f64, signals: &Signals) -> Vec<Event> {
        let mut events = Vec::new();
        match self.state {
            DeployState::Progressing | DeployState::AwaitingApproval => {}
            _ => return events,
        }
        if self.strategy == Strategy::BlueGreen && !self.validated {
            return events; // the agent's validation decides (see `validation_done`)
        }
        let verdict = self.analyse(signals);
        if verdict == Verdict::Fail {
            let back_to =
                if self.strategy == Strategy::BlueGreen && !self.params.rollback_on_failure {
                    None
                } else {
                    Some(0.0)
                };
            let reason = format!("rolled back: {}", self.verdict_reason());
            match back_to {
                Some(p) => events.push(self.transition(now, DeployState::RolledBack, p, reason)),
                None => {
                    let percent = self.canary_percent;
                    events.push(self.transition(
                        now,
                        DeployState::Failed,
                        percent,
                        format!(
                            "failed (rollback_on_failure is off): {}",
                            self.verdict_reason()
                        ),
                    ));
                }
            }
            return events;
        }
        if self.state != DeployState::Progressing || now < self.next_step_at {
            return events;
        }
        // A blue/green switch watches the new side for one interval after the flip;
        // without a failure it is done (no samples is no evidence against it).
        if self.strategy == Strategy::BlueGreen && self.canary_percent >= 100.0 {
            let reason = format!("switch complete: {}", self.verdict_reason());
            events.push(self.transition(now, DeployState::Completed, 100.0, reason));
            return events;
        }
        match verdict {
            Verdict::Pass => {
                let target = (self.canary_percent + self.params.increment)
                    .min(self.params.max_traffic)
                    .min(100.0);
                let reason = self.verdict_reason();
                if self.canary_percent >= 100.0 || target >= 100.0 {
                    events.push(self.transition(
                        now,
                        DeployState::Completed,
                        100.0,
                        format!("promoted: {reason}"),
                    ));
                } else if self.canary_percent >= self.params.max_traffic {
                    events.push(self.transition(
                        now,
                        DeployState::AwaitingApproval,
                        self.canary_percent,
                        format!(
                            "reached max_traffic {}%: awaiting approval (promote); {reason}",
                            self.params.max_traffic
                        ),
                    ));
                } else {
                    events.push(self.transition(
                        now,
                        DeployState::Progressing,
                        target,
                        format!("step to {target}%: {reason}"),
                    ));
                }
            }
            _ => {
                // Hold the step; note it in the history once per distinct reason.
                let reason = self.verdict_reason();
                let holding = format!("holding at {}%: {reason}", self.canary_percent);
                let last = self.history.last().map(|s| s.reason.as_str()).unwrap_or("");
                if !same_kind(last, &holding) {
                    self.record(now, holding, Actor::Agent);
                }
            }
        }
        events
    }

    /// Blue/green: whether `service` (of the old side) has been drained out at `now`.
    pub fn drained(&self, service: &str, now: f64) -> bool {
        match (
            self.strategy,
            self.state,
            self.finished_unix,
            self.params.drain_timeout_seconds,
        ) {
            (Strategy::BlueGreen, DeployState::Completed, Some(done), Some(timeout)) => {
                now >= done + timeout && self.stable_backends.iter().any(|s| s == service)
            }
            _ => false,
        }
    }

    /// Ends an active deployment as failed (e.g. its backends left the config); the
    /// traffic goes back to the old side.
    pub fn fail(&mut self, now: f64, reason: impl Into<String>) -> Event {
        self.transition(now, DeployState::Failed, 0.0, reason)
    }

    /// Blue/green: the idle side's validation finished.
    pub fn validation_done(&mut self, now: f64, result: Result<(), String>) -> Vec<Event> {
        if self.state != DeployState::Progressing || self.validated {
            return Vec::new();
        }
        match result {
            Err(e) => vec![self.transition(
                now,
                DeployState::Failed,
                0.0,
                format!("validation of the idle side failed: {e}"),
            )],
            Ok(()) => {
                self.validated = true;
                // `instant` is one step of 100 %; the new side is then watched for one
                // interval (rolled back if it fails) before the switch completes.
                let percent = self
                    .params
                    .initial_traffic
                    .max(self.params.increment)
                    .min(100.0);
                vec![self.transition(
                    now,
                    DeployState::Progressing,
                    percent,
                    format!("idle side validated; switched {percent}% to it"),
                )]
            }
        }
    }

    /// Operator actions, made by `actor`. Errors say why the action does not apply in
    /// this state.
    pub fn act(&mut self, now: f64, action: Action, actor: Actor) -> Result<Event, String> {
        use DeployState::*;
        let state = self.state;
        let not_allowed = || {
            let verb = match action {
                Action::Rollback => "roll back",
                other => other.name(),
            };
            format!("cannot {verb} a deployment that is {}", state.name())
        };
        let event = match (action, state) {
            (Action::Promote, Progressing | Paused | AwaitingApproval) => {
                self.transition_by(now, Completed, 100.0, "promoted by operator", actor)
            }
            (Action::Abort, Progressing | Paused | AwaitingApproval) => {
                self.transition_by(now, Aborted, 0.0, "aborted by operator", actor)
            }
            (Action::Rollback, Progressing | Paused | AwaitingApproval | Completed) => {
                self.transition_by(now, RolledBack, 0.0, "rolled back by operator", actor)
            }
            (Action::Pause, Progressing) => {
                let p = self.canary_percent;
                self.transition_by(now, Paused, p, "paused by operator", actor)
            }
            (Action::Resume, Paused) => {
                let p = self.canary_percent;
                self.transition_by(now, Progressing, p, "resumed by operator", actor)
            }
            _ => return Err(not_allowed()),
        };
        Ok(event)
    }
}

/// Two history reasons of the same kind differ only in numbers.
fn same_kind(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        s.chars()
            .filter(|c| !c.is_ascii_digit() && *c != '.')
            .collect::<String>()
    };
    strip(a) == strip(b)
}

/// How a tenant's new connections are shared, when not simply by configured weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TrafficPlan {
    /// `to` gets `to_percent` % (split by configured weight within it), `from` the rest;
    /// services in neither get nothing.
    Split {
        from: Vec<String>,
        to: Vec<String>,
        to_percent: f64,
    },
    /// Explicit weights by service name (others get 0).
    Manual {
        weights: BTreeMap<String, u32>,
        /// Why, when not set through the API (e.g. recovered from the data plane).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl TrafficPlan {
    /// The plan a deployment implies in its current state.
    pub fn of(d: &Deployment) -> TrafficPlan {
        TrafficPlan::Split {
            from: d.stable_backends.clone(),
            to: d.canary_backends.clone(),
            to_percent: d.canary_percent,
        }
    }

    /// Drops the services `keep` says no to; returns their names.
    pub fn remove_services(&mut self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        let mut filter = |names: &mut Vec<String>| {
            names.retain(|n| {
                keep(n) || {
                    removed.push(n.clone());
                    false
                }
            })
        };
        match self {
            TrafficPlan::Split { from, to, .. } => {
                filter(from);
                filter(to);
            }
            TrafficPlan::Manual { weights, .. } => {
                let mut names: Vec<String> = weights.keys().cloned().collect();
                filter(&mut names);
                weights.retain(|n, _| names.contains(n));
            }
        }
        removed
    }

    /// Whether some service gets new connections under this plan.
    pub fn sends_traffic(&self) -> bool {
        match self {
            TrafficPlan::Split {
                from,
                to,
                to_percent,
            } => (*to_percent > 0.0 && !to.is_empty()) || (*to_percent < 100.0 && !from.is_empty()),
            TrafficPlan::Manual { weights, .. } => weights.values().any(|w| *w > 0),
        }
    }
}

/// Effective weight per service of `tenant` (same order as `tenant.services`).
pub fn effective_weights(
    tenant: &ResolvedTenant,
    active_environment: Option<&str>,
    plan: Option<&TrafficPlan>,
) -> Vec<u32> {
    let configured = |s: &ResolvedService| s.weight;
    match plan {
        None => match (tenant.strategy, active_environment) {
            (Strategy::BlueGreen, Some(env)) => {
                let active: Vec<String> = tenant
                    .services
                    .iter()
                    .filter(|s| s.environment.as_deref() == Some(env))
                    .map(|s| s.name.clone())
                    .collect();
                split(tenant, &[], &active, 100.0)
            }
            _ => tenant.services.iter().map(configured).collect(),
        },
        Some(TrafficPlan::Manual { weights, .. }) => tenant
            .services
            .iter()
            .map(|s| weights.get(&s.name).copied().unwrap_or(0))
            .collect(),
        Some(TrafficPlan::Split {
            from,
            to,
            to_percent,
        }) => split(tenant, from, to, *to_percent),
    }
}

fn split(tenant: &ResolvedTenant, from: &[String], to: &[String], to_percent: f64) -> Vec<u32> {
    let group_weight = |names: &[String], share: f64, s: &ResolvedService| -> u32 {
        if !names.contains(&s.name) || share <= 0.0 {
            return 0;
        }
        let members: Vec<&ResolvedService> = tenant
            .services
            .iter()
            .filter(|m| names.contains(&m.name))
            .collect();
        let total: u64 = members.iter().map(|m| m.weight as u64).sum();
        // Within a group, configured weights set the split; all-zero means equal.
        let fraction = if total == 0 {
            1.0 / members.len() as f64
        } else {
            s.weight as f64 / total as f64
        };
        (share / 100.0 * WEIGHT_SCALE * fraction).round() as u32
    };
    let to_percent = to_percent.clamp(0.0, 100.0);
    tenant
        .services
        .iter()
        .map(|s| group_weight(to, to_percent, s).max(group_weight(from, 100.0 - to_percent, s)))
        .collect()
}

mod view;

#[cfg(test)]
mod tests;
