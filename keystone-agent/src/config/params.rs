//! Step parameters: what a deployment runs with (request > the tenant's
//! `canary_config` > defaults) and the one rule for each value. Here, beside the
//! config, so that the config's validation and the deployment engine share them
//! while the engine alone depends on the config.

use serde::{Deserialize, Serialize};

use super::{CanaryConfig, PrometheusQuery};

/// Defaults where neither the request nor `canary_config` say.
pub const DEFAULT_INITIAL: f64 = 10.0;
pub const DEFAULT_INCREMENT: f64 = 10.0;
pub const DEFAULT_INTERVAL_SECS: f64 = 60.0;
pub const DEFAULT_MIN_SAMPLES: u64 = 5;

/// Step parameters, as requested (request > tenant's canary_config > defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub initial_traffic: f64,
    pub increment: f64,
    pub interval_seconds: f64,
    pub max_traffic: f64,
    /// Success rate (0–1) needed for the next step.
    pub health_threshold: f64,
    /// Success rate (0–1) below which the deployment rolls back.
    pub rollback_threshold: f64,
    /// Fewer samples than this make a verdict inconclusive: the step holds.
    pub min_samples: u64,
    /// Blue/green only: how long the idle side may take to pass validation.
    #[serde(default)]
    pub validation_timeout_seconds: Option<f64>,
    /// Blue/green only: flip back when the new side fails after the flip.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Blue/green only: how long connections established on the old side may keep
    /// it after a completed switch; then its backends are taken out and those flows
    /// re-picked onto the new side. None: they drain for as long as they last.
    #[serde(default)]
    pub drain_timeout_seconds: Option<f64>,
    /// A Prometheus query that must pass too (`canary_config.analysis.prometheus`).
    #[serde(default)]
    pub prometheus: Option<PrometheusQuery>,
}

/// The one rule for `health_threshold` and `rollback_threshold`, wherever they are
/// written (config, API, webhook, keystone-ctl): a percentage from 0 to 100, returned
/// as a rate (0–1). A value above 0 and at most 1 is refused: it reads like a
/// fraction (0.95, or 1 for "all") and would otherwise mean at most 1 %. `written` is
/// the value as the user wrote it, for the message.
pub fn threshold_rate(percent: f64, written: &str) -> Result<f64, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("'{written}' is not a percentage from 0 to 100"));
    }
    if percent > 0.0 && percent <= 1.0 {
        let meant = (percent * 100.0 * 1e6).round() / 1e6;
        return Err(format!(
            "'{written}' reads like a fraction; thresholds are percentages from 0 to 100 (write {meant} for {meant} %), and values above 0 up to 1 are refused as ambiguous"
        ));
    }
    Ok(percent / 100.0)
}

impl Params {
    pub fn from_canary_config(c: Option<&CanaryConfig>) -> Params {
        Params {
            initial_traffic: c.map_or(DEFAULT_INITIAL, |c| c.initial_traffic),
            increment: c.map_or(DEFAULT_INCREMENT, |c| c.increment),
            interval_seconds: c.map_or(DEFAULT_INTERVAL_SECS, |c| c.interval.get().as_secs_f64()),
            max_traffic: c.map_or(100.0, |c| c.max_traffic),
            // Percentages in the config (checked by `threshold_rate`), rates here.
            health_threshold: c.map_or(0.95, |c| c.health_threshold / 100.0),
            rollback_threshold: c.map_or(0.9, |c| c.rollback_threshold / 100.0),
            min_samples: c.and_then(|c| c.min_samples).unwrap_or(DEFAULT_MIN_SAMPLES),
            validation_timeout_seconds: None,
            rollback_on_failure: true,
            drain_timeout_seconds: None,
            prometheus: c
                .and_then(|c| c.analysis.as_ref())
                .and_then(|a| a.prometheus.clone()),
        }
    }

    /// Every problem with the values, as (field, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for (name, v) in [
            ("initial_traffic", self.initial_traffic),
            ("increment", self.increment),
            ("max_traffic", self.max_traffic),
        ] {
            if !(0.0..=100.0).contains(&v) || v.is_nan() {
                p.push((name, format!("{v} is not a percentage between 0 and 100")));
            }
        }
        if self.increment <= 0.0 {
            p.push(("increment", "must be greater than 0".into()));
        }
        if self.initial_traffic > self.max_traffic {
            p.push((
                "initial_traffic",
                format!(
                    "{} is above max_traffic {}",
                    self.initial_traffic, self.max_traffic
                ),
            ));
        }
        if !(self.interval_seconds > 0.0 && self.interval_seconds.is_finite()) {
            p.push(("interval", "must be greater than 0".into()));
        }
        for (name, v) in [
            ("health_threshold", self.health_threshold),
            ("rollback_threshold", self.rollback_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push((
                    name,
                    format!("{} is not a percentage from 0 to 100", v * 100.0),
                ));
            }
        }
        if self.rollback_threshold > self.health_threshold {
            p.push((
                "rollback_threshold",
                format!(
                    "{} % must not be above health_threshold {} %",
                    self.rollback_threshold * 100.0,
                    self.health_threshold * 100.0
                ),
            ));
        }
        p
    }
}
