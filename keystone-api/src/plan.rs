//! Coordinated multi-service rollouts (the seed's `deployment_orchestration`): the plan
//! as written, the request that starts one, and the plan as the API shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::params::StepParams;

wire_enum! {
    /// How a plan moves its services; the seed's one strategy.
    pub enum PlanStrategy {
        /// Each phase is a canary of each of its services.
        CoordinatedCanary = "coordinated_canary",
    }
}

wire_enum! {
    /// What a failed phase does to the phases before it (the failed one is always
    /// rolled back).
    pub enum OnFailure {
        /// Earlier phases keep their new version; the plan stops (`held`).
        Hold = "hold",
        /// Earlier phases are rolled back too (`rolled_back`).
        RollbackAll = "rollback_all",
    }
}

wire_enum! {
    /// A plan's state: `running`, else final.
    pub enum PlanState {
        Running = "running",
        Completed = "completed",
        /// A phase failed and was rolled back; the earlier ones kept their version.
        Held = "held",
        /// A phase failed; it and every earlier one were rolled back.
        RolledBack = "rolled_back",
        Aborted = "aborted",
    }
}

wire_enum! {
    /// One phase's state.
    pub enum PhaseState {
        Pending = "pending",
        Running = "running",
        Completed = "completed",
        RolledBack = "rolled_back",
        Aborted = "aborted",
    }
}

/// The seed's `deployment_orchestration` block, field for field (config and API).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Orchestration {
    /// The tenants the plan moves.
    pub services: Vec<String>,
    /// Default (and only): `coordinated_canary`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PlanStrategy>,
    /// `a → b` (or `a -> b`): `b` starts only after `a` completed.
    pub dependencies: Vec<String>,
    /// Phases in order, each `{phase_name: [services]}`; left out, the phases follow
    /// from the dependencies (each service as early as they allow).
    pub rollout_plan: Vec<BTreeMap<String, Vec<String>>>,
    /// Default `hold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// `POST /deployments/plans`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// The plan; default: the config's `deployment_orchestration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration: Option<Orchestration>,
    /// `labels.version` of every service's canary ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// ... or per service (wins over `version`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
    /// Step parameters of every canary (default: each tenant's canary_config).
    #[serde(flatten)]
    pub params: StepParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Value>,
}

/// One phase of a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanPhase {
    pub name: String,
    pub services: Vec<String>,
    pub state: PhaseState,
    /// Service → the id of the canary this phase started for it.
    pub deployments: BTreeMap<String, String>,
}

/// One entry of a plan's history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanEvent {
    /// RFC 3339 (UTC).
    pub at: String,
    pub state: PlanState,
    pub reason: String,
}

/// A plan as `GET /deployments/plans/{id}` shows it (and as the agent keeps it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    pub id: String,
    pub state: PlanState,
    pub strategy: PlanStrategy,
    pub on_failure: OnFailure,
    pub dependencies: Vec<String>,
    pub phases: Vec<PlanPhase>,
    /// Service → `labels.version` of its canary.
    pub versions: BTreeMap<String, String>,
    /// The step parameters the request gave every canary.
    pub params: StepParams,
    pub pipeline: Option<Value>,
    pub history: Vec<PlanEvent>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl Plan {
    pub fn is_running(&self) -> bool {
        self.state == PlanState::Running
    }

    /// The reason of the latest history entry, if any.
    pub fn last_reason(&self) -> Option<&str> {
        self.history.last().map(|e| e.reason.as_str())
    }

    /// The running phase, if any.
    pub fn current_phase(&self) -> Option<&PlanPhase> {
        self.phases.iter().find(|p| p.state == PhaseState::Running)
    }

    /// One line: state, running phase and the last reason.
    pub fn summary(&self) -> String {
        let phase = self
            .current_phase()
            .map(|p| format!(" in {}", p.name))
            .unwrap_or_default();
        format!(
            "{} {}{phase}: {}",
            self.id,
            self.state,
            self.last_reason().unwrap_or("")
        )
    }
}

/// `GET /deployments/plans`: newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}
