//! Deployment counters and durations for `/metrics`, recorded by the rollout
//! controller as events happen (they are not in the kernel).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, core::Collector};

use crate::{clock::unix_now, deploy::Deployment};

/// Deployment counters, updated as events happen (they are not in the kernel).
pub struct DeploymentMetrics {
    total: IntCounterVec,
    duration: HistogramVec,
}

impl Default for DeploymentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeploymentMetrics {
    pub fn new() -> DeploymentMetrics {
        DeploymentMetrics {
            total: IntCounterVec::new(
                Opts::new(
                    "keystone_deployments_total",
                    "Deployments by outcome: status is started, completed, rolled_back, aborted or failed.",
                ),
                &["service", "strategy", "environment", "status"],
            )
            .expect("metric definitions are static and valid"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "keystone_deployment_duration_seconds",
                    "Time from a deployment's start to its end, by outcome.",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
                &["service", "strategy", "status"],
            )
            .expect("metric definitions are static and valid"),
        }
    }

    /// Counts a deployment event.
    pub fn record(&self, d: &Deployment, event: &str) {
        let strategy = strategy_name(d);
        let env = d
            .to_environment
            .as_deref()
            .or(d.version.as_deref())
            .unwrap_or("");
        let status = match event {
            "started" => "started",
            _ if d.state.is_active() => return,
            _ => d.state.name(),
        };
        self.total
            .with_label_values(&[d.tenant.as_str(), strategy, env, status])
            .inc();
        if !d.state.is_active() {
            let seconds = (unix_now() - d.started_unix).max(0.0);
            self.duration
                .with_label_values(&[d.tenant.as_str(), strategy, status])
                .observe(seconds);
        }
    }

    pub(crate) fn collectors(&self) -> [&dyn Collector; 2] {
        [&self.total, &self.duration]
    }
}

fn strategy_name(d: &Deployment) -> &'static str {
    match d.strategy {
        crate::config::Strategy::Canary => "canary",
        crate::config::Strategy::BlueGreen => "blue_green",
        crate::config::Strategy::Rolling => "rolling",
    }
}
