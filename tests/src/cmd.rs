//! Running commands (in the host or inside a namespace) with errors that say what ran.

use std::{
    ffi::OsStr,
    io::Write,
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
