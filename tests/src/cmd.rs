//! Running commands (in the host or inside a namespace) with errors that say what ran.

use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::error::{LabError, Result};

/// `program arg1 arg2 …`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What a command a test ran printed: its stdout, and everything it printed named
/// by its command line and exit status (for failure messages).
pub struct Printed {
    pub success: bool,
    pub stdout: String,
    pub said: String,
}

/// Runs `cmd` to its end for a test; panics naming it if it cannot start.
pub fn printed(cmd: &mut Command) -> Printed {
    let what = describe(cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let said = format!(
        "`{what}` ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Printed {
        success: out.status.success(),
        stdout,
        said,
    }
}

/// The repository's root (this crate lives in `tests/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `cargo xtask` from the repository, in the environment a shell would give it: without
/// the variables `cargo test` sets for a test, which would make cargo rebuild the
/// release binaries rather than reuse them.
pub fn xtask() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo()).arg("xtask");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "LD_LIBRARY_PATH" {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

/// A command that runs `program` inside network namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.arg("netns").arg("exec").arg(ns).arg(program);
    c
}

/// Runs `cmd` to completion; returns its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: describe(cmd),
            source,
        })
}

/// Runs `cmd`; a non-zero exit is an error carrying its stderr. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    check(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with `input` on its stdin; a non-zero exit is an error. Returns stdout.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<String> {
    let what = describe(cmd);
    let spawn_err = |source| LabError::Spawn {
        cmd: what.clone(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(spawn_err)?;
    written.map_err(|source| LabError::Io {
        what: format!("writing the stdin of `{what}`"),
        source,
    })?;
    check(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(cmd: &Command, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(LabError::Command {
        cmd: describe(cmd),
        status: out.status.to_string(),
        stderr,
    })
}
