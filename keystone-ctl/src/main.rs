//! keystone-ctl: talks to the agent's admin API, for operators and CI.
//!
//! Exit codes: see [`exit`] (printed by `--help`).
#![forbid(unsafe_code)]

mod client;
mod connect;
mod describe;
mod render;
mod rollout;
mod status;
#[cfg(test)]
mod test_server;
mod wait;
mod weights;

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use keystone_api::{Action, Reloaded, StepParams, SwitchStrategy};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    client::{Client, Failure, body_of, segment, typed},
    describe::{Shell, describe},
    rollout::{CanaryCommand, Target},
    status::StatusArgs,
    wait::WaitOptions,
    weights::parse_weight_pair,
};

/// Exit codes, one meaning each.
pub mod exit {
    pub const OK: u8 = 0;
    /// The agent refused the request (invalid config, unknown tenant, conflict ...).
    pub const REFUSED: u8 = 1;
    /// Bad arguments (clap's own code).
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const AUTH: u8 = 4;
    /// wait: the deployment was rolled back, aborted or failed.
    pub const ROLLED_BACK: u8 = 10;
    /// wait: the deployment is paused or awaiting approval.
    pub const PAUSED: u8 = 11;
    /// wait: still progressing at --timeout.
    pub const TIMED_OUT: u8 = 12;
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
   0  success (wait: the deployment completed)
   1  refused by the agent (invalid config, unknown tenant or deployment, conflict, ...)
   2  usage error
   3  agent unreachable
   4  authentication failed
  10  wait: the deployment was rolled back, aborted or failed
  11  wait: the deployment is paused or awaiting approval (promote, resume or abort it)
  12  wait: the deployment was still progressing at --timeout";

#[derive(Parser)]
#[command(
    name = "keystone-ctl",
    version,
    about = "Control a Keystone agent through its admin API",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// Admin API base URL [default: admin.listen from the agent's config, else
    /// http://127.0.0.1:9100].
    #[arg(long, env = "KEYSTONE_API", value_parser = connect::parse_api, global = true)]
    api: Option<String>,
    /// Bearer token [default: --token-file, else admin.token or admin.token_file from the
    /// agent's config, else the token the agent generated in /var/lib/keystone/admin-token].
    #[arg(long, env = "KEYSTONE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "KEYSTONE_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The agent's config, read for admin.listen and the admin token only
    /// [default: /etc/keystone/keystone.yaml when it exists, as the agent's].
    #[arg(long, env = "KEYSTONE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Output format: human tables, or the API's JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Human, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// VIPs, backends, weights and the live traffic share per backend.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),
    /// Make the agent re-read its config file (refused, with reasons, if invalid).
    Reload,
    /// Tenants with their backends' configured and effective weights, health and traffic.
    #[command(visible_alias = "backends")]
    Tenants,
    /// Set backend weights by hand (until the next deployment, or a reload that
    /// changes the tenant's weights in the config).
    Weights {
        tenant: String,
        /// Backend weights, e.g. api-v1=90 api-v2=10.
        #[arg(required = true, value_name = "NAME=WEIGHT", value_parser = parse_weight_pair)]
        weights: Vec<(String, u32)>,
    },
    /// Canary rollouts: start one, or act on a running one.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Switch a blue/green tenant to the other environment.
    Switch {
        tenant: String,
        /// Environment to switch to.
        #[arg(long)]
        to: String,
        /// Environment taking traffic now (default: the tenant's active one).
        #[arg(long)]
        from: Option<String>,
        /// Flip at once or in steps (default: the tenant's switch_config).
        #[arg(long, value_enum)]
        strategy: Option<SwitchStrategy>,
        /// Step parameters (gradual switches step like a canary).
        #[command(flatten)]
        params: StepParams,
    },
    /// Put all traffic back on the stable backends (a running or a completed deployment).
    Rollback(Target),
    /// List deployments (newest first), or show one with its step history.
    Deployments {
        /// A deployment id.
        id: Option<String>,
    },
    /// Wait for a deployment to finish, printing its progress; the exit code says how it ended.
    #[command(after_help = EXIT_CODES_HELP)]
    Wait {
        /// The deployment id (printed by `canary start` and `switch`).
        id: String,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_help = "Examples:\n  \
        keystone-ctl completion bash > /etc/bash_completion.d/keystone-ctl\n  \
        keystone-ctl completion zsh > \"${fpath[1]}/_keystone-ctl\"\n  \
        keystone-ctl completion fish > ~/.config/fish/completions/keystone-ctl.fish")]
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (keystone-ctl.1 and one per verb) to DIR (used when packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Args)]
struct PollArgs {
    /// Give up after this long (exit 12).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    timeout: Duration,
    /// How often to poll.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 2s or 10m: {e}"))
}

/// Prints an answer: as sent with `-o json`, else read as `T` and rendered by `human`.
fn print<T: DeserializeOwned>(
    out: &mut dyn Write,
    output: Output,
    answer: &Value,
    human: impl FnOnce(&T) -> String,
) -> Result<(), Failure> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(answer).unwrap_or_default() + "\n",
        Output::Human => human(&typed(answer)?),
    };
    out.write_all(text.as_bytes()).ok();
    Ok(())
}

fn reloaded(r: &Reloaded) -> String {
    let mut text = format!("reloaded: config generation {}\n", r.config_generation);
    for c in &r.conflicts {
        text.push_str(&format!("conflict: {c}\n"));
    }
    text
}

/// Runs the command; returns the exit code for outcomes that are not failures
/// (wait's 10/11/12).
fn run(cli: &Cli, client: &Client, out: &mut dyn Write) -> Result<u8, Failure> {
    let output = cli.output;
    let act = |target: &Target, action: Action| rollout::act(client, target, action);
    match &cli.command {
        Command::Status(args) => return status::status(client, args, output, out),
        Command::Reload => print(out, output, &client.post("/admin/reload", None)?, reloaded)?,
        Command::Tenants => print(out, output, &client.get("/tenants")?, render::tenants)?,
        Command::Weights { tenant, weights } => {
            let body = body_of(&weights::weights_request(weights)?);
            let path = format!("/tenants/{}/weights", segment(tenant));
            print(
                out,
                output,
                &client.post(&path, Some(&body))?,
                render::tenant,
            )?;
        }
        Command::Canary(CanaryCommand::Start(args)) => {
            let body = body_of(&rollout::canary_request(args));
            let r = client.post("/deployments/canary", Some(&body))?;
            print(out, output, &r, rollout::started)?;
        }
        Command::Canary(CanaryCommand::Promote(t)) => {
            print(out, output, &act(t, Action::Promote)?, rollout::acted)?
        }
        Command::Canary(CanaryCommand::Abort(t)) => {
            print(out, output, &act(t, Action::Abort)?, rollout::acted)?
        }
        Command::Canary(CanaryCommand::Pause(t)) => {
            print(out, output, &act(t, Action::Pause)?, rollout::acted)?
        }
        Command::Canary(CanaryCommand::Resume(t)) => {
            print(out, output, &act(t, Action::Resume)?, rollout::acted)?
        }
        Command::Rollback(t) => print(out, output, &act(t, Action::Rollback)?, rollout::acted)?,
        Command::Switch {
            tenant,
            to,
            from,
            strategy,
            params,
        } => {
            let request = keystone_api::SwitchRequest {
                service: tenant.clone(),
                from: from.clone(),
                to: to.clone(),
                strategy: *strategy,
                params: params.clone(),
                pipeline: None,
            };
            let r = client.post("/deployments/blue-green/switch", Some(&body_of(&request)))?;
            print(out, output, &r, rollout::started)?;
        }
        Command::Deployments { id: None } => print(
            out,
            output,
            &client.get("/deployments")?,
            render::deployments,
        )?,
        Command::Deployments { id: Some(id) } => {
            let d = client.get(&format!("/deployments/{}", segment(id)))?;
            print(out, output, &d, render::deployment)?;
        }
        Command::Wait { id, poll } => {
            let options = WaitOptions {
                timeout: poll.timeout,
                interval: poll.interval,
                output,
            };
            return wait::wait(client, id, &options, out, |_| Ok(()));
        }
        Command::Completion { .. } | Command::Man { .. } => {
            unreachable!("`describe` runs these before connecting")
        }
    }
    Ok(exit::OK)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Some(result) = describe(&cli.command, &mut stdout) {
        return finish(result, cli.output, &mut stdout);
    }
    let given = connect::Given {
        api: cli.api.as_deref(),
        token: cli.token.as_deref(),
        token_file: cli.token_file.as_deref(),
        config: cli.config.as_deref(),
        default_config: std::path::Path::new(connect::DEFAULT_CONFIG),
    };
    let result = connect::resolve(&given).and_then(|connection| {
        let client = Client::new(&connection.api, connection.token);
        run(&cli, &client, &mut stdout)
    });
    finish(result, cli.output, &mut stdout)
}

/// The exit code of `result`, with a failure printed (also as JSON with `-o json`).
fn finish(result: Result<u8, Failure>, output: Output, stdout: &mut dyn Write) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, message }) => {
            if output == Output::Json {
                writeln!(stdout, "{}", json!({ "error": message, "exit_code": code })).ok();
            }
            stdout.flush().ok();
            eprintln!("keystone-ctl: {message}");
            ExitCode::from(code)
        }
    }
}

/// The command line `args` (without the program name), for tests.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("keystone-ctl").chain(args.iter().copied()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_status_and_switch_arguments() {
        let cli = parse(&[
            "wait",
            "d-1",
            "--timeout",
            "30s",
            "--interval",
            "250ms",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Wait { id, poll } = &cli.command else {
            panic!()
        };
        assert_eq!(id, "d-1");
        assert_eq!(poll.timeout, Duration::from_secs(30));
        assert_eq!(poll.interval, Duration::from_millis(250));
        assert_eq!(cli.output, Output::Json);
        let cli = parse(&["wait", "d-1"]).unwrap();
        let Command::Wait { poll, .. } = &cli.command else {
            panic!()
        };
        assert_eq!(
            (poll.timeout, poll.interval),
            (Duration::from_secs(600), Duration::from_secs(1))
        );

        assert!(
            parse(&["status", "--until-done", "d-1"]).is_err(),
            "needs --watch"
        );
        let cli = parse(&[
            "status",
            "--watch",
            "--until-done",
            "d-1",
            "--timeout",
            "1m",
        ])
        .unwrap();
        let Command::Status(s) = &cli.command else {
            panic!()
        };
        assert_eq!(s.until_done.as_deref(), Some("d-1"));
        assert_eq!(s.timeout, Duration::from_secs(60));

        let cli = parse(&["switch", "web", "--to", "green", "--strategy", "gradual"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Switch {
                strategy: Some(SwitchStrategy::Gradual),
                ..
            }
        ));
        assert!(parse(&["switch", "web"]).is_err(), "--to is required");
        assert!(parse(&["backends"]).is_ok(), "alias of tenants");
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "  10  wait:",
            "  11  wait:",
            "  12  wait:",
            "   3  agent unreachable",
        ] {
            assert!(help.contains(code), "{code} missing from:\n{help}");
        }
    }
}

#[cfg(test)]
mod verb_tests;
