//! Durations as written in the config (`30s`, `1m30s`, a number of seconds).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// The longest duration any field accepts: 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration as written: `30s`, `1m30s`, `500ms`, or a bare number of seconds.
/// Kept as written until `validate()`, which knows the field's path and line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

/// By hand rather than `untagged`: a wrong type is refused at the field itself, with
/// a message that says what a duration looks like.
impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl serde::de::Visitor<'_> for DurationVisitor {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 30s or 1m30s, or a number of seconds")
            }
            fn visit_f64<E>(self, v: f64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v as f64))
            }
            fn visit_str<E>(self, v: &str) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Text(v.to_owned()))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

/// A request's duration (keystone-api's), to be read by the same rules.
impl From<&keystone_api::DurationValue> for DurationSpec {
    fn from(v: &keystone_api::DurationValue) -> DurationSpec {
        match v {
            keystone_api::DurationValue::Seconds(s) => DurationSpec::Seconds(*s),
            keystone_api::DurationValue::Text(t) => DurationSpec::Text(t.clone()),
        }
    }
}

/// The config's duration as a request would give it.
impl From<&DurationSpec> for keystone_api::DurationValue {
    fn from(v: &DurationSpec) -> keystone_api::DurationValue {
        match v {
            DurationSpec::Seconds(s) => keystone_api::DurationValue::Seconds(*s),
            DurationSpec::Text(t) => keystone_api::DurationValue::Text(t.clone()),
        }
    }
}

impl DurationSpec {
    pub fn parse(&self) -> Result<Duration, String> {
        let d = match self {
            DurationSpec::Seconds(s) => {
                Duration::try_from_secs_f64(*s).map_err(|_| format!("{s} is not a duration ≥ 0"))?
            }
            DurationSpec::Text(t) => humantime::parse_duration(t)
                .map_err(|e| format!("'{t}' is not a duration like 30s or 1m30s: {e}"))?,
        };
        // Longer than any interval or timeout means, and short enough that adding it
        // to a clock never overflows.
        if d > MAX_DURATION {
            return Err(format!(
                "{} is longer than the longest allowed ({})",
                humantime::format_duration(d),
                humantime::format_duration(MAX_DURATION)
            ));
        }
        Ok(d)
    }

    /// The value of a field that `validate()` has accepted.
    pub fn get(&self) -> Duration {
        self.parse().unwrap_or_default()
    }
}
