//! `wire_enum!`: an enum whose variants are words on the wire, each spelled once, and
//! [`known`], the strict reading for where the word must be one this version knows.

use serde::{Deserializer, de};

/// What every `wire_enum!` enum is: its known variants and their wire names.
pub trait WireEnum: Copy + 'static {
    /// Every known variant's name, in declaration order.
    const NAMES: &'static [&'static str];
    /// The known variant named `word`, if any.
    fn from_name(word: &str) -> Option<Self>;
}

/// For `#[serde(deserialize_with = "keystone_api::known")]`: reads a wire enum, but
/// refuses a word this version does not know (serde's `unknown variant` error, listing
/// the known words) instead of reading it as `Unknown`. For what the agent itself must
/// act on: its config, its state file, a webhook's strategy.
pub fn known<'de, D: Deserializer<'de>, T: WireEnum>(deserializer: D) -> Result<T, D::Error> {
    struct Word<T>(std::marker::PhantomData<T>);
    impl<T: WireEnum> de::Visitor<'_> for Word<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "one of {}", T::NAMES.join(", "))
        }
        fn visit_str<E: de::Error>(self, word: &str) -> Result<T, E> {
            T::from_name(word).ok_or_else(|| E::unknown_variant(word, T::NAMES))
        }
    }
    deserializer.deserialize_str(Word(std::marker::PhantomData))
}

/// Declares an enum with each variant's wire name, plus an `Unknown` variant that a
/// word this crate does not know yet (a newer agent's) reads as. Generates serde,
/// `ALL` (the known variants), `name()`, `Display`, `FromStr`, comparison with the
/// wire name (`state == "completed"`), and with the `clap` feature `clap::ValueEnum`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
            /// A value this version of keystone-api does not know (sent by a newer agent).
            #[default]
            #[serde(other, rename = "unknown")]
            Unknown,
        }

        impl $name {
            /// Every known variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the wire (`unknown` for [`Self::Unknown`]).
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                    $name::Unknown => "unknown",
                }
            }
        }

        impl $crate::WireEnum for $name {
            const NAMES: &'static [&'static str] = &[$($wire),+];
            fn from_name(word: &str) -> Option<$name> {
                match word {
                    $( $wire => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let known: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    format!("'{s}' is not one of {}", known.join(", "))
                })
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [$name] {
                $name::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use crate::{ForwardingMode, Protocol, Strategy};

    #[derive(Debug, Deserialize)]
    struct Strict {
        #[serde(deserialize_with = "super::known")]
        protocol: Protocol,
    }

    #[test]
    fn known_reads_a_known_word_and_refuses_any_other_by_name() {
        let ok: Strict = serde_json::from_str(r#"{"protocol": "udp"}"#).unwrap();
        assert_eq!(ok.protocol, Protocol::Udp);
        for (body, want) in [
            (
                r#"{"protocol": "sctp"}"#,
                "unknown variant `sctp`, expected `tcp` or `udp`",
            ),
            // `unknown` is the lenient reading's name for a word it does not know.
            (
                r#"{"protocol": "unknown"}"#,
                "unknown variant `unknown`, expected `tcp` or `udp`",
            ),
            (
                r#"{"protocol": 6}"#,
                "invalid type: integer `6`, expected one of tcp, udp",
            ),
        ] {
            let e = serde_json::from_str::<Strict>(body)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        // The lenient reading still takes a newer agent's word.
        let lenient: Protocol = serde_json::from_str(r#""sctp""#).unwrap();
        assert_eq!(lenient, Protocol::Unknown);
    }

    #[test]
    fn names_are_the_wire_names_in_order() {
        use super::WireEnum;
        assert_eq!(Strategy::NAMES, ["canary", "blue_green", "rolling"]);
        assert_eq!(ForwardingMode::NAMES, ["nat", "dsr"]);
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_name(s.name()), Some(*s));
        }
    }
}
