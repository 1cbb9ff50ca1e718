//! `cargo xtask build`: setup, then the release binaries (its own module so that
//! `util`, which `setup` uses, does not use `setup` back).

use anyhow::Result;

use crate::{setup, util};

/// `setup`, then the release binaries: agent (with its XDP object), ctl, lab tools.
pub fn build() -> Result<()> {
    setup::setup()?;
    println!("xtask: building keystone-agent, keystone-ctl, ks-backend, ks-client (release)");
    util::run(util::cargo()?.args([
        "build",
        "--release",
        "-p",
        "keystone-agent",
        "-p",
        "keystone-ctl",
        "-p",
        "keystone-tests",
        "--bins",
    ]))
}
