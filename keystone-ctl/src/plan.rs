//! Coordinated plans: `plan start|get|list|abort|wait`.

use std::{io::Write, path::PathBuf, time::Instant};

use clap::{Args, Subcommand};
use keystone_api::{Orchestration, Plan, PlanList, PlanRequest, PlanState, StepParams};
use serde_json::Value;

use crate::{
    PollArgs,
    client::{Client, Failure, body_of, fail, segment, typed},
    exit,
    output::{Output, print},
};

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Start the agent's deployment_orchestration plan (or the one in --file).
    #[command(after_help = "Examples:\n  keystone-ctl plan start --version v2\n  \
        keystone-ctl plan start --file plan.yaml --version v2 --service-version payment-service=v3 --interval 30s")]
    Start(PlanStart),
    /// One plan: its phases, their canaries and the history.
    #[command(after_help = "Examples:\n  keystone-ctl plan get plan-3")]
    Get { id: String },
    /// Every plan, newest first.
    #[command(after_help = "Examples:\n  keystone-ctl plan list")]
    List,
    /// Stop a running plan: its running phase's canaries are aborted.
    #[command(after_help = "Examples:\n  keystone-ctl plan abort plan-3")]
    Abort { id: String },
    /// Follow a plan until it ends: exit 0 when completed, 10 when held, rolled
    /// back or aborted (with the reason), 12 at --timeout.
    #[command(after_help = "Examples:\n  keystone-ctl plan wait plan-3 --timeout 30m")]
    Wait {
        id: String,
        #[command(flatten)]
        poll: PollArgs,
    },
}

#[derive(Args)]
pub struct PlanStart {
    /// labels.version of every service's canary.
    #[arg(long)]
    version: Option<String>,
    /// One service's own version (repeatable; wins over --version).
    #[arg(long = "service-version", value_name = "SERVICE=VERSION", value_parser = parse_service_version)]
    service_versions: Vec<(String, String)>,
    /// A YAML file with a `deployment_orchestration:` block (default: the agent's).
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    params: StepParams,
}

fn parse_service_version(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((service, version)) if !service.trim().is_empty() && !version.trim().is_empty() => {
            Ok((service.trim().to_owned(), version.trim().to_owned()))
        }
        _ => Err(format!(
            "'{s}' is not SERVICE=VERSION (e.g. payment-service=v3)"
        )),
    }
}

/// The `deployment_orchestration:` block of the YAML file at `path`.
fn read_orchestration(path: &PathBuf) -> Result<Orchestration, Failure> {
    #[derive(serde::Deserialize)]
    struct File {
        deployment_orchestration: Option<Orchestration>,
    }
    let where_ = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(exit::USAGE, format!("cannot read {where_}: {e}")))?;
    let file: File =
        serde_yaml::from_str(&text).map_err(|e| fail(exit::USAGE, format!("{where_}: {e}")))?;
    file.deployment_orchestration.ok_or_else(|| {
        fail(
            exit::USAGE,
            format!("{where_} has no deployment_orchestration"),
        )
    })
}

pub fn request(args: &PlanStart) -> Result<PlanRequest, Failure> {
    Ok(PlanRequest {
        orchestration: args.file.as_ref().map(read_orchestration).transpose()?,
        version: args.version.clone(),
        versions: args.service_versions.iter().cloned().collect(),
        params: args.params.clone(),
        pipeline: None,
    })
}

/// The plan, its phases one a line.
pub fn render(plan: &Plan) -> String {
    let mut text = format!("{}\n", plan.summary());
    for phase in &plan.phases {
        let services: Vec<String> = phase
            .services
            .iter()
            .map(|s| match phase.deployments.get(s) {
                Some(id) => format!("{s} ({id})"),
                None => s.clone(),
            })
            .collect();
        text.push_str(&format!(
            "  {:<10} {:<12} {}\n",
            phase.name,
            phase.state.name(),
            services.join(", ")
        ));
    }
    text
}

fn render_list(list: &PlanList) -> String {
    list.plans.iter().map(|p| p.summary() + "\n").collect()
}

pub fn run(
    client: &Client,
    command: &PlanCommand,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let path = |id: &str| format!("/deployments/plans/{}", segment(id));
    match command {
        PlanCommand::Start(args) => {
            let body = body_of(&request(args)?);
            print(
                out,
                output,
                &client.post("/deployments/plans", Some(&body))?,
                render,
            )?
        }
        PlanCommand::Get { id } => print(out, output, &client.get(&path(id))?, render)?,
        PlanCommand::List => print(out, output, &client.get("/deployments/plans")?, render_list)?,
        PlanCommand::Abort { id } => {
            let answer = client.post(&format!("{}/abort", path(id)), None)?;
            print(out, output, &answer, render)?
        }
        PlanCommand::Wait { id, poll } => return wait(client, &path(id), poll, output, out),
    }
    Ok(exit::OK)
}

/// The exit code a plan in `state` ends `plan wait` with, or None while it runs.
fn exit_code(state: PlanState) -> Option<u8> {
    match state {
        PlanState::Completed => Some(exit::OK),
        PlanState::Held | PlanState::RolledBack | PlanState::Aborted => Some(exit::ROLLED_BACK),
        PlanState::Running | PlanState::Unknown => None,
    }
}

/// Polls the plan at `path`, a line each time its summary changes, until it ends or
/// `poll.timeout` passes; an unreachable agent is retried until then.
fn wait(
    client: &Client,
    path: &str,
    poll: &PollArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let mut last_line = String::new();
    let mut last_seen: Option<(Value, Plan)> = None;
    let mut outage: Option<Failure> = None;
    loop {
        match client.get(path) {
            Ok(raw) => {
                let plan: Plan = typed(&raw)?;
                outage.take();
                let line = plan.summary();
                if line != last_line {
                    let text = output.item(&raw).unwrap_or_else(|| {
                        format!("[+{:>5.1}s] {line}\n", started.elapsed().as_secs_f64())
                    });
                    out.write_all(text.as_bytes()).ok();
                    last_line = line;
                }
                if let Some(code) = exit_code(plan.state) {
                    if output.is_human() {
                        let ended = format!("plan {} ended {}", plan.id, plan.state);
                        writeln!(
                            out,
                            "{ended}: {} — exit {code}",
                            plan.last_reason().unwrap_or("")
                        )
                        .ok();
                    }
                    return Ok(code);
                }
                last_seen = Some((raw, plan));
            }
            Err(f) if f.code == exit::UNREACHABLE => outage = Some(f),
            Err(f) => return Err(f),
        }
        let elapsed = started.elapsed();
        if elapsed >= poll.timeout {
            if let Some(f) = outage {
                return Err(f);
            }
            if output.is_human()
                && let Some((_, plan)) = last_seen
            {
                let t = humantime::format_duration(poll.timeout);
                writeln!(
                    out,
                    "plan {} is still running after {t} — exit {}",
                    plan.id,
                    exit::TIMED_OUT
                )
                .ok();
            }
            return Ok(exit::TIMED_OUT);
        }
        std::thread::sleep(poll.interval.min(poll.timeout - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::test_server::canned;

    fn plan(state: &str, reason: &str) -> Value {
        json!({"id": "plan-1", "state": state,
               "phases": [{"name": "phase_1", "services": ["user-service"], "state": "running",
                           "deployments": {"user-service": "user-service-1"}}],
               "history": [{"reason": reason}]})
    }

    fn wait_on(answers: Vec<(u16, Value)>) -> (u8, String) {
        let (url, _) = canned(answers);
        let client = Client::new(&url, Some("t".into()));
        let poll = PollArgs {
            timeout: Duration::from_secs(5),
            interval: Duration::from_millis(1),
        };
        let mut out = Vec::new();
        let command = PlanCommand::Wait {
            id: "plan-1".into(),
            poll,
        };
        let code = run(&client, &command, Output::Human, &mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn wait_exits_with_how_the_plan_ended() {
        let held = "phase_2 failed: product-service's canary rolled_back; phase_1 held";
        let (code, out) = wait_on(vec![
            (200, plan("running", "phase_1 started")),
            (200, plan("held", held)),
        ]);
        assert_eq!(code, exit::ROLLED_BACK);
        assert!(
            out.ends_with(&format!("plan plan-1 ended held: {held} — exit 10\n")),
            "{out}"
        );
        let (code, _) = wait_on(vec![(200, plan("completed", "every phase completed"))]);
        assert_eq!(code, exit::OK);
    }

    #[test]
    fn start_sends_the_files_block_and_the_versions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plan.yaml");
        std::fs::write(
            &file,
            "deployment_orchestration:\n  services: [a, b]\n  dependencies: [a → b]\n",
        )
        .unwrap();
        let (url, requests) = canned(vec![(202, plan("running", "started"))]);
        let client = Client::new(&url, Some("t".into()));
        let command = PlanCommand::Start(PlanStart {
            version: Some("v2".into()),
            service_versions: vec![("b".into(), "v3".into())],
            file: Some(file),
            params: StepParams::default(),
        });
        let mut out = Vec::new();
        assert_eq!(run(&client, &command, Output::Human, &mut out).unwrap(), 0);
        let (line, body) = requests.lock().unwrap()[0].clone();
        assert_eq!(line, "POST /deployments/plans");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"orchestration": {"services": ["a", "b"], "dependencies": ["a → b"],
                                     "rollout_plan": []},
                   "version": "v2", "versions": {"b": "v3"}})
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plan-1 running in phase_1: started\n  phase_1    running      user-service (user-service-1)\n"
        );
        assert!(parse_service_version("b").is_err());
    }
}
