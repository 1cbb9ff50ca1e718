//! What a reload does to deployments and to the traffic they left behind.
//!
//! The config's weights (and `active_environment`) are where a tenant starts. A
//! deployment's traffic split — while it runs and after it finished, whatever its
//! outcome — or weights set through the API replace them until a new deployment, an
//! operator's action on that deployment (rollback) or new manual weights. A reload
//! keeps that live outcome; services that left the config drop out of it. It goes
//! back to the config's weights, and the reload's answer says so, only when the
//! reload changes what the config asks for (a kept service's weight, a new service
//! with a weight above 0, `active_environment`) or takes away every service the
//! outcome sends traffic to.

use std::fmt;

use serde::Serialize;

use crate::{
    config::{LoadedConfig, ResolvedTenant},
    deploy::{self, DeployState, TrafficPlan},
    store::PersistedState,
};

/// Where a tenant's live weights come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrafficSource {
    /// The config's weights and `active_environment`.
    Config,
    /// The traffic split of a deployment (running or finished).
    Deployment {
        deployment_id: String,
        state: DeployState,
    },
    /// Weights set with `POST /tenants/{name}/weights`, or, with a `reason`, by the
    /// agent itself (recovered from the pinned data plane).
    Manual {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl TrafficSource {
    /// Where `tenant`'s live weights come from in `state`.
    pub fn of(state: &PersistedState, tenant: &str) -> TrafficSource {
        match state.plans.get(tenant) {
            None => TrafficSource::Config,
            Some(TrafficPlan::Manual { reason, .. }) => TrafficSource::Manual {
                reason: reason.clone(),
            },
            // Split plans come from deployments, and a tenant's latest one set it.
            Some(TrafficPlan::Split { .. }) => state
                .deployments
                .iter()
                .rev()
                .find(|d| d.tenant == tenant)
                .map_or(TrafficSource::Config, |d| TrafficSource::Deployment {
                    deployment_id: d.id.clone(),
                    state: d.state,
                }),
        }
    }
}

impl fmt::Display for TrafficSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrafficSource::Config => write!(f, "the config's weights"),
            TrafficSource::Deployment {
                deployment_id,
                state,
            } => write!(f, "deployment {deployment_id} ({})", state.name()),
            TrafficSource::Manual { reason: None } => write!(f, "weights set through the API"),
            TrafficSource::Manual {
                reason: Some(reason),
            } => write!(f, "weights {reason}"),
        }
    }
}

/// What a reload changed besides the config.
#[derive(Debug, Default)]
pub struct ReloadEffects {
    pub events: Vec<deploy::Event>,
    /// One sentence per tenant whose live outcome the new config contradicts.
    pub conflicts: Vec<String>,
}

/// Applies a reload from `old` to `new` to `state`: running deployments whose
/// backends are gone fail; every live outcome stays, without the services that left.
pub fn after_reload(
    old: &LoadedConfig,
    new: &LoadedConfig,
    state: &mut PersistedState,
    now: f64,
) -> ReloadEffects {
    let mut effects = ReloadEffects::default();
    for d in state.deployments.iter_mut().filter(|d| d.state.is_active()) {
        let Some(t) = new.tenants.iter().find(|t| t.name == d.tenant) else {
            effects
                .events
                .push(d.fail(now, "its tenant was removed from the config"));
            continue;
        };
        let missing: Vec<&str> = d
            .stable_backends
            .iter()
            .chain(&d.canary_backends)
            .filter(|n| !t.services.iter().any(|s| &s.name == *n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            effects.events.push(d.fail(
                now,
                format!(
                    "services {} were removed from the config",
                    missing.join(", ")
                ),
            ));
            state.plans.insert(d.tenant.clone(), TrafficPlan::of(d));
        }
    }
    let sources: Vec<(String, TrafficSource)> = state
        .plans
        .keys()
        .map(|t| (t.clone(), TrafficSource::of(state, t)))
        .collect();
    state.plans.retain(|tenant, plan| {
        let Some(t) = new.tenants.iter().find(|t| &t.name == tenant) else {
            return false;
        };
        let source = &sources
            .iter()
            .find(|(name, _)| name == tenant)
            .expect("every plan has a source")
            .1;
        if matches!(source, TrafficSource::Deployment { state, .. } if state.is_active()) {
            // A running deployment steers its own tenant (or failed above).
            return true;
        }
        if let Some(change) = config_intent_change(old, new, t) {
            effects.conflicts.push(format!(
                "tenant '{tenant}': {change} in the config, so the config's weights replace \
                 the live traffic {source} set"
            ));
            return false;
        }
        let gone = plan.remove_services(|name| t.services.iter().any(|s| s.name == name));
        if !plan.sends_traffic() {
            effects.conflicts.push(format!(
                "tenant '{tenant}': {} left the config but took all the live traffic \
                 {source} set; the tenant is back on the config's weights",
                gone.join(", ")
            ));
            return false;
        }
        true
    });
    effects
}

/// What changed in what `tenant`'s config asks for, if anything: its
/// `active_environment`, a kept service's weight, or a new service with a weight.
fn config_intent_change(
    old: &LoadedConfig,
    new: &LoadedConfig,
    tenant: &ResolvedTenant,
) -> Option<String> {
    let env = |c: &LoadedConfig| {
        let t = c.tenants.iter().find(|t| t.name == tenant.name)?;
        t.active_environment.clone()
    };
    let (old_env, new_env) = (env(old), env(new));
    if old_env != new_env {
        let show = |e: Option<String>| e.unwrap_or_else(|| "(none)".into());
        return Some(format!(
            "active_environment changed from {} to {}",
            show(old_env),
            show(new_env)
        ));
    }
    let before = old.tenants.iter().find(|t| t.name == tenant.name)?;
    tenant.services.iter().find_map(|s| {
        let was = before
            .services
            .iter()
            .find(|b| b.name == s.name)
            .map_or(0, |b| b.weight);
        (was != s.weight).then(|| format!("{}'s weight changed from {was} to {}", s.name, s.weight))
    })
}
