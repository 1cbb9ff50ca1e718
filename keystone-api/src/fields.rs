//! The field names a derived `Deserialize` knows, read from the type itself, so a
//! strict reader can list them without a second, hand-kept list.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

/// The fields of `T`, a struct with derived `Deserialize` and no `#[serde(flatten)]`
/// (such a struct is read as a map and has no list: empty).
pub fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(Probe) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// A deserializer that answers nothing, and notes the fields it is asked for.
struct Probe;

#[derive(Debug)]
struct Found(&'static [&'static str]);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<M: fmt::Display>(_: M) -> Found {
        Found(&[])
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Found> {
        Err(Found(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeploymentWebhook, StepParams};

    #[test]
    fn the_fields_are_the_structs_as_sent() {
        assert_eq!(
            struct_fields::<DeploymentWebhook>(),
            [
                "service",
                "version",
                "strategy",
                "environment",
                "pipeline",
                "config"
            ]
        );
        assert_eq!(struct_fields::<StepParams>(), StepParams::NAMES);
    }
}
