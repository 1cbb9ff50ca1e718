//! Deployments as clients see them: states, strategies, the view, actions and events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{params::StepParams, time::rfc3339_unix};

wire_enum! {
    /// A deployment's state. `progressing`, `paused` (by hand) and `awaiting_approval`
    /// (at max_traffic) are running; the others are final.
    pub enum DeployState {
        Progressing = "progressing",
        Paused = "paused",
        AwaitingApproval = "awaiting_approval",
        Completed = "completed",
        RolledBack = "rolled_back",
        Aborted = "aborted",
        Failed = "failed",
    }
}

impl DeployState {
    /// Still running: progressing, paused or awaiting approval.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            DeployState::Progressing | DeployState::Paused | DeployState::AwaitingApproval
        )
    }
}

wire_enum! {
    /// A tenant's deployment strategy.
    pub enum Strategy {
        Canary = "canary",
        BlueGreen = "blue_green",
        /// A canary that goes all the way without approval.
        Rolling = "rolling",
    }
}

wire_enum! {
    /// How a blue/green switch moves traffic.
    pub enum SwitchStrategy {
        /// All at once.
        Instant = "instant",
        /// In steps, like a canary.
        Gradual = "gradual",
    }
}

wire_enum! {
    /// The analysis of the current step.
    pub enum Verdict {
        Pass = "pass",
        Fail = "fail",
        Inconclusive = "inconclusive",
    }
}

wire_enum! {
    /// `POST /deployments/{id}/{action}`.
    pub enum Action {
        Promote = "promote",
        Abort = "abort",
        Rollback = "rollback",
        Pause = "pause",
        Resume = "resume",
    }
}

wire_enum! {
    /// Who made a history step: the admin API's admin token, the signed CI webhook,
    /// or the agent's own engine (steps, holds, automatic rollbacks).
    pub enum Actor {
        AdminToken = "admin_token",
        Webhook = "webhook",
        Agent = "agent",
    }
}

wire_enum! {
    /// A notification's `event`.
    pub enum EventKind {
        Started = "started",
        Step = "step",
        Paused = "paused",
        Promoted = "promoted",
        RolledBack = "rolled_back",
        Aborted = "aborted",
        Failed = "failed",
    }
}

/// A Prometheus query a deployment's analysis must pass too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrometheusQuery {
    pub address: String,
    pub query: String,
}

/// The view's type for a step parameter's kind: durations in seconds.
macro_rules! view_type {
    (percent) => {
        f64
    };
    (threshold) => {
        f64
    };
    (duration) => {
        f64
    };
    (timeout) => {
        f64
    };
    (count) => {
        u64
    };
    (flag) => {
        bool
    };
}

/// Declares [`DeploymentParams`] from [`with_step_params!`](crate::with_step_params)'s list.
macro_rules! deployment_params {
    ($(
        $group:ident { $( { [$(#[$doc:meta])*] $name:ident $field:ident $kind:ident [$($req:ident)?] } )* }
    )*) => {
        /// The step parameters in force (request, else the tenant's config, else defaults).
        /// Thresholds are percentages (0–100), as in requests and the config; durations
        /// are seconds.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct DeploymentParams {
            $($(
                $(#[$doc])*
                pub $field: Option<view_type!($kind)>,
            )*)*
            /// Blue/green: how long connections on the old side may keep it after a
            /// completed switch (`switch_config.drain_timeout`).
            pub drain_timeout_seconds: Option<f64>,
            /// A Prometheus query that must pass too (`canary_config.analysis.prometheus`).
            pub prometheus: Option<PrometheusQuery>,
        }

        impl DeploymentParams {
            /// The step parameters' names as sent, in the order of their fields here.
            pub const STEP_PARAMS: &'static [&'static str] = &[$($(stringify!($name)),*),*];
        }
    };
}

crate::with_step_params!(deployment_params);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Analysis {
    /// Successes / samples (0–1) in the current step; None without samples.
    pub success_rate: Option<f64>,
    pub samples: u64,
    pub verdict: Option<Verdict>,
    /// Where the samples come from (health probes, TCP handshakes ...).
    pub source: String,
}

/// One entry of a deployment's history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    /// RFC 3339 (UTC).
    pub at: String,
    pub canary_percent: f64,
    pub state: DeployState,
    pub reason: String,
    /// Who acted; a step recorded before the audit trail existed reads as `agent`.
    #[serde(default = "agent")]
    pub actor: Actor,
}

fn agent() -> Actor {
    Actor::Agent
}

impl Step {
    /// `at` as Unix seconds.
    pub fn unix(&self) -> Option<f64> {
        rfc3339_unix(&self.at)
    }
}

/// A deployment as `GET /deployments/{id}` shows it, without the agent's own
/// bookkeeping. A field an older agent leaves out reads as its default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
    pub strategy: Strategy,
    /// The version rolled out (None for a switch by environment only).
    pub version: Option<String>,
    pub state: DeployState,
    /// Share (0–100) of new connections the new backends get.
    pub canary_percent: f64,
    pub stable_backends: Vec<String>,
    pub canary_backends: Vec<String>,
    pub from_environment: Option<String>,
    pub to_environment: Option<String>,
    pub params: DeploymentParams,
    pub analysis: Analysis,
    pub history: Vec<Step>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// The webhook's `pipeline`, kept verbatim.
    pub pipeline: Option<Value>,
}

impl Deployment {
    /// Still running (progressing, paused or awaiting approval).
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// The reason of the latest history entry, if any.
    pub fn last_reason(&self) -> Option<&str> {
        self.history.last().map(|s| s.reason.as_str())
    }

    /// One line: state, percentage and the last reason.
    pub fn summary(&self) -> String {
        format!(
            "{} {} at {}%: {}",
            self.id,
            self.state,
            self.canary_percent,
            self.last_reason().unwrap_or("")
        )
    }

    /// The whole history, one step a line.
    pub fn history_table(&self) -> String {
        self.history
            .iter()
            .map(|s| {
                format!(
                    "  {}  {:<17} {:>5}%  {}",
                    s.at,
                    s.state.name(),
                    s.canary_percent,
                    s.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The distinct percentages the history went through, in order.
    pub fn percent_steps(&self) -> Vec<f64> {
        let mut steps: Vec<f64> = Vec::new();
        for s in &self.history {
            if steps.last() != Some(&s.canary_percent) {
                steps.push(s.canary_percent);
            }
        }
        steps
    }
}

/// `GET /deployments`: newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

/// The 202 answer to a deployment start (API or webhook).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Accepted {
    pub deployment_id: String,
    pub deployment: Deployment,
}

/// `POST /deployments/canary`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryRequest {
    /// The tenant.
    pub service: String,
    /// `labels.version` of the canary backends.
    pub version: String,
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Value>,
}

/// `POST /deployments/blue-green/switch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchRequest {
    /// The tenant.
    pub service: String,
    /// The environment taking traffic now (default: the tenant's active one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The environment to switch to.
    pub to: String,
    /// Default: the tenant's switch_config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<SwitchStrategy>,
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Value>,
}

/// The body a CI pipeline sends to `POST /webhooks/deployment` (signed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentWebhook {
    /// The tenant's name.
    pub service: String,
    /// `labels.version` of the backends to roll out.
    pub version: String,
    pub strategy: Strategy,
    /// Target environment, e.g. `green` for a blue/green switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Pipeline metadata (e.g. `{id, url, commit, triggered_by}`), kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Value>,
    /// Step parameters, and `switch_strategy` for blue_green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<WebhookConfig>,
}

/// A webhook's `config`: the step parameters and how a switch moves traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_strategy: Option<SwitchStrategy>,
}

/// What the agent POSTs to each `notifications:` target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notification {
    pub event: EventKind,
    pub deployment: Deployment,
    /// RFC 3339 (UTC).
    pub sent_at: String,
}

/// `POST /tenants/{name}/weights`: backend (service) name → weight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightsRequest {
    pub weights: BTreeMap<String, u32>,
}
