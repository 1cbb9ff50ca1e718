//! Blue/green validation: every backend of the new side is probed (its health check,
//! or a TCP connect) until all pass or the validation timeout runs out.

use std::time::{Duration, Instant};

use crate::{
    config::LoadedConfig,
    deploy::Deployment,
    health::{self, CheckSpec},
    strategy::DEFAULT_VALIDATION_TIMEOUT,
};

/// A blue/green validation: what to probe, the timeout and how much of it is left (it
/// counts from the deployment's start, so an agent restart does not start it again).
pub struct Validation {
    targets: Vec<(String, CheckSpec)>,
    timeout: Duration,
    remaining: Duration,
}

impl Validation {
    /// What validating `d`'s new side under `config` means at `now`.
    pub fn of(config: &LoadedConfig, d: &Deployment, now: f64) -> Option<Validation> {
        let tenant = config.tenants.iter().find(|t| t.name == d.tenant)?;
        let endpoint = tenant
            .switch_config
            .as_ref()
            .and_then(|s| s.validation_endpoint.as_deref());
        let targets = tenant
            .services
            .iter()
            .filter(|s| d.canary_backends.contains(&s.name))
            .map(|s| {
                let spec = health::validation_spec(s.address, s.health.as_ref(), endpoint);
                (s.name.clone(), spec)
            })
            .collect();
        let timeout = d
            .params
            .validation_timeout_seconds
            .unwrap_or(DEFAULT_VALIDATION_TIMEOUT.as_secs_f64());
        let remaining = (d.started_unix + timeout - now).clamp(0.0, timeout);
        Some(Validation {
            targets,
            timeout: Duration::from_secs_f64(timeout),
            remaining: Duration::from_secs_f64(remaining),
        })
    }

    /// Probes until every target passes (`Ok`) or the time is up (`Err`, the last
    /// failures). Probed at least once, even when a restart comes after the deadline.
    pub async fn run(self) -> Result<(), String> {
        let Validation {
            targets,
            timeout,
            remaining,
        } = self;
        let deadline = Instant::now() + remaining;
        let result = loop {
            let mut failures = Vec::new();
            for (name, spec) in &targets {
                if let Err(e) = health::probe(spec).await {
                    failures.push(format!("{name}: {e}"));
                }
            }
            if failures.is_empty() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(failures.join("; "));
            }
            let pause = targets
                .first()
                .map(|(_, s)| s.interval)
                .unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        };
        result.map_err(|e| format!("{e} (gave up after {timeout:?})"))
    }
}
