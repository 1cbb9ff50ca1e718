//! The deployment engine's model and state machine: canary, blue/green and manual
//! traffic plans. Pure logic driven by `tick(now, signals)`; the agent supplies the
//! signals (health probes, the data plane's L4 counters), applies the resulting
//! weights, persists the state, and sends the events.

use std::collections::BTreeMap;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    Progressing,
    Paused,
    AwaitingApproval,
    Completed,
    RolledBack,
    Aborted,
    Failed,
}

impl DeployState {
    pub const ALL: [DeployState; 7] = [
        DeployState::Progressing,
        DeployState::Paused,
        DeployState::AwaitingApproval,
        DeployState::Completed,
        DeployState::RolledBack,
        DeployState::Aborted,
        DeployState::Failed,
    ];

    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeployState::Progressing | DeployState::Paused | DeployState::AwaitingApproval
        )
    }

    /// The notification event a transition into this state sends.
    pub fn event(self) -> &'static str {
        match self {
            DeployState::Progressing => "step",
            DeployState::Paused | DeployState::AwaitingApproval => "paused",
            DeployState::Completed => "promoted",
            DeployState::RolledBack => "rolled_back",
            DeployState::Aborted => "aborted",
            DeployState::Failed => "failed",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeployState::Progressing => "progressing",
            DeployState::Paused => "paused",
            DeployState::AwaitingApproval => "awaiting_approval",
            DeployState::Completed => "completed",
            DeployState::RolledBack => "rolled_back",
            DeployState::Aborted => "aborted",
            DeployState::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub success_rate: Option<f64>,
    pub samples: u64,
    pub verdict: Option<Verdict>,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at: String,
    pub canary_percent: f64,
    pub state: DeployState,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
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
    pub kind: &'static str,
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
    /// A deployment started at `now` (the tenant's `seq`-th), its first history
    /// entry saying `reason`. A blue/green switch starts at 0% until validated.
    pub fn new(start: Start, seq: u64, now: f64, reason: &str) -> Deployment {
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
        d.record(now, reason);
        d
    }

    fn record(&mut self, now: f64, reason: impl Into<String>) {
        let step = Step {
            at: rfc3339(now),
            canary_percent: self.canary_percent,
            state: self.state,
            reason: reason.into(),
        };
        self.updated_at = step.at.clone();
        if !self.state.is_active() {
            self.finished_at = Some(step.at.clone());
            self.finished_unix = Some(now);
        }
        self.history.push(step);
    }

    /// Moves to `state` at `percent`, recording why; returns the event.
    fn transition(
        &mut self,
        now: f64,
        state: DeployState,
        percent: f64,
        reason: impl Into<String>,
    ) -> Event {
        self.state = state;
        self.canary_percent = percent;
        self.baseline = None;
        self.next_step_at = now + self.params.interval_seconds;
        self.record(now, reason);
        Event {
            deployment_id: self.id.clone(),
            kind: state.event(),
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
                    self.record(now, holding);
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

    /// Operator actions. Errors say why the action does not apply in this state.
    pub fn act(&mut self, now: f64, action: Action) -> Result<Event, String> {
        use DeployState::*;
        let state = self.state;
        let not_allowed = || {
            format!(
                "cannot {} a deployment that is {}",
                action.name(),
                state.name()
            )
        };
        let event = match (action, state) {
            (Action::Promote, Progressing | Paused | AwaitingApproval) => {
                self.transition(now, Completed, 100.0, "promoted by operator")
            }
            (Action::Abort, Progressing | Paused | AwaitingApproval) => {
                self.transition(now, Aborted, 0.0, "aborted by operator")
            }
            (Action::Rollback, Progressing | Paused | AwaitingApproval | Completed) => {
                self.transition(now, RolledBack, 0.0, "rolled back by operator")
            }
            (Action::Pause, Progressing) => {
                let p = self.canary_percent;
                self.transition(now, Paused, p, "paused by operator")
            }
            (Action::Resume, Paused) => {
                let p = self.canary_percent;
                self.transition(now, Progressing, p, "resumed by operator")
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    Abort,
    Rollback,
    Pause,
    Resume,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            "rollback" => Action::Rollback,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Rollback => "roll back",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ForwardingMode, PrometheusQuery, Protocol, Stickiness};

    fn tenant() -> ResolvedTenant {
        let svc = |name: &str, weight, env: &str, version: &str| ResolvedService {
            name: name.into(),
            address: "198.18.11.2:8080".parse().unwrap(),
            weight,
            environment: Some(env.into()),
            version: version.into(),
            health: None,
        };
        ResolvedTenant {
            name: "web".into(),
            vip: "198.18.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            mode: ForwardingMode::Nat,
            stickiness: Stickiness::None,
            ring_size: 65537,
            strategy: Strategy::Canary,
            services: vec![
                svc("blue-1", 3, "blue", "1.0"),
                svc("blue-2", 1, "blue", "1.0"),
                svc("green", 0, "green", "1.1"),
            ],
            active_environment: None,
            canary_config: None,
            switch_config: None,
        }
    }

    fn canary(params: Params) -> Deployment {
        Deployment {
            id: "d1".into(),
            tenant: "web".into(),
            strategy: Strategy::Canary,
            version: Some("1.1".into()),
            state: DeployState::Progressing,
            canary_percent: params.initial_traffic,
            stable_backends: vec!["blue-1".into(), "blue-2".into()],
            canary_backends: vec!["green".into()],
            from_environment: None,
            to_environment: None,
            next_step_at: params.interval_seconds,
            params,
            analysis: Analysis::default(),
            history: Vec::new(),
            started_at: rfc3339(0.0),
            updated_at: rfc3339(0.0),
            finished_at: None,
            pipeline: None,
            started_unix: 0.0,
            finished_unix: None,
            validated: false,
            baseline: None,
        }
    }

    fn params() -> Params {
        Params {
            initial_traffic: 10.0,
            increment: 30.0,
            interval_seconds: 2.0,
            max_traffic: 100.0,
            health_threshold: 0.95,
            rollback_threshold: 0.9,
            min_samples: 5,
            validation_timeout_seconds: None,
            rollback_on_failure: true,
            drain_timeout_seconds: None,
            prometheus: None,
        }
    }

    fn ok(n: u64) -> Signals {
        Signals {
            probes: Samples { ok: n, failed: 0 },
            ..Default::default()
        }
    }

    #[test]
    fn weights_split_by_plan_and_configured_weight() {
        let t = tenant();
        assert_eq!(effective_weights(&t, None, None), [3, 1, 0]);
        let plan = TrafficPlan::Split {
            from: vec!["blue-1".into(), "blue-2".into()],
            to: vec!["green".into()],
            to_percent: 10.0,
        };
        let w = effective_weights(&t, None, Some(&plan));
        assert_eq!(w, [675_000, 225_000, 100_000]);
        let mut bg = t.clone();
        bg.strategy = Strategy::BlueGreen;
        assert_eq!(
            effective_weights(&bg, Some("green"), None),
            [0, 0, 1_000_000],
            "all-zero group splits equally"
        );
        let manual = TrafficPlan::Manual {
            weights: BTreeMap::from([("green".to_owned(), 7)]),
            reason: None,
        };
        assert_eq!(effective_weights(&t, None, Some(&manual)), [0, 0, 7]);
    }

    #[test]
    fn healthy_canary_steps_on_schedule_and_promotes_itself() {
        let mut d = canary(params());
        let mut percents = vec![d.canary_percent];
        let mut t = 0.0;
        let mut probes = 0;
        while d.state == DeployState::Progressing && t < 20.0 {
            t += 0.5;
            probes += 2;
            for e in d.tick(t, &ok(probes)) {
                assert!(matches!(e.kind, "step" | "promoted"), "{e:?}");
                percents.push(d.canary_percent);
            }
        }
        assert_eq!(percents, [10.0, 40.0, 70.0, 100.0]);
        assert_eq!(d.state, DeployState::Completed);
        assert!(d.finished_at.is_some());
        assert!(
            d.history
                .last()
                .unwrap()
                .reason
                .starts_with("promoted: success rate 100.0%"),
            "{:?}",
            d.history
        );
    }

    #[test]
    fn failing_canary_rolls_back_at_once() {
        let mut d = canary(params());
        d.tick(0.5, &ok(0)); // baseline
        let bad = Signals {
            probes: Samples { ok: 2, failed: 8 },
            ..Default::default()
        };
        let events = d.tick(1.0, &bad);
        assert_eq!(
            events,
            [Event {
                deployment_id: "d1".into(),
                kind: "rolled_back"
            }]
        );
        assert_eq!((d.state, d.canary_percent), (DeployState::RolledBack, 0.0));
        assert!(
            d.history
                .last()
                .unwrap()
                .reason
                .contains("success rate 20.0%")
        );
        // Health checks marking every canary backend down is enough on its own.
        let mut d = canary(params());
        let events = d.tick(
            0.5,
            &Signals {
                all_down: true,
                ..Default::default()
            },
        );
        assert_eq!(events[0].kind, "rolled_back");
    }

    #[test]
    fn too_few_samples_hold_the_step() {
        let mut d = canary(params());
        d.tick(0.1, &ok(0));
        assert!(d.tick(2.5, &ok(3)).is_empty(), "3 < min_samples 5");
        assert_eq!(d.canary_percent, 10.0);
        assert_eq!(d.analysis.verdict, Some(Verdict::Inconclusive));
        assert!(
            d.history
                .last()
                .unwrap()
                .reason
                .contains("inconclusive: 3 samples < min_samples 5")
        );
        d.tick(3.0, &ok(4));
        assert_eq!(d.history.len(), 1, "the same hold is recorded once");
        let events = d.tick(3.5, &ok(6));
        assert_eq!(events[0].kind, "step");
        assert_eq!(d.canary_percent, 40.0);
    }

    #[test]
    fn max_traffic_waits_for_approval_and_operator_actions_follow_state() {
        let mut d = canary(Params {
            max_traffic: 40.0,
            ..params()
        });
        d.tick(0.1, &ok(0));
        d.tick(2.5, &ok(10));
        assert_eq!(d.canary_percent, 40.0);
        let events = d.tick(5.0, &ok(20));
        assert_eq!(events[0].kind, "paused");
        assert_eq!(d.state, DeployState::AwaitingApproval);
        assert!(d.tick(9.0, &ok(40)).is_empty(), "no steps while waiting");
        assert_eq!(
            d.act(9.5, Action::Resume).unwrap_err(),
            "cannot resume a deployment that is awaiting_approval"
        );
        assert_eq!(d.act(10.0, Action::Promote).unwrap().kind, "promoted");
        assert_eq!((d.state, d.canary_percent), (DeployState::Completed, 100.0));
        assert!(d.act(11.0, Action::Abort).is_err());
        assert_eq!(d.act(12.0, Action::Rollback).unwrap().kind, "rolled_back");
        assert_eq!(d.canary_percent, 0.0);
    }

    #[test]
    fn pause_and_resume() {
        let mut d = canary(params());
        d.act(0.5, Action::Pause).unwrap();
        assert!(d.tick(5.0, &ok(100)).is_empty());
        d.act(6.0, Action::Resume).unwrap();
        d.tick(6.1, &ok(100));
        assert_eq!(d.tick(8.5, &ok(200))[0].kind, "step");
    }

    #[test]
    fn prometheus_gates_every_step() {
        let query = PrometheusQuery {
            address: "http://127.0.0.1:9090".into(),
            query: "x".into(),
        };
        let mut d = canary(Params {
            prometheus: Some(query),
            ..params()
        });
        d.tick(0.1, &ok(0));
        let with = |n, value| Signals {
            prometheus: value,
            ..ok(n)
        };
        assert!(
            d.tick(2.5, &with(10, None)).is_empty(),
            "no Prometheus data holds the step"
        );
        assert!(
            d.history
                .last()
                .unwrap()
                .reason
                .contains("prometheus at http://127.0.0.1:9090: no data yet")
        );
        assert_eq!(d.tick(3.0, &with(20, Some(0.99)))[0].kind, "step");
        let events = d.tick(3.5, &with(30, Some(0.5)));
        assert_eq!(
            events[0].kind, "rolled_back",
            "a failing query rolls back though probes pass"
        );
        assert!(
            d.history
                .last()
                .unwrap()
                .reason
                .contains("prometheus 0.500"),
            "{:?}",
            d.history
        );
        // Without probes or L4 samples (e.g. dsr), the query alone decides.
        let query = PrometheusQuery {
            address: "http://127.0.0.1:9090".into(),
            query: "x".into(),
        };
        let mut d = canary(Params {
            prometheus: Some(query),
            ..params()
        });
        d.tick(0.1, &Signals::default());
        let none = |v| Signals {
            prometheus: Some(v),
            ..Default::default()
        };
        assert_eq!(d.tick(2.5, &none(0.97))[0].kind, "step");
    }

    #[test]
    fn params_problems_are_named() {
        let p = Params {
            increment: 0.0,
            initial_traffic: 120.0,
            rollback_threshold: 0.99,
            ..params()
        };
        let fields: Vec<&str> = p.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "initial_traffic",
                "increment",
                "initial_traffic",
                "rollback_threshold"
            ]
        );
    }

    /// One rule: percentages 0–100; (0, 1] refused as ambiguous, quoting the text.
    #[test]
    fn thresholds_are_percentages_and_fractions_are_refused() {
        assert_eq!(threshold_rate(95.0, "95"), Ok(0.95));
        assert_eq!(threshold_rate(99.5, "99.5"), Ok(0.995));
        assert_eq!(threshold_rate(0.0, "0"), Ok(0.0));
        assert_eq!(threshold_rate(100.0, "100"), Ok(1.0));
        assert_eq!(
            threshold_rate(1.0, "1.0").unwrap_err(),
            "'1.0' reads like a fraction; thresholds are percentages from 0 to 100 (write 100 for 100 %), and values above 0 up to 1 are refused as ambiguous"
        );
        assert!(
            threshold_rate(0.95, "0.950")
                .unwrap_err()
                .starts_with("'0.950' reads like a fraction; thresholds are percentages from 0 to 100 (write 95 for 95 %)")
        );
        assert_eq!(
            threshold_rate(150.0, "150").unwrap_err(),
            "'150' is not a percentage from 0 to 100"
        );
        assert!(threshold_rate(f64::NAN, "nan").is_err());
    }
}
