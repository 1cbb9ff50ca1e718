//! `promote`: one version through several contexts in turn (dev → staging →
//! production), each with the tenant's own strategy, waiting for each to complete.
//! Rerunning the same command resumes: a context whose newest deployment of the tenant
//! already completed the version is skipped, one still running it is waited for.

use std::io::Write;

use clap::Args;
use keystone_api::{
    Accepted, CanaryRequest, DeployState, Deployment, DeploymentList, StepParams, Strategy,
    SwitchRequest, Tenant, TenantList,
};
use serde_json::{Value, json};

use crate::{
    PollArgs,
    client::{Client, Failure, body_of, fail, typed},
    contexts::{self, Chosen, Contexts},
    exit,
    output::Output,
    wait::{self, WaitOptions},
};

#[derive(Args)]
pub struct PromoteArgs {
    tenant: String,
    /// labels.version of the backends to roll out.
    #[arg(long)]
    version: String,
    /// The contexts to go through, in order.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "CONTEXT,..."
    )]
    through: Vec<String>,
    /// Gated contexts to go through this time (promote stops before the others).
    #[arg(long, value_delimiter = ',', value_name = "CONTEXT,...")]
    approve: Vec<String>,
    // --timeout counts for each context.
    #[command(flatten)]
    poll: PollArgs,
}

/// How one context ended, when promotion cannot go on.
struct Stop {
    code: u8,
    /// "before production" or "in staging".
    at: String,
    why: String,
    resume: String,
}

pub fn promote(
    args: &PromoteArgs,
    connect: &dyn Fn(&Chosen) -> Result<Client, Failure>,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let path = contexts::path()?;
    let file = Contexts::read(&path)?;
    // Every context is checked before anything starts.
    let chosen = args
        .through
        .iter()
        .map(|name| file.get(name, &path))
        .collect::<Result<Vec<_>, _>>()?;
    for context in &chosen {
        let client = connect(context)?;
        // Every failure in a context names it (an unreachable agent, a missing tenant).
        let ended = promote_in(args, context, &client, output, out)
            .map_err(|f| fail(f.code, format!("context {}: {}", context.name, f.message)))?;
        if let Err(stop) = ended {
            say(
                out,
                output,
                json!({"context": context.name, "stopped": stop.why, "exit_code": stop.code}),
                format!(
                    "stopped {}: {} — exit {}\nresume with: {}",
                    stop.at, stop.why, stop.code, stop.resume
                ),
            );
            return Ok(stop.code);
        }
    }
    say(
        out,
        output,
        json!({"tenant": args.tenant, "version": args.version, "contexts": args.through}),
        format!(
            "{} is at version {} in {}",
            args.tenant,
            args.version,
            args.through.join(", ")
        ),
    );
    Ok(exit::OK)
}

/// The tenant's strategy in one context: Ok(Ok) when it is at the version.
fn promote_in(
    args: &PromoteArgs,
    context: &Chosen,
    client: &Client,
    output: Output,
    out: &mut dyn Write,
) -> Result<Result<(), Stop>, Failure> {
    let name = &context.name;
    let tenant = find_tenant(&typed(&client.get("/tenants")?)?, &args.tenant)?;
    let target = Target::of(&tenant, &args.version)?;
    let list: DeploymentList = typed(&client.get("/deployments")?)?;
    let newest = list
        .deployments
        .into_iter()
        .find(|d| d.tenant == args.tenant);
    let id = match newest {
        Some(d) if target.delivered_by(&d) && d.state == DeployState::Completed => {
            say(
                out,
                output,
                json!({"context": name, "skipped": d.id}),
                format!(
                    "{name}: {} is at version {} already (deployment {} completed); skipped",
                    args.tenant, args.version, d.id
                ),
            );
            return Ok(Ok(()));
        }
        Some(d) if target.delivered_by(&d) && d.is_running() => {
            say(
                out,
                output,
                json!({"context": name, "following": d.id}),
                format!("{name}: following deployment {} ({})", d.id, d.state),
            );
            d.id
        }
        _ if context.context.gated && !args.approve.contains(name) => {
            return Ok(Err(Stop {
                code: exit::PAUSED,
                at: format!("before {name}"),
                why: "it is gated".to_owned(),
                resume: resume_command(Some(name)),
            }));
        }
        _ => {
            let accepted: Accepted = typed(&target.start(client, &args.tenant)?)?;
            say(
                out,
                output,
                json!({"context": name, "started": accepted.deployment_id}),
                format!(
                    "{name}: {}",
                    crate::rollout::started(&accepted)
                        .lines()
                        .next()
                        .unwrap_or_default()
                ),
            );
            accepted.deployment_id
        }
    };
    let options = WaitOptions {
        timeout: args.poll.timeout,
        interval: args.poll.interval,
        output,
    };
    let (code, d) = wait::wait_for(client, &id, &options, out, |_| Ok(()))?;
    let resume = resume_command(None);
    let at = format!("in {name}");
    Ok(match code {
        exit::OK => Ok(()),
        exit::PAUSED => Err(Stop {
            code,
            at: at.clone(),
            why: format!("deployment {id} is {}", d.state),
            resume: format!("keystone-ctl --context {name} canary promote {id}, then {resume}"),
        }),
        exit::TIMED_OUT => Err(Stop {
            code,
            at: at.clone(),
            why: format!("deployment {id} is still {}", d.state),
            resume,
        }),
        _ => Err(Stop {
            code,
            at: at.clone(),
            why: format!("deployment {id} ended {}", d.state),
            resume: format!("fix it, then {resume}"),
        }),
    })
}

fn find_tenant(list: &TenantList, tenant: &str) -> Result<Tenant, Failure> {
    list.tenants
        .iter()
        .find(|t| t.about.name == tenant)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = list.tenants.iter().map(|t| t.about.name.as_str()).collect();
            fail(
                exit::REFUSED,
                format!("no tenant '{tenant}' (tenants: {})", names.join(", ")),
            )
        })
}

/// What brings a tenant to the version: a canary of it, or a switch to the
/// environment whose backends have it.
enum Target {
    Canary { version: String },
    Switch { to: String },
}

impl Target {
    fn of(tenant: &Tenant, version: &str) -> Result<Target, Failure> {
        if tenant.about.strategy != Strategy::BlueGreen {
            return Ok(Target::Canary {
                version: version.to_owned(),
            });
        }
        let mut environments: Vec<&str> = tenant
            .backends
            .iter()
            .filter(|b| b.identity.version == version)
            .filter_map(|b| b.identity.environment.as_deref())
            .collect();
        environments.dedup();
        match environments[..] {
            [to] => Ok(Target::Switch { to: to.to_owned() }),
            _ => Err(fail(
                exit::REFUSED,
                format!(
                    "blue/green tenant '{}' needs the backends of version {version} in one environment (found: {})",
                    tenant.about.name,
                    if environments.is_empty() {
                        "none".to_owned()
                    } else {
                        environments.join(", ")
                    }
                ),
            )),
        }
    }

    fn delivered_by(&self, d: &Deployment) -> bool {
        match self {
            Target::Canary { version } => d.version.as_deref() == Some(version),
            Target::Switch { to } => {
                d.strategy == Strategy::BlueGreen && d.to_environment.as_deref() == Some(to)
            }
        }
    }

    fn start(&self, client: &Client, tenant: &str) -> Result<Value, Failure> {
        match self {
            Target::Canary { version } => {
                let request = CanaryRequest {
                    service: tenant.to_owned(),
                    version: version.clone(),
                    params: StepParams::default(),
                    pipeline: None,
                };
                client.post("/deployments/canary", Some(&body_of(&request)))
            }
            Target::Switch { to } => {
                let request = SwitchRequest {
                    service: tenant.to_owned(),
                    to: to.clone(),
                    ..SwitchRequest::default()
                };
                client.post("/deployments/blue-green/switch", Some(&body_of(&request)))
            }
        }
    }
}

/// The command as it was run (every flag kept, so it is the exact command to run
/// again), approving `gate` too: its `--approve` values and the gate become one
/// `--approve` at the end.
fn resume_command(gate: Option<&str>) -> String {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    command_line(&argv, gate)
}

fn command_line(argv: &[String], gate: Option<&str>) -> String {
    let mut words = vec!["keystone-ctl".to_owned()];
    let mut approve: Vec<String> = Vec::new();
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        if arg == "--approve" {
            approve.extend(rest.next().cloned());
        } else if let Some(value) = arg.strip_prefix("--approve=") {
            approve.push(value.to_owned());
        } else {
            words.push(shell_word(arg));
        }
    }
    approve.extend(gate.map(str::to_owned));
    if !approve.is_empty() {
        words.push("--approve".to_owned());
        words.push(shell_word(&approve.join(",")));
    }
    words.join(" ")
}

/// `word` as a shell reads it back: as it is when that is safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// One line for people, or one item for scripts.
fn say(out: &mut dyn Write, output: Output, item: Value, text: String) {
    let text = output.item(&item).unwrap_or(text + "\n");
    out.write_all(text.as_bytes()).ok();
}

#[cfg(test)]
mod tests {
    use super::command_line;

    fn argv(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_resume_command_keeps_every_flag_and_adds_the_gate_to_one_approve() {
        let run = argv(
            "--context x promote web --version 2 --approve=staging --through dev,staging,production --timeout 10m",
        );
        assert_eq!(
            command_line(&run, Some("production")),
            "keystone-ctl --context x promote web --version 2 --through dev,staging,production --timeout 10m --approve staging,production"
        );
        assert_eq!(
            command_line(&argv("promote web --version 2 --approve staging"), None),
            "keystone-ctl promote web --version 2 --approve staging"
        );
        assert_eq!(
            command_line(&["promote".into(), "it's a b".into()], None),
            "keystone-ctl promote 'it'\\''s a b'"
        );
    }
}
