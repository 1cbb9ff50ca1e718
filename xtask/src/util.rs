//! Running cargo and other tools from xtask.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use keystone_lab::Bins;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    keystone_lab::tools::cargo_home().context("neither CARGO_HOME nor HOME is set")
}

/// PATH with `$CARGO_HOME/bin` (where bpf-linker goes) and the sbin directories first.
pub fn path_env() -> Result<OsString> {
    let mut dirs = vec![cargo_home()?.join("bin")];
    dirs.extend(
        env::var_os("PATH")
            .map(|p| env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    Ok(env::join_paths(dirs)?)
}

/// The first `program` on [`path_env`].
pub fn which(program: &str) -> Option<PathBuf> {
    let path = path_env().ok()?;
    env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A `cargo` command run from the workspace root with [`path_env`].
pub fn cargo() -> Result<Command> {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).env("PATH", path_env()?);
    Ok(c)
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    let what = keystone_lab::cmd::describe(cmd);
    let status = cmd.status().with_context(|| format!("starting `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// The release binaries `build` made.
pub fn bins() -> Result<Bins> {
    // xtask itself runs from target/release, beside them.
    let bins = Bins::beside_current_exe()?;
    for p in [&bins.agent, &bins.ctl, &bins.backend, &bins.client] {
        Bins::require(p)?;
    }
    Ok(bins)
}

/// An error unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} needs root (network namespaces, XDP, bpffs): run it as root, e.g. `sudo -E env PATH=$PATH cargo xtask …`"
        );
    }
    Ok(())
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag that [`interrupted`] reports, so a
/// command stops between steps and still tears down what it built (its `Lab` drops).
pub fn stop_on_signals() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// An error once SIGINT or SIGTERM arrived (after [`stop_on_signals`]).
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted; the lab is being torn down");
    }
    Ok(())
}

/// The machine's load averages over 1, 5 and 15 minutes (`/proc/loadavg`), for
/// benches to say how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
