//! Why a reload, a deployment request or the agent's start was refused.

use std::path::PathBuf;

use crate::{
    config::{ConfigError, Problem},
    dataplane::ApplyError,
    fleet::FleetError,
    store::StoreError,
};

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
    /// The reload changes deployments and the fleet's state could not take it.
    #[error(
        "the reload's changes to deployments could not be shared with the fleet, so it was not applied: {0}"
    )]
    Fleet(#[from] FleetError),
}

/// Why a change is refused when its state cannot be written.
const UNSAVED: &str = "cannot save the agent's state, so the change was not applied";

impl ReloadError {
    /// Problems with field and line, for API answers.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ReloadError::Config(e) => e.problems().to_vec(),
            ReloadError::NeedsRestart { problem, .. } => vec![problem.clone()],
            ReloadError::Dataplane(_) | ReloadError::Unsaved(_) | ReloadError::Fleet(_) => {
                Vec::new()
            }
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
    #[error("no plan with id '{id}'")]
    UnknownPlan { id: String },
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
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot program the config into the data plane: {0}")]
    Dataplane(#[from] ApplyError),
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DeployError {
    DeployError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
