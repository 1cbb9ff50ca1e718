//! The lab's one error type.

use std::{io, path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab needs root (network namespaces, XDP, bpffs): run it as root, e.g. `sudo -E cargo xtask ...`"
    )]
    NotRoot,
    #[error("`{cmd}` could not be started: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("timed out after {after:?} waiting for {what} (last seen: {last})")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("{name} not found at {}: run `cargo xtask build` first", path.display())]
    MissingBinary { name: String, path: PathBuf },
    #[error("bad lab name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("lab {name:?} already exists ({}): run `cargo xtask lab down --name {name}` first", dir.display())]
    Exists { name: String, dir: PathBuf },
    #[error("no lab state at {}: is the lab up?", path.display())]
    NoState { path: PathBuf },
    #[error("lab state {}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: output is not the expected JSON ({source}); output was:\n{output}")]
    Parse {
        what: String,
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no process named {name:?} in this lab")]
    NoProcess { name: String },
    #[error("{name} exited early ({status}); its stderr:\n{stderr}")]
    Exited {
        name: String,
        status: String,
        stderr: String,
    },
    #[error("no backend named {name:?} in this lab")]
    NoBackend { name: String },
    #[error("{what}: HTTP {status}: {body}")]
    Http {
        what: String,
        status: u16,
        body: String,
    },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}
