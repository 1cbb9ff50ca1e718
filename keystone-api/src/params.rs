//! Step parameters: what a deployment request may set, declared once.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A duration as the API takes it: a number of seconds, or text like `2s` or `1m30s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(f64),
    Text(String),
}

/// The units a duration's text may use (those of the agent's duration parser).
const UNITS: [&str; 25] = [
    "nsec", "ns", "usec", "us", "msec", "ms", "seconds", "second", "secs", "sec", "s", "minutes",
    "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days", "day", "d", "w",
];

impl FromStr for DurationValue {
    type Err = String;

    /// A number is seconds; text must be numbers with units (`2s`, `1m30s`, `500ms`).
    fn from_str(s: &str) -> Result<DurationValue, String> {
        if let Ok(seconds) = s.parse::<f64>() {
            return Ok(DurationValue::Seconds(seconds));
        }
        let bad =
            || format!("'{s}' is not a duration like 500ms, 2s or 10m, or a number of seconds");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit_len = rest[digits..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len() - digits);
            let unit = &rest[digits..digits + unit_len];
            if digits == 0 || !UNITS.contains(&unit) {
                return Err(bad());
            }
            rest = rest[digits + unit_len..].trim_start();
        }
        Ok(DurationValue::Text(s.to_owned()))
    }
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationValue::Seconds(s) => write!(f, "{s}"),
            DurationValue::Text(t) => f.write_str(t),
        }
    }
}

/// Each step parameter's default, where neither the request nor the tenant's config
/// say: one value each, read by the agent's config and engine. Thresholds are
/// percentages (0–100), durations seconds.
pub mod defaults {
    pub const INITIAL_TRAFFIC: f64 = 10.0;
    pub const INCREMENT: f64 = 10.0;
    pub const INTERVAL_SECONDS: f64 = 60.0;
    pub const MAX_TRAFFIC: f64 = 100.0;
    pub const HEALTH_THRESHOLD: f64 = 95.0;
    pub const ROLLBACK_THRESHOLD: f64 = 90.0;
    pub const MIN_SAMPLES: u64 = 5;
    pub const VALIDATION_TIMEOUT_SECONDS: f64 = 30.0;
    pub const ROLLBACK_ON_FAILURE: bool = true;
}

/// Hands `$callback!` the one list of step parameters, in two groups: `canary { .. }`
/// (every deployment's) and `blue_green { .. }` (a switch's own). Each entry is
/// `{ [docs] name field kind [required] }`: `name` as requests and the config write
/// it, `field` as the engine and the deployment view call it (durations in seconds:
/// `interval_seconds`), `kind` one of `percent`, `threshold` (a percent the engine
/// keeps as a rate), `duration`, `timeout` (a duration only some deployments have),
/// `count`, `flag`, and `required` where a tenant's `canary_config` must say it.
/// Each crate maps the kinds to its own types; adding a parameter is one entry here.
#[macro_export]
macro_rules! with_step_params {
    ($callback:ident) => {
        $crate::step_param_list! { @canary $callback []
            /// Percent of new connections to start with.
            initial_traffic: percent required,
            /// Percent added every interval.
            increment: percent required,
            /// Time between steps, e.g. 30s, 2m, or seconds.
            interval => interval_seconds: duration required,
            /// Percent at which the rollout waits for approval.
            max_traffic: percent,
            /// Success rate in percent (0-100; 0 < X <= 1 is refused as a fraction) needed
            /// for the next step.
            health_threshold: threshold,
            /// Success rate in percent (0-100) below which the deployment is rolled back.
            rollback_threshold: threshold,
            /// Samples needed per step for a verdict; fewer hold the step.
            min_samples: count,
        blue_green:
            /// Blue/green: how long the idle side may take to pass validation, e.g. 30s.
            validation_timeout => validation_timeout_seconds: timeout,
            /// Blue/green: flip back when the new side fails after the flip (true or false).
            rollback_on_failure: flag,
        }
    };
}

/// Normalises [`with_step_params!`]'s list (an entry without `=> field` keeps its
/// name) and hands it on.
#[doc(hidden)]
#[macro_export]
macro_rules! step_param_list {
    (@canary $cb:ident [$($c:tt)*] blue_green: $($rest:tt)*) => {
        $crate::step_param_list! { @blue_green $cb [$($c)*] [] $($rest)* }
    };
    (@canary $cb:ident [$($c:tt)*] $(#[$d:meta])* $name:ident => $field:ident : $kind:ident $($req:ident)?, $($rest:tt)*) => {
        $crate::step_param_list! { @canary $cb [$($c)* { [$(#[$d])*] $name $field $kind [$($req)?] }] $($rest)* }
    };
    (@canary $cb:ident [$($c:tt)*] $(#[$d:meta])* $name:ident : $kind:ident $($req:ident)?, $($rest:tt)*) => {
        $crate::step_param_list! { @canary $cb [$($c)* { [$(#[$d])*] $name $name $kind [$($req)?] }] $($rest)* }
    };
    (@blue_green $cb:ident [$($c:tt)*] [$($b:tt)*]) => {
        $cb! { canary { $($c)* } blue_green { $($b)* } }
    };
    (@blue_green $cb:ident [$($c:tt)*] [$($b:tt)*] $(#[$d:meta])* $name:ident => $field:ident : $kind:ident $($req:ident)?, $($rest:tt)*) => {
        $crate::step_param_list! { @blue_green $cb [$($c)*] [$($b)* { [$(#[$d])*] $name $field $kind [$($req)?] }] $($rest)* }
    };
    (@blue_green $cb:ident [$($c:tt)*] [$($b:tt)*] $(#[$d:meta])* $name:ident : $kind:ident $($req:ident)?, $($rest:tt)*) => {
        $crate::step_param_list! { @blue_green $cb [$($c)*] [$($b)* { [$(#[$d])*] $name $name $kind [$($req)?] }] $($rest)* }
    };
}

/// A request's type for a kind: what the user writes.
macro_rules! request_type {
    (percent) => {
        f64
    };
    (threshold) => {
        f64
    };
    (duration) => {
        DurationValue
    };
    (timeout) => {
        DurationValue
    };
    (count) => {
        u64
    };
    (flag) => {
        bool
    };
}

/// Declares [`StepParams`] and [`StepParams::NAMES`] from [`with_step_params!`]'s list.
macro_rules! step_params {
    ($(
        $group:ident { $( { [$(#[$doc:meta])*] $name:ident $field:ident $kind:ident [$($req:ident)?] } )* }
    )*) => {
        /// The step parameters a deployment request may set (`POST /deployments/canary`,
        /// `POST /deployments/blue-green/switch`, the webhook's `config`); each one left
        /// out keeps the tenant's config, else the default. With the `clap` feature these
        /// are keystone-ctl's flags (`--initial-traffic` ...).
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::Args))]
        pub struct StepParams {
            $($(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[cfg_attr(feature = "clap", arg(long))]
                pub $name: Option<request_type!($kind)>,
            )*)*
        }

        impl StepParams {
            /// Every parameter's name, as sent.
            pub const NAMES: &'static [&'static str] = &[$($(stringify!($name)),*),*];
        }
    };
}

with_step_params!(step_params);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_given_values_are_sent() {
        let p = StepParams {
            interval: Some("2s".parse().unwrap()),
            rollback_on_failure: Some(false),
            ..StepParams::default()
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"interval": "2s", "rollback_on_failure": false})
        );
        let back: StepParams =
            serde_json::from_value(json!({"interval": 30, "min_samples": 5})).unwrap();
        assert_eq!(back.interval, Some(DurationValue::Seconds(30.0)));
        assert_eq!(back.min_samples, Some(5));
    }

    #[test]
    fn durations_are_seconds_or_numbers_with_units() {
        assert_eq!("30".parse(), Ok(DurationValue::Seconds(30.0)));
        for ok in ["2s", "1m30s", "500ms", "1h 5m"] {
            assert_eq!(ok.parse(), Ok(DurationValue::Text(ok.into())), "{ok}");
        }
        for bad in ["soon", "", "5 parsecs", "s5", "2s!"] {
            let e = bad.parse::<DurationValue>().unwrap_err();
            assert!(
                e.starts_with(&format!("'{bad}' is not a duration like")),
                "{e}"
            );
        }
    }
}
