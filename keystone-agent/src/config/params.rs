//! Step parameters: what a deployment runs with (request > the tenant's
//! `canary_config` > defaults) and the one rule for each value. Here, beside the
//! config, so that the config's validation and the deployment engine share them
//! while the engine alone depends on the config.

use keystone_api::{DeploymentParams, StepParams, defaults};
use serde::{Deserialize, Serialize};

use super::{CanaryConfig, DurationSpec, PrometheusQuery};

/// Defaults where neither the request nor `canary_config` say (keystone-api's, the one
/// place they are written).
pub const DEFAULT_INITIAL: f64 = defaults::INITIAL_TRAFFIC;
pub const DEFAULT_INCREMENT: f64 = defaults::INCREMENT;
pub const DEFAULT_INTERVAL_SECS: f64 = defaults::INTERVAL_SECONDS;
pub const DEFAULT_MIN_SAMPLES: u64 = defaults::MIN_SAMPLES;

/// The engine's type for a step parameter's kind: thresholds as rates (0–1),
/// durations in seconds, a `timeout` only where the deployment has one.
macro_rules! engine_type {
    (percent) => { f64 };
    (threshold) => { f64 };
    (duration) => { f64 };
    (timeout) => { Option<f64> };
    (count) => { u64 };
    (flag) => { bool };
}

/// A requested value (keystone-api's type) as the engine keeps it. A value that does
/// not read is noted in `problems` and kept as best it reads (a threshold as percent
/// / 100, a duration as 0), so the checks after it still run on the rest.
macro_rules! engine_value {
    (threshold, $name:expr, $v:expr, $problems:ident) => {
        threshold_rate(*$v, &$v.to_string()).unwrap_or_else(|reason| {
            $problems.push(($name, reason));
            *$v / 100.0
        })
    };
    (duration, $name:expr, $v:expr, $problems:ident) => {
        DurationSpec::from($v).parse().map_or_else(
            |reason| {
                $problems.push(($name, reason));
                0.0
            },
            |d| d.as_secs_f64(),
        )
    };
    (timeout, $name:expr, $v:expr, $problems:ident) => {
        Some(engine_value!(duration, $name, $v, $problems))
    };
    ($kind:ident, $name:expr, $v:expr, $problems:ident) => {
        *$v
    };
}

/// An engine value as the deployment view shows it (thresholds in percent).
macro_rules! view_value {
    (threshold, $v:expr) => {
        Some($v * 100.0)
    };
    (timeout, $v:expr) => {
        $v
    };
    ($kind:ident, $v:expr) => {
        Some($v)
    };
}

/// Declares [`Params`] from keystone-api's one list, how a request's values apply to
/// it ([`Params::apply`]) and how it is shown ([`Params::view`]).
macro_rules! engine_params {
    ($(
        $group:ident { $( { [$(#[$doc:meta])*] $name:ident $field:ident $kind:ident [$($req:ident)?] } )* }
    )*) => {
        /// Step parameters in force (request > tenant's config > defaults), as the
        /// engine runs with them: thresholds are rates (0–1), durations seconds.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct Params {
            $($(
                $(#[$doc])*
                #[serde(default)]
                pub $field: engine_type!($kind),
            )*)*
            /// Blue/green only: how long connections established on the old side may keep
            /// it after a completed switch; then its backends are taken out and those flows
            /// re-picked onto the new side. None: they drain for as long as they last.
            #[serde(default)]
            pub drain_timeout_seconds: Option<f64>,
            /// A Prometheus query that must pass too (`canary_config.analysis.prometheus`).
            #[serde(default)]
            pub prometheus: Option<PrometheusQuery>,
        }

        impl Params {
            /// The step parameters' names as sent, in the order of their fields here.
            pub const STEP_PARAMS: &'static [&'static str] = &[$($(stringify!($name)),*),*];

            /// `given` over these values; every value that does not read, as (parameter,
            /// reason). Thresholds are percentages, checked by [`threshold_rate`].
            pub fn apply(&mut self, given: &StepParams) -> Vec<(&'static str, String)> {
                let mut problems = Vec::new();
                $($(
                    if let Some(v) = &given.$name {
                        self.$field = engine_value!($kind, stringify!($name), v, problems);
                    }
                )*)*
                problems
            }

            /// As clients see them (keystone-api's view).
            pub fn view(&self) -> DeploymentParams {
                DeploymentParams {
                    $($($field: view_value!($kind, self.$field),)*)*
                    drain_timeout_seconds: self.drain_timeout_seconds,
                    prometheus: self.prometheus.as_ref().map(|q| keystone_api::PrometheusQuery {
                        address: q.address.clone(),
                        query: q.query.clone(),
                    }),
                }
            }
        }
    };
}

keystone_api::with_step_params!(engine_params);

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
    /// What a deployment runs with where neither the request nor the config say.
    pub fn defaults() -> Params {
        Params {
            initial_traffic: DEFAULT_INITIAL,
            increment: DEFAULT_INCREMENT,
            interval_seconds: DEFAULT_INTERVAL_SECS,
            max_traffic: defaults::MAX_TRAFFIC,
            health_threshold: defaults::HEALTH_THRESHOLD / 100.0,
            rollback_threshold: defaults::ROLLBACK_THRESHOLD / 100.0,
            min_samples: DEFAULT_MIN_SAMPLES,
            validation_timeout_seconds: None,
            rollback_on_failure: defaults::ROLLBACK_ON_FAILURE,
            drain_timeout_seconds: None,
            prometheus: None,
        }
    }

    /// The tenant's `canary_config` over the defaults. Its values are checked by the
    /// config's validation (by field and line), so what does not read is ignored here.
    pub fn from_canary_config(c: Option<&CanaryConfig>) -> Params {
        let mut p = Params::defaults();
        if let Some(c) = c {
            p.apply(&c.given());
            p.prometheus = c.analysis.as_ref().and_then(|a| a.prometheus.clone());
        }
        p
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

#[cfg(test)]
mod tests {
    use keystone_api::struct_fields;

    use super::*;
    use crate::config::SwitchConfig;

    /// Every step parameter comes from keystone-api's one list: the request's
    /// `StepParams`, the config's `canary_config` and `switch_config`, the engine's
    /// `Params` and the view's `DeploymentParams` name the same parameters in the same
    /// order, and the engine and the view have the same fields.
    #[test]
    fn every_step_parameter_comes_from_the_one_list() {
        assert_eq!(struct_fields::<StepParams>(), StepParams::NAMES);
        assert_eq!(crate::config::types::STEP_PARAMS, StepParams::NAMES);
        assert_eq!(Params::STEP_PARAMS, StepParams::NAMES);
        assert_eq!(DeploymentParams::STEP_PARAMS, StepParams::NAMES);
        assert_eq!(
            struct_fields::<Params>(),
            struct_fields::<DeploymentParams>()
        );
        let (canary, switch) = (
            struct_fields::<CanaryConfig>(),
            struct_fields::<SwitchConfig>(),
        );
        for name in StepParams::NAMES {
            assert!(
                canary.contains(name) || switch.contains(name),
                "{name}: no config key"
            );
        }
    }

    /// A `canary_config` means what the same values in a request mean: both go
    /// through `Params::apply`.
    #[test]
    fn the_config_and_a_request_apply_alike() {
        let yaml = "initial_traffic: 5\nincrement: 20\ninterval: 1m30s\nmax_traffic: 50\nhealth_threshold: 99\nrollback_threshold: 80\nmin_samples: 7\n";
        let config: CanaryConfig = serde_yaml::from_str(yaml).unwrap();
        let request: StepParams = serde_yaml::from_str(yaml).unwrap();
        let mut requested = Params::defaults();
        assert_eq!(requested.apply(&request), []);
        let from_config = Params::from_canary_config(Some(&config));
        assert_eq!(from_config, requested);
        assert_eq!(
            (
                from_config.interval_seconds,
                from_config.health_threshold,
                from_config.min_samples
            ),
            (90.0, 0.99, 7)
        );
    }

    /// The defaults are keystone-api's: a tenant without `canary_config` runs with them.
    #[test]
    fn the_defaults_are_keystone_apis() {
        let p = Params::from_canary_config(None);
        assert_eq!(
            (
                p.initial_traffic,
                p.increment,
                p.interval_seconds,
                p.max_traffic
            ),
            (
                defaults::INITIAL_TRAFFIC,
                defaults::INCREMENT,
                defaults::INTERVAL_SECONDS,
                defaults::MAX_TRAFFIC
            )
        );
        assert_eq!(
            (p.health_threshold, p.rollback_threshold, p.min_samples),
            (0.95, 0.9, defaults::MIN_SAMPLES)
        );
        assert_eq!(p.rollback_on_failure, defaults::ROLLBACK_ON_FAILURE);
    }
}
