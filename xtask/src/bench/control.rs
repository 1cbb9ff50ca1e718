//! `cargo xtask bench control`.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench control` is not built yet (issue #4)")
}
