//! `status`, once or with `--watch` (and `--until-done`, which exits like `wait`).

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use clap::Args;
use keystone_api::{DeploymentList, Status};
use serde_json::json;

use crate::{
    Output,
    client::{Client, Failure, typed},
    exit, parse_duration, print, render,
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

/// One status screen: the status and any running deployment.
fn status_screen(client: &Client, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let status = client.get("/status")?;
    let deployments: DeploymentList = client
        .get("/deployments")
        .and_then(|list| typed(&list))
        .unwrap_or_default();
    let running: Vec<_> = deployments
        .deployments
        .into_iter()
        .filter(|d| d.is_running())
        .collect();
    match output {
        Output::Json => {
            writeln!(
                out,
                "{}",
                json!({ "status": status, "running_deployments": running })
            )
            .ok();
        }
        Output::Human => {
            let mut text = render::status(&typed::<Status>(&status)?);
            for d in &running {
                text.push('\n');
                text.push_str(&render::deployment(d));
            }
            out.write_all(text.as_bytes()).ok();
        }
    }
    Ok(())
}

pub fn status(
    client: &Client,
    args: &StatusArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    if !args.watch {
        let status = client.get("/status")?;
        print(out, output, &status, render::status)?;
        return Ok(exit::OK);
    }
    let clear = output == Output::Human && std::io::stdout().is_terminal();
    let mut screen = |out: &mut dyn Write| {
        if clear {
            out.write_all(b"\x1b[2J\x1b[H").ok();
        } else if output == Output::Human {
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
