//! Reload: the new config checked against the running one (fields only a restart can
//! change), read and made live by the rollout controller, or refused with the
//! running config untouched.

use std::sync::Arc;

use keystone_api::Reloaded;

use crate::{
    admin_token::AdminToken,
    config::{LoadedConfig, Problem},
    errors::ReloadError,
    health::HealthChecker,
    live::LiveConfig,
    rollout::Rollouts,
};

/// Re-reads the config file and makes it live, or leaves the running config
/// untouched and says why. Live outcomes of deployments stay (see `outcome`).
/// The caller serialises reloads.
pub async fn reload(
    live: &LiveConfig,
    rollouts: &Rollouts,
    health: &HealthChecker,
    admin_token: Option<&AdminToken>,
) -> Result<Reloaded, ReloadError> {
    let path = live.get().path.clone();
    let new = tokio::task::spawn_blocking(move || LoadedConfig::load(&path))
        .await
        .expect("config loader panicked")?;
    if let Some(problem) = needs_restart(&live.get(), &new) {
        return Err(ReloadError::NeedsRestart {
            path: new.path.clone(),
            problem,
        });
    }
    // Read before anything goes live: an unreadable token file refuses the reload.
    let token = match admin_token {
        Some(t) => Some(
            t.resolve(&new.config.admin)
                .map_err(|e| e.into_config_error(&new))?,
        ),
        None => None,
    };
    let new = Arc::new(new);
    let conflicts = rollouts.adopt(new.clone())?;
    if let (Some(live_token), Some(token)) = (admin_token, token) {
        live_token.set(token);
    }
    for warning in &new.warnings {
        tracing::warn!("config: {warning}");
    }
    for conflict in &conflicts {
        tracing::warn!(conflict = %conflict, "reload conflicts with a live outcome");
    }
    health.sync(&new);
    rollouts.save_config_copy();
    let generation = live.generation();
    tracing::info!(generation, "config reloaded");
    Ok(Reloaded {
        status: "reloaded".into(),
        config_generation: generation,
        conflicts,
    })
}

/// Fields a reload cannot change in place.
fn needs_restart(old: &LoadedConfig, new: &LoadedConfig) -> Option<Problem> {
    let lines = crate::yaml_lines::index(&new.source);
    let problem = |field: &str, what: String| Problem {
        field: field.to_owned(),
        line: crate::yaml_lines::line_of(&lines, field),
        reason: format!("{what} cannot change on reload; restart the agent to apply it"),
    };
    if old.config.interfaces != new.config.interfaces {
        return Some(problem(
            "interfaces",
            "the interfaces the XDP program is attached to".into(),
        ));
    }
    if old.config.attach != new.config.attach {
        return Some(problem("attach", "how the XDP program is attached".into()));
    }
    if old.config.fleet != new.config.fleet {
        return Some(problem("fleet", "the fleet's etcd connection".into()));
    }
    if old.config.admin.listen != new.config.admin.listen {
        return Some(problem("admin.listen", "the admin API address".into()));
    }
    for ((field, old_value), (_, new_value)) in old
        .config
        .limits
        .fields()
        .into_iter()
        .zip(new.config.limits.fields())
    {
        if old_value != new_value {
            return Some(problem(
                &format!("limits.{field}"),
                format!("a data plane capacity ({old_value} → {new_value})"),
            ));
        }
    }
    let webhook = |c: &LoadedConfig| serde_json::to_value(&c.config.webhook).ok();
    if webhook(old) != webhook(new) {
        return Some(problem(
            "webhook",
            "the webhook secret and tolerance".into(),
        ));
    }
    None
}
