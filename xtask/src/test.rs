//! `cargo xtask test`: setup, build, then the whole suite with a summary.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{build, util};

pub fn test(extra: &[String]) -> Result<()> {
    util::require_root("`cargo xtask test` (the integration tests create network namespaces)")?;
    let started = Instant::now();
    build::build()?;
    let built = started.elapsed();

    println!("xtask: cargo test --workspace --release --no-fail-fast");
    let mut cmd = util::cargo()?;
    // Every test binary runs even when one fails, so the summary covers the whole suite.
    cmd.args(["test", "--workspace", "--release", "--no-fail-fast"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed, mut ignored, mut suites) = (0, 0, 0, 0);
    // A binary that announced its tests and never printed its result crashed, hung
    // and was killed, or was stopped: its tests are neither passed nor failed above.
    let (mut announced, mut unfinished) = (false, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if is_running_line(&line) {
            unfinished += u32::from(announced);
            announced = true;
        }
        if let Some(counts) = parse_result_line(&line) {
            announced = false;
            suites += 1;
            passed += counts.passed;
            failed += counts.failed;
            ignored += counts.ignored;
        }
    }
    unfinished += u32::from(announced);
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "\nxtask test: {suites} test binaries; setup+build {:.0} s, total {:.0} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "summary: {passed} passed, {failed} failed, {ignored} skipped{}",
        if unfinished > 0 {
            format!(
                "; {unfinished} test binar{} did not finish (crashed, hung or killed: see above)",
                if unfinished == 1 { "y" } else { "ies" }
            )
        } else {
            String::new()
        }
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The counts of one libtest closing line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Whether `line` is libtest's header of a test binary (`running 12 tests`).
fn is_running_line(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|n| n.parse::<u64>().is_ok())
        && (line.ends_with(" tests") || line.ends_with(" test"))
}

/// Parses `test result: ok. 6 passed; 0 failed; 1 ignored; 0 measured; …`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.strip_prefix("test result: ")?;
    let mut c = Counts::default();
    for part in rest.split(['.', ';']) {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => c.passed += n,
                "failed" => c.failed += n,
                "ignored" => c.ignored += n,
                _ => {}
            }
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_closing_lines() {
        assert_eq!(
            parse_result_line(
                "test result: FAILED. 12 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.50s"
            ),
            Some(Counts {
                passed: 12,
                failed: 3,
                ignored: 1
            })
        );
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert!(is_running_line("running 73 tests"));
        assert!(is_running_line("running 1 test"));
        assert!(!is_running_line("running the suite"));
        assert!(!is_running_line("test running 3 tests ... ok"));
    }
}
