//! What is wrong with a config: each problem with its field and line.

use std::{fmt, path::PathBuf};

use serde::Serialize;

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Path of the field, e.g. `tenants[0].services[1].weight`.
    pub field: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub reason: String,
}

/// The API's shape of a problem (`ErrorBody.problems`).
impl From<Problem> for keystone_api::Problem {
    fn from(p: Problem) -> Self {
        keystone_api::Problem {
            field: p.field,
            line: p.line.map(|l| l as u64),
            reason: p.reason,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is invalid:\n{}", format_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
        /// Found too; reported by `--check` next to the problems.
        warnings: Vec<Problem>,
    },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }

    pub fn warnings(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { warnings, .. } => warnings,
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
