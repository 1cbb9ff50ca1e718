//! `-o human|wide|json|yaml`: tables for people (wide adds columns), the agent's
//! answers as sent for scripts.

use std::io::Write;

use clap::ValueEnum;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::{Failure, typed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables.
    Human,
    /// Tables with more columns (status: effective weights and TCP counters;
    /// deployments: backends, environment and the last reason).
    Wide,
    /// The agent's answer as JSON.
    Json,
    /// The agent's answer as YAML.
    Yaml,
}

impl Output {
    /// A table format (human or wide).
    pub fn is_human(self) -> bool {
        matches!(self, Output::Human | Output::Wide)
    }

    pub fn wide(self) -> bool {
        self == Output::Wide
    }

    /// `v` as a whole document of this format (pretty JSON, YAML); None for tables.
    pub fn document(self, v: &Value) -> Option<String> {
        match self {
            Output::Json => Some(serde_json::to_string_pretty(v).unwrap_or_default() + "\n"),
            Output::Yaml => Some(serde_yaml::to_string(v).unwrap_or_default()),
            Output::Human | Output::Wide => None,
        }
    }

    /// `v` as one item of a stream (`wait`'s progress): a JSON line, or a YAML
    /// document starting `---`; None for tables.
    pub fn item(self, v: &Value) -> Option<String> {
        match self {
            Output::Json => Some(format!("{v}\n")),
            Output::Yaml => self.document(v).map(|doc| format!("---\n{doc}")),
            Output::Human | Output::Wide => None,
        }
    }
}

/// Prints an answer: as sent with `-o json|yaml`, else read as `T` and rendered by
/// `human` (which reads `-o wide` itself where it has more columns).
pub fn print<T: DeserializeOwned>(
    out: &mut dyn Write,
    output: Output,
    answer: &Value,
    human: impl FnOnce(&T) -> String,
) -> Result<(), Failure> {
    let text = match output.document(answer) {
        Some(text) => text,
        None => human(&typed(answer)?),
    };
    out.write_all(text.as_bytes()).ok();
    Ok(())
}
