//! External tools the tests use that `cargo xtask setup` installs outside Debian's
//! packages, and where they live (one place for both sides).

use std::{env, path::PathBuf};

/// The schemathesis release the API schema test runs (PyPI).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// `$CARGO_HOME`, or `~/.cargo`; `None` when neither variable is set.
pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The Python virtualenv `cargo xtask setup` installs schemathesis into: beside
/// bpf-linker's files in the cargo home, so it outlives the checkout.
pub fn schemathesis_venv() -> Option<PathBuf> {
    Some(
        cargo_home()?
            .join("keystone-tools")
            .join(format!("schemathesis-{SCHEMATHESIS_VERSION}")),
    )
}

/// The `schemathesis` program in [`schemathesis_venv`].
pub fn schemathesis() -> Option<PathBuf> {
    Some(schemathesis_venv()?.join("bin").join("schemathesis"))
}
