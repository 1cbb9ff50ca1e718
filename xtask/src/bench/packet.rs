//! `cargo xtask bench packet`.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench packet` is not built yet (issue #4)")
}
