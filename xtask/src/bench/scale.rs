//! `cargo xtask bench scale`.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench scale` is not built yet (issue #4)")
}
