//! keystone-ctl: talks to the agent's admin API, for operators and CI.
//!
//! Exit codes: see [`exit`] (printed by `--help`).
#![forbid(unsafe_code)]

mod client;
mod connect;
mod render;
#[cfg(test)]
mod test_server;
mod wait;

use std::{
    collections::BTreeSet,
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use crate::{
    client::{Client, Failure, fail, segment},
    wait::WaitOptions,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `completion` and `man`: they describe this CLI and need no agent.
fn describe(command: &Command, out: &mut dyn Write) -> Option<Result<u8, Failure>> {
    use clap::CommandFactory;
    match command {
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keystone-ctl", &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 spells the verbs' state `keystone__subcmd__ctl__…` where
                // it matches and `keystone__ctl__…` where it sets it (the '-' in the name),
                // so nothing after the verb completed.
                script = script.replace("keystone__subcmd__ctl", "keystone__ctl");
            }
            Some(
                out.write_all(script.as_bytes())
                    .map(|()| exit::OK)
                    .map_err(|e| fail(exit::REFUSED, format!("cannot write the script: {e}"))),
            )
        }
        Command::Man { dir } => Some(
            clap_mangen::generate_to(Cli::command(), dir)
                .map(|()| exit::OK)
                .map_err(|e| {
                    fail(
                        exit::REFUSED,
                        format!("cannot write the man pages to {}: {e}", dir.display()),
                    )
                }),
        ),
        _ => None,
    }
}

#[derive(Args)]
struct StatusArgs {
    /// Repeat every --interval until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop when this deployment finishes, with `wait`'s exit codes.
    #[arg(long, value_name = "DEPLOYMENT_ID", requires = "watch")]
    until_done: Option<String>,
    /// Refresh interval for --watch.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// With --until-done: give up after this long (exit 12).
    #[arg(long, value_parser = parse_duration, default_value = "10m", requires = "until_done")]
    timeout: Duration,
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

#[derive(Subcommand)]
enum CanaryCommand {
    /// Start a canary of the tenant's backends labelled with --version.
    Start(CanaryStart),
    /// Give the canary 100 % now and finish.
    Promote(Target),
    /// Stop and put all traffic back on the stable backends.
    Abort(Target),
    /// Hold the current split.
    Pause(Target),
    /// Continue a paused canary.
    Resume(Target),
}

#[derive(Args)]
struct CanaryStart {
    tenant: String,
    /// labels.version of the canary backends.
    #[arg(long)]
    version: String,
    /// Percent of new connections to start with.
    #[arg(long)]
    initial_traffic: Option<f64>,
    /// Percent added every interval.
    #[arg(long)]
    increment: Option<f64>,
    /// Time between steps, e.g. 30s, 2m, or seconds.
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Value>,
    /// Percent at which the rollout waits for approval.
    #[arg(long)]
    max_traffic: Option<f64>,
    /// Success rate in percent (0-100; 0 < X <= 1 is refused as a fraction) needed for
    /// the next step.
    #[arg(long)]
    health_threshold: Option<f64>,
    /// Success rate in percent (0-100) below which the canary is rolled back.
    #[arg(long)]
    rollback_threshold: Option<f64>,
    /// Samples needed per step for a verdict.
    #[arg(long)]
    min_samples: Option<u64>,
}

/// A deployment: by id, or the tenant's running one.
#[derive(Args, Debug, PartialEq)]
#[group(required = true, multiple = false)]
struct Target {
    /// The deployment id.
    id: Option<String>,
    /// Act on this tenant's running deployment instead.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SwitchStrategy {
    Instant,
    Gradual,
}

/// `name=weight` with a whole weight; the error names the pair.
fn parse_weight_pair(s: &str) -> Result<(String, u32), String> {
    let Some((name, weight)) = s.split_once('=') else {
        return Err(format!("'{s}' is not NAME=WEIGHT (e.g. api-v2=10)"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("'{s}' has no backend name before '='"));
    }
    let weight = weight.trim().parse::<u32>().map_err(|_| {
        format!("'{s}': weight '{weight}' is not a whole number ≥ 0 (e.g. {name}=10)")
    })?;
    Ok((name.to_owned(), weight))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 2s or 10m: {e}"))
}

/// A duration as the API takes it: a number of seconds, or text like "2s".
fn parse_interval(s: &str) -> Result<Value, String> {
    if let Ok(seconds) = s.parse::<f64>() {
        return Ok(json!(seconds));
    }
    parse_duration(s).map(|_| Value::String(s.to_owned()))
}

fn weights_body(pairs: &[(String, u32)]) -> Result<Value, Failure> {
    let mut seen = BTreeSet::new();
    let mut weights = Map::new();
    for (name, weight) in pairs {
        if !seen.insert(name) {
            return Err(fail(
                exit::USAGE,
                format!("backend '{name}' is given twice"),
            ));
        }
        weights.insert(name.clone(), json!(weight));
    }
    Ok(json!({ "weights": weights }))
}

fn canary_body(args: &CanaryStart) -> Value {
    let mut body = Map::new();
    body.insert("service".into(), json!(args.tenant));
    body.insert("version".into(), json!(args.version));
    let numbers = [
        ("initial_traffic", args.initial_traffic),
        ("increment", args.increment),
        ("max_traffic", args.max_traffic),
        ("health_threshold", args.health_threshold),
        ("rollback_threshold", args.rollback_threshold),
    ];
    for (key, value) in numbers {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    if let Some(interval) = &args.interval {
        body.insert("interval".into(), interval.clone());
    }
    if let Some(n) = args.min_samples {
        body.insert("min_samples".into(), json!(n));
    }
    Value::Object(body)
}

/// The deployment `target` names: its id, or the tenant's running one. A rollback may
/// also undo the tenant's latest completed deployment.
fn resolve(client: &Client, target: &Target, allow_completed: bool) -> Result<String, Failure> {
    if let Some(id) = &target.id {
        return Ok(id.clone());
    }
    let tenant = target.tenant.as_deref().unwrap_or_default();
    let list = client.get("/deployments")?;
    pick_deployment(&list, tenant, allow_completed)
}

fn is_running(d: &Value) -> bool {
    matches!(
        d["state"].as_str(),
        Some("progressing" | "paused" | "awaiting_approval")
    )
}

fn pick_deployment(list: &Value, tenant: &str, allow_completed: bool) -> Result<String, Failure> {
    let deployments: Vec<&Value> = list["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["tenant"] == tenant)
        .collect();
    // Newest first, as the API lists them.
    let found = deployments.iter().find(|d| is_running(d)).or_else(|| {
        allow_completed
            .then(|| deployments.iter().find(|d| d["state"] == "completed"))
            .flatten()
    });
    match found {
        Some(d) => Ok(render::text(&d["id"])),
        None => Err(fail(
            exit::REFUSED,
            format!(
                "tenant '{tenant}' has no running deployment{}",
                if allow_completed {
                    " and no completed one to roll back"
                } else {
                    ""
                }
            ),
        )),
    }
}

fn print(out: &mut dyn Write, output: Output, value: &Value, human: impl FnOnce(&Value) -> String) {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Output::Human => human(value),
    };
    out.write_all(text.as_bytes()).ok();
}

fn started(body: &Value) -> String {
    let d = &body["deployment"];
    let id = render::text(&body["deployment_id"]);
    let what = match d["strategy"].as_str() {
        Some("blue_green") => format!(
            "switch of {} from {} to {} (validating {} first)",
            render::text(&d["tenant"]),
            render::text(&d["from_environment"]),
            render::text(&d["to_environment"]),
            render::text(&d["to_environment"]),
        ),
        _ => format!(
            "{} of {} version {} at {}",
            render::text(&d["strategy"]),
            render::text(&d["tenant"]),
            render::text(&d["version"]),
            render::percent(&d["canary_percent"]),
        ),
    };
    format!("started deployment {id}: {what}\nfollow it with: keystone-ctl wait {id}\n")
}

fn acted(d: &Value) -> String {
    format!(
        "deployment {} is now {}: canary {} ({})\n",
        render::text(&d["id"]),
        render::text(&d["state"]),
        render::percent(&d["canary_percent"]),
        render::last_reason(d),
    )
}

fn act(client: &Client, target: &Target, action: &str) -> Result<Value, Failure> {
    let id = resolve(client, target, action == "rollback")?;
    client.post(&format!("/deployments/{}/{action}", segment(&id)), None)
}

/// Runs the command; returns the exit code for outcomes that are not failures
/// (wait's 10/11/12).
fn run(cli: &Cli, client: &Client, out: &mut dyn Write) -> Result<u8, Failure> {
    let output = cli.output;
    match &cli.command {
        Command::Status(args) => return status(client, args, output, out),
        Command::Reload => {
            let r = client.post("/admin/reload", None)?;
            print(out, output, &r, |r| {
                let mut text = format!(
                    "reloaded: config generation {}\n",
                    render::text(&r["config_generation"])
                );
                for c in r["conflicts"].as_array().into_iter().flatten() {
                    text.push_str(&format!("conflict: {}\n", render::text(c)));
                }
                text
            });
        }
        Command::Tenants => print(out, output, &client.get("/tenants")?, render::tenants),
        Command::Weights { tenant, weights } => {
            let body = weights_body(weights)?;
            let path = format!("/tenants/{}/weights", segment(tenant));
            print(
                out,
                output,
                &client.post(&path, Some(&body))?,
                render::tenant,
            );
        }
        Command::Canary(CanaryCommand::Start(args)) => {
            let r = client.post("/deployments/canary", Some(&canary_body(args)))?;
            print(out, output, &r, started);
        }
        Command::Canary(CanaryCommand::Promote(t)) => {
            print(out, output, &act(client, t, "promote")?, acted)
        }
        Command::Canary(CanaryCommand::Abort(t)) => {
            print(out, output, &act(client, t, "abort")?, acted)
        }
        Command::Canary(CanaryCommand::Pause(t)) => {
            print(out, output, &act(client, t, "pause")?, acted)
        }
        Command::Canary(CanaryCommand::Resume(t)) => {
            print(out, output, &act(client, t, "resume")?, acted)
        }
        Command::Rollback(t) => print(out, output, &act(client, t, "rollback")?, acted),
        Command::Switch {
            tenant,
            to,
            from,
            strategy,
        } => {
            let mut body = json!({ "service": tenant, "to": to });
            if let Some(from) = from {
                body["from"] = json!(from);
            }
            if let Some(s) = strategy {
                body["strategy"] = json!(match s {
                    SwitchStrategy::Instant => "instant",
                    SwitchStrategy::Gradual => "gradual",
                });
            }
            let r = client.post("/deployments/blue-green/switch", Some(&body))?;
            print(out, output, &r, started);
        }
        Command::Deployments { id: None } => print(
            out,
            output,
            &client.get("/deployments")?,
            render::deployments,
        ),
        Command::Deployments { id: Some(id) } => {
            let d = client.get(&format!("/deployments/{}", segment(id)))?;
            print(out, output, &d, render::deployment);
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

/// One status screen: the status and any running deployment.
fn status_screen(client: &Client, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let status = client.get("/status")?;
    let deployments = client.get("/deployments").ok();
    let running: Vec<Value> = deployments
        .as_ref()
        .and_then(|d| d["deployments"].as_array())
        .into_iter()
        .flatten()
        .filter(|d| is_running(d))
        .cloned()
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
            let mut text = render::status(&status);
            for d in &running {
                text.push('\n');
                text.push_str(&render::deployment(d));
            }
            out.write_all(text.as_bytes()).ok();
        }
    }
    Ok(())
}

fn status(
    client: &Client,
    args: &StatusArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    if !args.watch {
        let status = client.get("/status")?;
        print(out, output, &status, render::status);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keystone-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The script `completion <shell>` prints, without any agent to talk to.
    fn completion(shell: &str) -> String {
        let cli = parse(&["completion", shell]).unwrap();
        let mut out = Vec::new();
        let code = describe(&cli.command, &mut out).expect("completion needs no agent");
        assert_eq!(code.ok(), Some(exit::OK));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completion_scripts_complete_verbs_and_flags() {
        let bash = completion("bash");
        // What bash offers after `keystone-ctl ca<TAB>`, and so on.
        let offered = |words: &str, cword: usize| {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "{bash}\nCOMP_WORDS=({words}); COMP_CWORD={cword}\n\
                     f=$(complete -p keystone-ctl | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
                     \"$f\" keystone-ctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
                     echo \"${{COMPREPLY[@]}}\""
                ))
                .output()
                .expect("bash runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(offered("keystone-ctl ca", 1), "canary");
        assert_eq!(offered("keystone-ctl canary pro", 2), "promote");
        assert_eq!(offered("keystone-ctl status --wa", 2), "--watch");
        let zsh = completion("zsh");
        assert!(zsh.starts_with("#compdef keystone-ctl"), "{zsh}");
        let fish = completion("fish");
        assert!(
            fish.contains("complete -c keystone-ctl") && fish.contains("-a \"canary\""),
            "{fish}"
        );
        for script in [&bash, &zsh, &fish] {
            for word in ["canary", "switch", "wait", "--token-file"] {
                assert!(script.contains(word), "{word} missing from:\n{script}");
            }
        }
        let err = parse(&["completion", "powershell"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[possible values: bash, zsh, fish]"), "{err}");
    }

    #[test]
    fn man_pages_cover_every_verb() {
        let dir = tempfile::tempdir().unwrap();
        let cli = parse(&["man", dir.path().to_str().unwrap()]).unwrap();
        let code = describe(&cli.command, &mut Vec::new()).expect("man needs no agent");
        assert_eq!(code.ok(), Some(exit::OK));
        for page in [
            "keystone-ctl.1",
            "keystone-ctl-canary-start.1",
            "keystone-ctl-wait.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH keystone-ctl"), "{page}:\n{text}");
        }
    }

    #[test]
    fn weights_pairs_parse_and_errors_name_the_pair() {
        let cli = parse(&["weights", "api", "api-v1=90", "api-v2=10"]).unwrap();
        let Command::Weights { tenant, weights } = cli.command else {
            panic!()
        };
        assert_eq!(tenant, "api");
        assert_eq!(
            weights,
            [("api-v1".to_owned(), 90), ("api-v2".to_owned(), 10)]
        );
        assert_eq!(
            weights_body(&weights).unwrap(),
            json!({"weights": {"api-v1": 90, "api-v2": 10}})
        );

        for (bad, says) in [
            ("api-v2", "'api-v2' is not NAME=WEIGHT"),
            (
                "api-v2=ten",
                "'api-v2=ten': weight 'ten' is not a whole number",
            ),
            ("api-v2=-1", "'api-v2=-1': weight '-1'"),
            ("=5", "'=5' has no backend name"),
        ] {
            let e = parse(&["weights", "api", "api-v1=90", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        assert!(parse(&["weights", "api"]).is_err(), "at least one pair");
        let e = weights_body(&[("a".into(), 1), ("a".into(), 2)]).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert_eq!(e.message, "backend 'a' is given twice");
    }

    #[test]
    fn canary_start_sends_only_given_values() {
        let cli = parse(&[
            "canary",
            "start",
            "api",
            "--version",
            "1.24.0",
            "--initial-traffic",
            "5",
            "--interval",
            "2s",
            "--min-samples",
            "20",
        ])
        .unwrap();
        let Command::Canary(CanaryCommand::Start(args)) = &cli.command else {
            panic!()
        };
        assert_eq!(
            canary_body(args),
            json!({"service": "api", "version": "1.24.0", "initial_traffic": 5.0,
                   "interval": "2s", "min_samples": 20})
        );
        let cli = parse(&[
            "canary",
            "start",
            "api",
            "--version",
            "1",
            "--interval",
            "30",
        ])
        .unwrap();
        let Command::Canary(CanaryCommand::Start(args)) = &cli.command else {
            panic!()
        };
        assert_eq!(canary_body(args)["interval"], json!(30.0));
        let e = parse(&[
            "canary",
            "start",
            "api",
            "--version",
            "1",
            "--interval",
            "soon",
        ]);
        assert!(
            e.err()
                .unwrap()
                .to_string()
                .contains("'soon' is not a duration")
        );
        assert!(
            parse(&["canary", "start", "api"]).is_err(),
            "--version is required"
        );
    }

    #[test]
    fn targets_are_an_id_or_a_tenant_not_both() {
        let cli = parse(&["canary", "promote", "d-1"]).unwrap();
        let Command::Canary(CanaryCommand::Promote(t)) = cli.command else {
            panic!()
        };
        assert_eq!(
            t,
            Target {
                id: Some("d-1".into()),
                tenant: None
            }
        );
        let cli = parse(&["rollback", "--tenant", "api"]).unwrap();
        let Command::Rollback(t) = cli.command else {
            panic!()
        };
        assert_eq!(t.tenant.as_deref(), Some("api"));
        assert!(parse(&["canary", "abort"]).is_err());
        assert!(parse(&["canary", "abort", "d-1", "--tenant", "api"]).is_err());
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

    #[test]
    fn tenant_resolves_to_its_running_deployment() {
        let list = json!({"deployments": [
            {"id": "d-3", "tenant": "web", "state": "progressing"},
            {"id": "d-2", "tenant": "api", "state": "completed"},
            {"id": "d-1", "tenant": "api", "state": "rolled_back"},
        ]});
        assert_eq!(pick_deployment(&list, "web", false).unwrap(), "d-3");
        let e = pick_deployment(&list, "api", false).unwrap_err();
        assert_eq!(e.code, exit::REFUSED);
        assert_eq!(e.message, "tenant 'api' has no running deployment");
        assert_eq!(
            pick_deployment(&list, "api", true).unwrap(),
            "d-2",
            "rollback undoes the last completed"
        );
    }
}

/// The verbs against a canned agent: the requests they send and what they print.
#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::test_server::canned;

    fn run_against(
        answers: Vec<(u16, Value)>,
        args: &[&str],
    ) -> (Result<u8, Failure>, String, Vec<(String, String)>) {
        let (url, requests) = canned(answers);
        let cli = Cli::try_parse_from(
            ["keystone-ctl", "--api", url.as_str(), "--token", "t"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let client = Client::new(cli.api.as_deref().unwrap(), cli.token.clone());
        let mut out = Vec::new();
        let result = run(&cli, &client, &mut out);
        let requests = requests.lock().unwrap().clone();
        (result, String::from_utf8(out).unwrap(), requests)
    }

    fn deployment(id: &str, tenant: &str, state: &str) -> Value {
        json!({"id": id, "tenant": tenant, "strategy": "canary", "version": "2",
               "state": state, "canary_percent": 100.0,
               "history": [{"reason": "promoted by operator"}]})
    }

    #[test]
    fn promote_by_tenant_resolves_the_running_deployment() {
        let (result, out, requests) = run_against(
            vec![
                (
                    200,
                    json!({"deployments": [deployment("d-9", "web", "progressing"), deployment("d-8", "api", "awaiting_approval")]}),
                ),
                (200, deployment("d-8", "api", "completed")),
            ],
            &["canary", "promote", "--tenant", "api"],
        );
        assert_eq!(result.unwrap(), 0);
        let lines: Vec<&str> = requests.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(lines, ["GET /deployments", "POST /deployments/d-8/promote"]);
        assert_eq!(
            out,
            "deployment d-8 is now completed: canary 100% (promoted by operator)\n"
        );
    }

    #[test]
    fn weights_and_canary_start_send_their_bodies() {
        let tenant = json!({"name": "api", "backends": []});
        let (result, _, requests) =
            run_against(vec![(200, tenant)], &["weights", "api", "a=1", "b=0"]);
        assert_eq!(result.unwrap(), 0);
        assert_eq!(requests[0].0, "POST /tenants/api/weights");
        assert_eq!(
            serde_json::from_str::<Value>(&requests[0].1).unwrap(),
            json!({"weights": {"a": 1, "b": 0}})
        );

        let accepted = json!({"deployment_id": "d-1", "deployment": {"strategy": "canary", "tenant": "api", "version": "2", "canary_percent": 10.0}});
        let (result, out, requests) = run_against(
            vec![(202, accepted.clone())],
            &["canary", "start", "api", "--version", "2"],
        );
        assert_eq!(result.unwrap(), 0);
        assert_eq!(requests[0].0, "POST /deployments/canary");
        assert_eq!(
            out,
            "started deployment d-1: canary of api version 2 at 10%\nfollow it with: keystone-ctl wait d-1\n"
        );
        let (_, out, _) = run_against(
            vec![(202, accepted.clone())],
            &["-o", "json", "switch", "web", "--to", "green"],
        );
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), accepted);
    }

    #[test]
    fn refusals_and_auth_map_to_exit_codes() {
        let (result, _, _) = run_against(
            vec![(
                409,
                json!({"error": "a deployment is already running for tenant 'api'"}),
            )],
            &["canary", "start", "api", "--version", "2"],
        );
        let e = result.unwrap_err();
        assert_eq!(e.code, exit::REFUSED);
        assert_eq!(
            e.message,
            "the agent answered 409: a deployment is already running for tenant 'api'"
        );
        let (result, _, _) = run_against(
            vec![(401, json!({"error": "wrong bearer token"}))],
            &["tenants"],
        );
        assert_eq!(result.unwrap_err().code, exit::AUTH);
        let (result, _, _) = run_against(
            vec![(
                422,
                json!({"error": "config k.yaml is invalid:\n  line 3: tenants[0].listen: required\n  tenants[1].name: required",
                       "problems": [{"field": "tenants[0].listen", "line": 3, "reason": "required"},
                                    {"field": "tenants[1].name", "line": null, "reason": "required"}]}),
            )],
            &["reload"],
        );
        let e = result.unwrap_err();
        assert_eq!(e.code, exit::REFUSED);
        assert_eq!(
            e.message,
            "the agent answered 422: config k.yaml is invalid:\n  line 3: tenants[0].listen: required\n  tenants[1].name: required",
            "each problem once"
        );
    }

    #[test]
    fn status_until_done_exits_like_wait() {
        let status = json!({"config_path": "k.yaml", "tenants": []});
        let (result, out, requests) = run_against(
            vec![
                (200, status),
                (
                    200,
                    json!({"deployments": [deployment("d-1", "api", "progressing")]}),
                ),
                (200, deployment("d-1", "api", "rolled_back")),
            ],
            &[
                "status",
                "--watch",
                "--until-done",
                "d-1",
                "--interval",
                "10ms",
            ],
        );
        assert_eq!(result.unwrap(), exit::ROLLED_BACK, "{out}");
        let lines: Vec<&str> = requests.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            lines,
            ["GET /status", "GET /deployments", "GET /deployments/d-1"]
        );
        assert!(out.contains("config k.yaml"), "{out}");
        assert!(
            out.contains("deployment d-1  tenant api"),
            "running deployment shown: {out}"
        );
        assert!(out.ends_with("— exit 10\n"), "{out}");
    }
}
