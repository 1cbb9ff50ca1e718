//! What a canary or a blue/green switch starts from: the request checked against the
//! tenant and the runtime, its sides and its step parameters. Pure; the rollout
//! controller records and launches what these return.

use std::time::Duration;

use keystone_api::{CanaryRequest, SwitchRequest, SwitchStrategy};

use crate::{
    config::{LoadedConfig, ResolvedTenant, Strategy},
    deploy::{Params, Start},
    errors::{DeployError, invalid},
    reconcile::weights_of,
    requests,
    store::PersistedState,
};

/// Blue/green: how long the new side is watched after the flip (and the step interval
/// of a gradual switch) unless `canary_config.interval` or the request says.
pub const DEFAULT_SWITCH_INTERVAL: Duration = Duration::from_secs(10);
/// Blue/green validation: how long the idle side may take unless `switch_config` says.
pub const DEFAULT_VALIDATION_TIMEOUT: Duration =
    Duration::from_secs(keystone_api::defaults::VALIDATION_TIMEOUT_SECONDS as u64);

pub fn check_not_running(runtime: &PersistedState, tenant: &str) -> Result<(), DeployError> {
    match runtime
        .deployments
        .iter()
        .find(|d| d.tenant == tenant && d.state.is_running())
    {
        Some(d) => Err(DeployError::AlreadyRunning {
            tenant: tenant.to_owned(),
            id: d.id.clone(),
            state: d.state.name(),
        }),
        None => Ok(()),
    }
}

/// A canary of `req.version` (its backends are the services with that
/// `labels.version`) against the services now taking traffic.
pub fn canary(
    tenant: &ResolvedTenant,
    runtime: &PersistedState,
    req: CanaryRequest,
) -> Result<Start, DeployError> {
    let mut params = Params::from_canary_config(tenant.canary_config.as_ref());
    requests::apply(&req.params, &mut params)?;
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
    check_not_running(runtime, &tenant.name)?;
    let weights = weights_of(tenant, runtime);
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
    Ok(Start {
        tenant: tenant.name.clone(),
        strategy: Strategy::Canary,
        version: Some(req.version),
        stable,
        canary,
        params,
        pipeline: req.pipeline,
        from_environment: None,
        to_environment: env,
    })
}

/// A blue/green switch to environment `req.to`: validated, then flipped.
pub fn switch(
    tenant: &ResolvedTenant,
    runtime: &PersistedState,
    req: SwitchRequest,
) -> Result<Start, DeployError> {
    let to = in_environment(tenant, &req.to);
    if to.is_empty() {
        return Err(invalid(
            "to",
            format!(
                "no service of tenant '{}' is in environment '{}'",
                tenant.name, req.to
            ),
        ));
    }
    check_not_running(runtime, &tenant.name)?;
    let from_env = match req.from.clone() {
        Some(from) => from,
        None => live_environment(tenant, runtime, &to)?,
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
    let mut params = switch_params(tenant, req.strategy)?;
    requests::apply(&req.params, &mut params)?;
    Ok(Start {
        tenant: tenant.name.clone(),
        strategy: Strategy::BlueGreen,
        version: None,
        stable: in_environment(tenant, &from_env),
        canary: to,
        params,
        pipeline: req.pipeline,
        from_environment: Some(from_env),
        to_environment: Some(req.to),
    })
}

/// The services of `tenant` in environment `env`.
fn in_environment(tenant: &ResolvedTenant, env: &str) -> Vec<String> {
    tenant
        .services
        .iter()
        .filter(|s| s.environment.as_deref() == Some(env))
        .map(|s| s.name.clone())
        .collect()
}

/// The one environment other than `to`'s services that takes traffic now.
fn live_environment(
    tenant: &ResolvedTenant,
    runtime: &PersistedState,
    to: &[String],
) -> Result<String, DeployError> {
    let weights = weights_of(tenant, runtime);
    let mut live: Vec<String> = tenant
        .services
        .iter()
        .zip(&weights)
        .filter(|(s, w)| **w > 0 && !to.contains(&s.name))
        .filter_map(|(s, _)| s.environment.clone())
        .collect();
    live.dedup();
    match live.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(invalid(
            "from",
            "no other environment takes traffic now; nothing to switch from",
        )),
        many => Err(invalid(
            "from",
            format!(
                "several environments take traffic ({}); say which with \"from\"",
                many.join(", ")
            ),
        )),
    }
}

/// A switch's step parameters from the tenant's `canary_config` and `switch_config`,
/// shaped by its strategy (`requested`, else the config's, else instant).
fn switch_params(
    tenant: &ResolvedTenant,
    requested: Option<SwitchStrategy>,
) -> Result<Params, DeployError> {
    let switch = tenant.switch_config.clone().unwrap_or_default();
    let strategy = requested
        .or(switch.strategy)
        .unwrap_or(SwitchStrategy::Instant);
    let mut params = Params::from_canary_config(tenant.canary_config.as_ref());
    if let Some(interval) = &switch.interval {
        params.interval_seconds = interval.get().as_secs_f64();
    } else if tenant.canary_config.is_none() {
        params.interval_seconds = DEFAULT_SWITCH_INTERVAL.as_secs_f64();
    }
    if let Some(increment) = switch.increment {
        params.increment = increment;
        params.initial_traffic = increment;
    }
    match strategy {
        SwitchStrategy::Instant => {
            params.initial_traffic = 100.0;
            params.increment = 100.0;
            params.max_traffic = 100.0;
        }
        SwitchStrategy::Gradual => params.max_traffic = 100.0,
        // `requests` and the config's validation refuse the word as written.
        SwitchStrategy::Unknown => {
            return Err(invalid(
                "strategy",
                "unknown switch strategy; expected instant or gradual",
            ));
        }
    }
    params.drain_timeout_seconds = switch.drain_timeout.as_ref().map(|d| d.get().as_secs_f64());
    params.validation_timeout_seconds = Some(DEFAULT_VALIDATION_TIMEOUT.as_secs_f64());
    // `switch_config`'s own step parameters, by the rules a request's follow (the
    // config's validation has named any that do not read).
    params.apply(&switch.given());
    Ok(params)
}

/// The tenant `name` of `config`, given in the request's `field`.
pub fn tenant<'a>(
    config: &'a LoadedConfig,
    name: &str,
    field: &'static str,
) -> Result<&'a ResolvedTenant, DeployError> {
    config
        .tenants
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| DeployError::UnknownTenant {
            field,
            tenant: name.to_owned(),
        })
}
