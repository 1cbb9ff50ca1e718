//! `cargo xtask bench e2e`.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench e2e` is not built yet (issue #4)")
}
