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
    #[error("chromium DevTools {method}: {error}")]
    DevTools { method: String, error: String },
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

/// `e` and every cause in its chain that its own text does not already show, one a
/// line, with the OS error number when there is one; a long report (a verifier log)
/// keeps its first and last lines, so a failure's message stays readable in a CI log.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text.push_str(&format!("\n  caused by: {line}"));
        }
        if let Some(errno) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            text.push_str(&format!("\n  (OS error {errno})"));
        }
        cause = c.source();
    }
    clipped(&text, REPORT_HEAD, REPORT_TAIL)
}

/// Lines of a long [`report`] kept from its start and from its end.
const REPORT_HEAD: usize = 10;
const REPORT_TAIL: usize = 40;

/// `text` with only its first `head` and last `tail` lines when it is longer.
fn clipped(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= head + tail {
        return text.to_owned();
    }
    format!(
        "{}\n  [… {} lines left out …]\n{}",
        lines[..head].join("\n"),
        lines.len() - head - tail,
        lines[lines.len() - tail..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading the program: {log}")]
    struct Outer {
        log: String,
        #[source]
        source: io::Error,
    }

    /// A verifier log of thousands of lines: the report keeps the step, the OS error
    /// and the log's end (where the verifier says what it refused).
    #[test]
    fn a_long_error_keeps_its_first_lines_its_cause_and_its_end() {
        let log: Vec<String> = (0..5000).map(|i| format!("insn {i}")).collect();
        let e = Outer {
            log: format!("{}\nR1 invalid mem access", log.join("\n")),
            source: io::Error::from_raw_os_error(13),
        };
        let r = report(&e);
        let lines: Vec<&str> = r.lines().collect();
        assert!(lines.len() <= REPORT_HEAD + REPORT_TAIL + 1, "{r}");
        assert_eq!(lines[0], "loading the program: insn 0");
        assert!(r.contains("[… 4953 lines left out …]"), "{r}");
        assert!(r.contains("R1 invalid mem access"), "{r}");
        assert!(r.contains("caused by: Permission denied"), "{r}");
        assert!(r.contains("(OS error 13)"), "{r}");
    }
}
