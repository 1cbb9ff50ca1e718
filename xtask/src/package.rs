//! `cargo xtask package`: the Debian package (keystone-lb) from the release build:
//! both binaries, the systemd unit, the example config as a conffile, man pages and
//! keystone-ctl's completions (the last two written here from the binaries' clap
//! definitions). cargo-deb takes its layout from `[package.metadata.deb]` in
//! keystone-agent/Cargo.toml.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use keystone_lab::Bins;

use crate::{build, setup, util};

/// keystone-ctl's completion scripts: shell, and the file name its directory expects.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "keystone-ctl"),
    ("zsh", "_keystone-ctl"),
    ("fish", "keystone-ctl.fish"),
];

/// Builds the package and returns its path (`output`, else cargo-deb's
/// `target/debian/keystone-lb_<version>_<arch>.deb`). `no_build`: package the release
/// binaries as they are (the test suite packages the ones it tests).
pub fn package(output: Option<&Path>, no_build: bool) -> Result<PathBuf> {
    if !no_build {
        build::build()?;
    }
    setup::cargo_deb()?;
    let bins = Bins::beside_current_exe()?;
    for bin in [&bins.agent, &bins.ctl] {
        Bins::require(bin)?;
    }
    let generated = bins.agent.with_file_name("package");
    write_docs(&bins, &generated)?;

    println!("xtask: cargo deb -p keystone-agent --no-build");
    let mut deb = util::cargo()?;
    deb.args(["deb", "-p", "keystone-agent", "--no-build"]);
    if let Some(path) = output {
        deb.arg("--output").arg(path);
    }
    let what = keystone_lab::cmd::describe(&deb);
    let out = deb
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting `{what}`"))?;
    if !out.status.success() {
        bail!("`{what}` failed ({})", out.status);
    }
    // cargo-deb prints the path of the package it wrote last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("`{what}` printed no .deb path: {stdout}"))?;
    println!("xtask: package {}", path.display());
    Ok(path)
}

/// Man pages of both binaries and keystone-ctl's completions, under `dir`.
fn write_docs(bins: &Bins, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for d in [&man, &completions] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    util::run(Command::new(&bins.agent).arg("--generate-man").arg(&man))?;
    util::run(Command::new(&bins.ctl).arg("man").arg(&man))?;
    // Debian ships man pages gzipped (-n: no name or time stamp, so builds compare equal).
    let pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", man.display()))?;
    util::run(Command::new("gzip").arg("-9n").args(&pages))?;
    for (shell, file) in COMPLETIONS {
        let script = keystone_lab::cmd::run(Command::new(&bins.ctl).args(["completion", shell]))?;
        let path = completions.join(file);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
