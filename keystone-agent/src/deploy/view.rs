//! A deployment as clients see it (keystone-api's view): the persisted record
//! without the agent's bookkeeping (`next_step_at`, `started_unix`, `finished_unix`,
//! `validated`, `baseline`), thresholds in percent as they are written. The one
//! conversion behind the API's answers, the webhook's and the notifications.

use super::Deployment;

impl Deployment {
    pub fn view(&self) -> keystone_api::Deployment {
        keystone_api::Deployment {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            strategy: self.strategy,
            version: self.version.clone(),
            state: self.state,
            canary_percent: self.canary_percent,
            stable_backends: self.stable_backends.clone(),
            canary_backends: self.canary_backends.clone(),
            from_environment: self.from_environment.clone(),
            to_environment: self.to_environment.clone(),
            params: self.params.view(),
            analysis: self.analysis.clone(),
            history: self.history.clone(),
            started_at: self.started_at.clone(),
            updated_at: self.updated_at.clone(),
            finished_at: self.finished_at.clone(),
            pipeline: self.pipeline.clone(),
        }
    }
}
