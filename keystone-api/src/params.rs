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

/// Declares [`StepParams`] and derives [`StepParams::NAMES`] from its fields.
macro_rules! step_params {
    ($( $(#[$meta:meta])* $field:ident: $ty:ty, )+) => {
        /// The step parameters a deployment request may set (`POST /deployments/canary`,
        /// `POST /deployments/blue-green/switch`, the webhook's `config`); each one left
        /// out keeps the tenant's config, else the default. With the `clap` feature these
        /// are keystone-ctl's flags (`--initial-traffic` ...).
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::Args))]
        pub struct StepParams {
            $(
                $(#[$meta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[cfg_attr(feature = "clap", arg(long))]
                pub $field: Option<$ty>,
            )+
        }

        impl StepParams {
            /// Every parameter's name, as sent.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];
        }
    };
}

step_params! {
    /// Percent of new connections to start with.
    initial_traffic: f64,
    /// Percent added every interval.
    increment: f64,
    /// Time between steps, e.g. 30s, 2m, or seconds.
    interval: DurationValue,
    /// Percent at which the rollout waits for approval.
    max_traffic: f64,
    /// Success rate in percent (0-100; 0 < X <= 1 is refused as a fraction) needed for
    /// the next step.
    health_threshold: f64,
    /// Success rate in percent (0-100) below which the canary is rolled back.
    rollback_threshold: f64,
    /// Samples needed per step for a verdict.
    min_samples: u64,
    /// Blue/green: how long the idle side may take to pass validation, e.g. 30s.
    validation_timeout: DurationValue,
    /// Blue/green: flip back when the new side fails after the flip (true or false).
    rollback_on_failure: bool,
}

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
