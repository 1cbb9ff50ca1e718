//! A deployment as clients see it (keystone-api's view): the persisted record
//! without the agent's bookkeeping (`next_step_at`, `started_unix`, `finished_unix`,
//! `validated`, `baseline`), thresholds in percent as they are written. The one
//! conversion behind the API's answers, the webhook's and the notifications.

use super::{Deployment, Params};

impl Deployment {
    pub fn view(&self) -> keystone_api::Deployment {
        keystone_api::Deployment {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            strategy: self.strategy.into(),
            version: self.version.clone(),
            state: self.state,
            canary_percent: self.canary_percent,
            stable_backends: self.stable_backends.clone(),
            canary_backends: self.canary_backends.clone(),
            from_environment: self.from_environment.clone(),
            to_environment: self.to_environment.clone(),
            params: params_view(&self.params),
            analysis: self.analysis.clone(),
            history: self.history.clone(),
            started_at: self.started_at.clone(),
            updated_at: self.updated_at.clone(),
            finished_at: self.finished_at.clone(),
            pipeline: self.pipeline.clone(),
        }
    }
}

/// Thresholds are kept as rates (0–1) in the record and shown as percentages.
fn params_view(p: &Params) -> keystone_api::DeploymentParams {
    keystone_api::DeploymentParams {
        initial_traffic: Some(p.initial_traffic),
        increment: Some(p.increment),
        interval_seconds: Some(p.interval_seconds),
        max_traffic: Some(p.max_traffic),
        health_threshold: Some(p.health_threshold * 100.0),
        rollback_threshold: Some(p.rollback_threshold * 100.0),
        min_samples: Some(p.min_samples),
        validation_timeout_seconds: p.validation_timeout_seconds,
        rollback_on_failure: Some(p.rollback_on_failure),
        drain_timeout_seconds: p.drain_timeout_seconds,
        prometheus: p
            .prometheus
            .as_ref()
            .map(|q| keystone_api::PrometheusQuery {
                address: q.address.clone(),
                query: q.query.clone(),
            }),
    }
}
