//! Coordinated multi-service rollouts (the seed's `deployment_orchestration`): a plan
//! moves several tenants phase by phase, each phase a canary of each of its services
//! run by the deployment engine (no second step machine). `spec` checks a plan as
//! written and finds its phases; `run` moves a plan on over the [`Engine`] interface.
//! Plans are kept with the deployments (`PersistedState::orchestrations`), so they
//! are saved, restored and (later) shared by the same store.

mod run;
mod spec;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use keystone_api::{OnFailure, Orchestration, PlanRequest};

pub use run::{Engine, PlanStart, abort, advance, new};
pub use spec::{Phase, SpecError, phases};

/// What a plan request starts: its phases checked against `tenants`, a version for
/// every service. Problems name their field in the request.
pub fn start(
    orchestration: &Orchestration,
    req: &PlanRequest,
    tenants: &[&str],
) -> Result<PlanStart, Vec<SpecError>> {
    let field = |f: &str| match req.orchestration {
        Some(_) => format!("orchestration.{f}"),
        None => format!("deployment_orchestration.{f}"),
    };
    let phases = phases(orchestration, tenants).map_err(|problems| {
        problems
            .into_iter()
            .map(|e| SpecError {
                field: field(&e.field),
                reason: e.reason,
            })
            .collect::<Vec<_>>()
    })?;
    let mut problems = Vec::new();
    for name in req.versions.keys() {
        if !orchestration.services.contains(name) {
            problems.push(SpecError {
                field: format!("versions.{name}"),
                reason: format!("'{name}' is not a service of the plan"),
            });
        }
    }
    let mut versions = BTreeMap::new();
    for s in &orchestration.services {
        match req.versions.get(s).or(req.version.as_ref()) {
            Some(v) => {
                versions.insert(s.clone(), v.clone());
            }
            None => problems.push(SpecError {
                field: format!("versions.{s}"),
                reason: format!("no version for '{s}' (give `version` or `versions.{s}`)"),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(PlanStart {
        phases,
        on_failure: orchestration.on_failure.unwrap_or(OnFailure::Hold),
        dependencies: orchestration.dependencies.clone(),
        versions,
        params: req.params.clone(),
        pipeline: req.pipeline.clone(),
    })
}
