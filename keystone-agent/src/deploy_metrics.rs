//! Deployment counters and durations for `/metrics`, recorded by the rollout
//! controller as events happen (they are not in the kernel).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, core::Collector};

use crate::{
    clock::unix_now,
    deploy::{DeployState, Deployment, EventKind},
};

/// Labels of every deployment metric: `tenant` like all others, and `service` (the
/// same name) because the seed documents' metric names carry it.
const DEPLOYMENT_LABELS: [&str; 4] = ["tenant", "service", "strategy", "environment"];
/// How a deployment can end (the `status` of `keystone_deployments_total`).
const OUTCOMES: [DeployState; 4] = [
    DeployState::Completed,
    DeployState::RolledBack,
    DeployState::Aborted,
    DeployState::Failed,
];

/// Deployment counters, updated as events happen (they are not in the kernel).
pub struct DeploymentMetrics {
    started: IntCounterVec,
    outcomes: IntCounterVec,
    duration: HistogramVec,
}

impl Default for DeploymentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeploymentMetrics {
    pub fn new() -> DeploymentMetrics {
        let with_status = [DEPLOYMENT_LABELS.as_slice(), &["status"]].concat();
        DeploymentMetrics {
            started: counter(
                "keystone_deployments_started_total",
                "Deployments started.",
                &DEPLOYMENT_LABELS,
            ),
            outcomes: counter(
                "keystone_deployments_total",
                "Deployments ended, by outcome: status is completed, rolled_back, aborted or failed.",
                &with_status,
            ),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "keystone_deployment_duration_seconds",
                    "Time from a deployment's start to its end, by outcome.",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
                &with_status,
            )
            .expect("metric definitions are static and valid"),
        }
    }

    /// Counts a deployment event.
    pub fn record(&self, d: &Deployment, event: EventKind) {
        let labels = deployment_labels(d);
        let with_status = |state: DeployState| {
            let mut l = labels.to_vec();
            l.push(state.name());
            l
        };
        if event == EventKind::Started {
            self.started.with_label_values(&labels).inc();
            // Every outcome exists at 0 from the start, so `increase()` sees the first.
            for outcome in OUTCOMES {
                self.outcomes.with_label_values(&with_status(outcome));
            }
            return;
        }
        if d.state.is_running() {
            return;
        }
        let labels = with_status(d.state);
        self.outcomes.with_label_values(&labels).inc();
        let seconds = (unix_now() - d.started_unix).max(0.0);
        self.duration.with_label_values(&labels).observe(seconds);
    }

    pub(crate) fn collectors(&self) -> [&dyn Collector; 3] {
        [&self.started, &self.outcomes, &self.duration]
    }
}

/// `DEPLOYMENT_LABELS`' values for `d`.
fn deployment_labels(d: &Deployment) -> [&str; 4] {
    [
        d.tenant.as_str(),
        d.tenant.as_str(),
        d.strategy.name(),
        deployment_environment(d),
    ]
}

/// The environment (blue/green) or version (canary, rolling) a deployment moves to.
pub(crate) fn deployment_environment(d: &Deployment) -> &str {
    d.to_environment
        .as_deref()
        .or(d.version.as_deref())
        .unwrap_or("")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid")
}
