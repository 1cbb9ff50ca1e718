//! `cargo xtask test`: setup, build, then the whole suite with a summary.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::util;

pub fn test(extra: &[String]) -> Result<()> {
    util::require_root("`cargo xtask test` (the integration tests create network namespaces)")?;
    let started = Instant::now();
    util::build()?;
    let built = started.elapsed();

    println!("xtask: cargo test --workspace --release");
    let mut cmd = util::cargo()?;
    cmd.args(["test", "--workspace", "--release"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed, mut ignored, mut suites) = (0u64, 0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            suites += 1;
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "\nxtask test: {suites} test binaries; setup+build {:.0} s, total {:.0} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
