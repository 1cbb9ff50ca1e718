//! keystone-ctl: talks to the agent's admin API, for operators and CI.
//!
//! Exit codes: see [`exit`] (printed by `--help`).
#![forbid(unsafe_code)]

mod client;
mod connect;
mod contexts;
mod describe;
mod drain;
mod output;
mod plan;
mod promote;
mod render;
mod rollout;
mod status;
mod steps;
#[cfg(test)]
mod test_server;
mod wait;
mod weights;

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use keystone_api::{Action, Reloaded, StepParams, SwitchStrategy};
use serde_json::json;

use crate::{
    client::{Client, Failure, body_of, segment},
    contexts::{Chosen, ConfigCommand},
    describe::{Shell, describe},
    output::{Output, print},
    plan::PlanCommand,
    promote::PromoteArgs,
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

/// The exit codes, for `--help` (a macro so verbs can append it to their examples).
macro_rules! exit_codes_help {
    () => {
        "\
Exit codes:
   0  success (wait: the deployment completed)
   1  refused by the agent (invalid config, unknown tenant or deployment, conflict, ...)
   2  usage error
   3  agent unreachable
   4  authentication failed
  10  wait: the deployment was rolled back, aborted or failed (promote: in a context)
  11  wait: the deployment is paused or awaiting approval (promote, resume or abort it);
      promote: stopped before a gated context
  12  wait: the deployment was still progressing at --timeout"
    };
}

const TOP_HELP: &str = concat!(
    "Where to connect: each setting from the first that gives it — ",
    "flag, then environment, then the context, then the agent's config\n",
    "(the context: --context, else the current one of $XDG_CONFIG_HOME/keystone/config.yaml,\n",
    "by default ~/.config/keystone/config.yaml; see `keystone-ctl config`).\n\n",
    exit_codes_help!()
);

#[derive(Parser)]
#[command(
    name = "keystone-ctl",
    version,
    about = "Control a Keystone agent through its admin API",
    after_help = TOP_HELP
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
    /// The context (named gateway) to use instead of the current one.
    #[arg(long, env = "KEYSTONE_CONTEXT", global = true)]
    context: Option<String>,
    /// Output format: tables (wide: more columns), or the API's answer as JSON or YAML.
    #[arg(short, long, value_enum, default_value_t = Output::Human, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// VIPs, backends, weights and the live traffic share per backend.
    #[command(after_help = concat!("Examples:\n  \
        keystone-ctl status\n  \
        keystone-ctl -o wide status --watch\n  \
        keystone-ctl status --watch --until-done api-1764590000-1 --timeout 15m\n\n",
        exit_codes_help!()))]
    Status(StatusArgs),
    /// Make the agent re-read its config file (refused, with reasons, if invalid).
    #[command(
        after_help = "Examples:\n  keystone-ctl reload\n  keystone-ctl --context staging reload"
    )]
    Reload,
    /// Withdraw this gateway's VIPs from BGP, then wait until no new connection
    /// arrives (exit 0) or the timeout passes (exit 12).
    #[command(
        after_help = "Examples:\n  keystone-ctl drain\n  keystone-ctl drain --timeout 1m\n  \
        keystone-ctl drain --no-wait"
    )]
    Drain(drain::DrainArgs),
    /// Announce this gateway's VIPs again (those that are ready).
    #[command(after_help = "Examples:\n  keystone-ctl undrain")]
    Undrain,
    /// Tenants with their backends' configured and effective weights, health and traffic.
    #[command(
        visible_alias = "backends",
        after_help = "Examples:\n  keystone-ctl tenants\n  keystone-ctl -o yaml tenants"
    )]
    Tenants,
    /// Set backend weights by hand (until the next deployment, or a reload that
    /// changes the tenant's weights in the config).
    #[command(after_help = "Examples:\n  keystone-ctl weights api api-v1=90 api-v2=10")]
    Weights {
        tenant: String,
        /// Backend weights, e.g. api-v1=90 api-v2=10.
        #[arg(required = true, value_name = "NAME=WEIGHT", value_parser = parse_weight_pair)]
        weights: Vec<(String, u32)>,
    },
    /// Canary rollouts: start one, or act on a running one.
    #[command(
        subcommand,
        after_help = "Examples:\n  keystone-ctl canary start api --version 1.24.0\n  \
            keystone-ctl canary promote --tenant api"
    )]
    Canary(CanaryCommand),
    /// Switch a blue/green tenant to the other environment.
    #[command(after_help = "Examples:\n  keystone-ctl switch web --to green\n  \
        keystone-ctl switch web --to green --strategy gradual --increment 25 --interval 30s")]
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
    #[command(after_help = "Examples:\n  keystone-ctl rollback --tenant api\n  \
        keystone-ctl rollback api-1764590000-1")]
    Rollback(Target),
    /// List deployments (newest first), or show one with its step history.
    #[command(after_help = "Examples:\n  keystone-ctl deployments\n  \
        keystone-ctl -o wide deployments\n  keystone-ctl deployments api-1764590000-1")]
    Deployments {
        /// A deployment id.
        id: Option<String>,
    },
    /// Wait for a deployment to finish, printing its progress; the exit code says how it ended.
    #[command(after_help = concat!("Examples:\n  \
        keystone-ctl wait api-1764590000-1\n  \
        keystone-ctl -o json wait api-1764590000-1 --timeout 15m\n\n",
        exit_codes_help!()))]
    Wait {
        /// The deployment id (printed by `canary start` and `switch`).
        id: String,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// Coordinated multi-service plans (the config's deployment_orchestration):
    /// start, follow, wait for, abort.
    #[command(
        subcommand,
        after_help = "Examples:\n  keystone-ctl plan start --version v2\n  \
            keystone-ctl plan wait plan-1"
    )]
    Plan(PlanCommand),
    /// Roll a version out through several contexts in turn (e.g. dev, staging,
    /// production), each with the tenant's strategy, waiting for each to complete;
    /// stops before a gated context (exit 11) and at a rollback (exit 10). The same
    /// command resumes: contexts already at the version are skipped.
    #[command(after_help = concat!("Examples:\n  \
        keystone-ctl promote web --version 1.24.0 --through dev,staging,production\n  \
        keystone-ctl promote web --version 1.24.0 --through dev,staging,production --approve production\n\n",
        exit_codes_help!()))]
    Promote(PromoteArgs),
    /// Contexts: named gateways (admin API URL, token file) in the user's config.
    #[command(
        subcommand,
        after_help = "Examples:\n  keystone-ctl config get-contexts\n  \
            keystone-ctl config use-context staging"
    )]
    Config(ConfigCommand),
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
pub struct PollArgs {
    /// Give up after this long (exit 12).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// How often to poll.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 2s or 10m: {e}"))
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
        Command::Drain(args) => return drain::drain(client, args, output, out),
        Command::Undrain => return drain::undrain(client, output, out),
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
        Command::Deployments { id: None } => {
            print(out, output, &client.get("/deployments")?, |list| {
                render::deployments(list, output.wide())
            })?
        }
        Command::Deployments { id: Some(id) } => {
            let d = client.get(&format!("/deployments/{}", segment(id)))?;
            print(out, output, &d, render::deployment)?;
        }
        Command::Plan(command) => return plan::run(client, command, output, out),
        Command::Wait { id, poll } => {
            let options = WaitOptions {
                timeout: poll.timeout,
                interval: poll.interval,
                output,
            };
            return wait::wait(client, id, &options, out, |_| Ok(()));
        }
        Command::Completion { .. }
        | Command::Man { .. }
        | Command::Config(_)
        | Command::Promote(_) => {
            unreachable!("`dispatch` runs these without one connection")
        }
    }
    Ok(exit::OK)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = dispatch(&cli, &mut stdout);
    finish(result, cli.output, &mut stdout)
}

/// Runs the verbs that need no agent, or several; connects for the others.
fn dispatch(cli: &Cli, out: &mut dyn Write) -> Result<u8, Failure> {
    if let Some(result) = describe(&cli.command, out) {
        return result;
    }
    match &cli.command {
        Command::Config(command) => contexts::run(command, cli.output, out),
        Command::Promote(args) => {
            if cli.api.is_some() || cli.token.is_some() || cli.token_file.is_some() {
                return Err(client::fail(
                    exit::USAGE,
                    "promote connects through each context of --through: drop --api, --token \
                     and --token-file (and KEYSTONE_API, KEYSTONE_TOKEN, KEYSTONE_TOKEN_FILE)",
                ));
            }
            promote::promote(
                args,
                &|context| connect(cli, Some(context)),
                cli.output,
                out,
            )
        }
        _ => {
            let context = contexts::choose(cli.context.as_deref())?;
            run(cli, &connect(cli, context.as_ref())?, out)
        }
    }
}

/// A client for the agent the flags, the environment, `context` and the agent's
/// config point at (in that order).
fn connect(cli: &Cli, context: Option<&Chosen>) -> Result<Client, Failure> {
    let given = connect::Given {
        api: cli.api.as_deref(),
        token: cli.token.as_deref(),
        token_file: cli.token_file.as_deref(),
        config: cli.config.as_deref(),
        context,
        default_config: std::path::Path::new(connect::DEFAULT_CONFIG),
    };
    let connection = connect::resolve(&given)?;
    Ok(Client::new(&connection.api, connection.token))
}

/// The exit code of `result`, with a failure printed (also as JSON with `-o json`).
fn finish(result: Result<u8, Failure>, output: Output, stdout: &mut dyn Write) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, message }) => {
            if let Some(text) = output.item(&json!({ "error": message, "exit_code": code })) {
                stdout.write_all(text.as_bytes()).ok();
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
