//! `status`, once or with `--watch` (and `--until-done`, which exits like `wait`).

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use clap::Args;
use keystone_api::{Deployment, DeploymentList, Status};
use serde_json::json;

use crate::{
    client::{Client, Failure, typed},
    exit,
    output::{Output, print},
    parse_duration, render, steps,
    wait::{self, WaitOptions},
};

#[derive(Args)]
pub struct StatusArgs {
    /// Repeat every --interval until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop when this deployment finishes, with `wait`'s exit codes.
    #[arg(long, value_name = "DEPLOYMENT_ID", requires = "watch")]
    pub until_done: Option<String>,
    /// Refresh interval for --watch.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub interval: Duration,
    /// With --until-done: give up after this long (exit 12).
    #[arg(long, value_parser = parse_duration, default_value = "10m", requires = "until_done")]
    pub timeout: Duration,
}

/// One status screen: the status, each running deployment with its step counter, and
/// for each tenant with none running its last finished one (so a deployment that just
/// ended stays on the screen).
fn status_screen(client: &Client, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let status = client.get("/status")?;
    let deployments: DeploymentList = client
        .get("/deployments")
        .and_then(|list| typed(&list))
        .unwrap_or_default();
    let (running, last_finished) = running_and_last_finished(deployments.deployments);
    if let Some(text) = output.item(&json!({
        "status": status,
        "running_deployments": running,
        "last_finished_deployments": last_finished,
    })) {
        out.write_all(text.as_bytes()).ok();
        return Ok(());
    }
    let mut text = render::status(&typed::<Status>(&status)?, output.wide());
    let now = steps::unix_now();
    for d in &running {
        text.push('\n');
        text.push_str(&render::deployment(d));
        if let Some(line) = steps::line(d, now) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if !last_finished.is_empty() {
        text.push_str("\nlast finished:\n");
        for d in &last_finished {
            text.push_str(&render::deployment(d));
        }
    }
    out.write_all(text.as_bytes()).ok();
    Ok(())
}

/// The running deployments, and the newest finished one of each tenant with none
/// running (the list is newest first).
fn running_and_last_finished(all: Vec<Deployment>) -> (Vec<Deployment>, Vec<Deployment>) {
    let (running, finished): (Vec<_>, Vec<_>) = all.into_iter().partition(|d| d.is_running());
    let mut last_finished: Vec<Deployment> = Vec::new();
    for d in finished {
        let shown = |t: &str| {
            running.iter().any(|r| r.tenant == t) || last_finished.iter().any(|l| l.tenant == t)
        };
        if !shown(&d.tenant) {
            last_finished.push(d);
        }
    }
    (running, last_finished)
}

pub fn status(
    client: &Client,
    args: &StatusArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    if !args.watch {
        let status = client.get("/status")?;
        print(out, output, &status, |s| render::status(s, output.wide()))?;
        return Ok(exit::OK);
    }
    let clear = output.is_human() && std::io::stdout().is_terminal();
    let mut screen = |out: &mut dyn Write| {
        if clear {
            out.write_all(b"\x1b[2J\x1b[H").ok();
        } else if output.is_human() {
            writeln!(out, "---").ok();
        }
        status_screen(client, output, out)
    };
    match &args.until_done {
        Some(id) => {
            let options = WaitOptions {
                timeout: args.timeout,
                interval: args.interval,
                output,
            };
            wait::wait(client, id, &options, out, &mut screen)
        }
        None => loop {
            screen(out)?;
            out.flush().ok();
            std::thread::sleep(args.interval);
        },
    }
}
