//! Deployments: `canary start|promote|abort|pause|resume`, `switch`, `rollback`.

use clap::{Args, Subcommand};
use keystone_api::{
    Accepted, Action, CanaryRequest, DeployState, Deployment, DeploymentList, StepParams, Strategy,
};
use serde_json::Value;

use crate::{
    client::{Client, Failure, fail, segment, typed},
    exit, render,
};

#[derive(Subcommand)]
pub enum CanaryCommand {
    /// Start a canary of the tenant's backends labelled with --version.
    #[command(
        after_help = "Examples:\n  keystone-ctl canary start api --version 1.24.0\n  \
        keystone-ctl canary start api --version 1.24.0 --initial-traffic 5 --increment 5 --interval 1m --max-traffic 50"
    )]
    Start(CanaryStart),
    /// Give the canary 100 % now and finish.
    #[command(
        after_help = "Examples:\n  keystone-ctl canary promote --tenant api\n  \
        keystone-ctl canary promote api-1764590000-1"
    )]
    Promote(Target),
    /// Stop and put all traffic back on the stable backends.
    #[command(after_help = "Examples:\n  keystone-ctl canary abort --tenant api\n  \
        keystone-ctl canary abort api-1764590000-1")]
    Abort(Target),
    /// Hold the current split.
    #[command(after_help = "Examples:\n  keystone-ctl canary pause --tenant api")]
    Pause(Target),
    /// Continue a paused canary.
    #[command(after_help = "Examples:\n  keystone-ctl canary resume --tenant api")]
    Resume(Target),
}

#[derive(Args)]
pub struct CanaryStart {
    tenant: String,
    /// labels.version of the canary backends.
    #[arg(long)]
    version: String,
    #[command(flatten)]
    params: StepParams,
}

/// A deployment: by id, or the tenant's running one.
#[derive(Args, Debug, PartialEq)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The deployment id.
    pub id: Option<String>,
    /// Act on this tenant's running deployment instead.
    #[arg(long)]
    pub tenant: Option<String>,
}

pub fn canary_request(args: &CanaryStart) -> CanaryRequest {
    CanaryRequest {
        service: args.tenant.clone(),
        version: args.version.clone(),
        params: args.params.clone(),
        pipeline: None,
    }
}

/// The deployment `target` names: its id, or the tenant's running one. A rollback may
/// also undo the tenant's latest completed deployment.
fn resolve(client: &Client, target: &Target, allow_completed: bool) -> Result<String, Failure> {
    if let Some(id) = &target.id {
        return Ok(id.clone());
    }
    let tenant = target.tenant.as_deref().unwrap_or_default();
    let list = typed(&client.get("/deployments")?)?;
    pick_deployment(&list, tenant, allow_completed)
}

fn pick_deployment(
    list: &DeploymentList,
    tenant: &str,
    allow_completed: bool,
) -> Result<String, Failure> {
    let deployments: Vec<&Deployment> = list
        .deployments
        .iter()
        .filter(|d| d.tenant == tenant)
        .collect();
    // Newest first, as the API lists them.
    let found = deployments.iter().find(|d| d.is_running()).or_else(|| {
        allow_completed
            .then(|| {
                deployments
                    .iter()
                    .find(|d| d.state == DeployState::Completed)
            })
            .flatten()
    });
    match found {
        Some(d) => Ok(d.id.clone()),
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

pub fn started(body: &Accepted) -> String {
    let d = &body.deployment;
    let id = &body.deployment_id;
    let what = match d.strategy {
        Strategy::BlueGreen => {
            let to = render::or_dash(d.to_environment.as_deref());
            format!(
                "switch of {} from {} to {to} (validating {to} first)",
                d.tenant,
                render::or_dash(d.from_environment.as_deref()),
            )
        }
        _ => format!(
            "{} of {} version {} at {}",
            d.strategy,
            d.tenant,
            render::or_dash(d.version.as_deref()),
            render::percent(d.canary_percent),
        ),
    };
    format!("started deployment {id}: {what}\nfollow it with: keystone-ctl wait {id}\n")
}

pub fn acted(d: &Deployment) -> String {
    format!(
        "deployment {} is now {}: {} {} ({})\n",
        d.id,
        d.state,
        render::traffic_word(d.strategy),
        render::percent(d.canary_percent),
        render::last_reason(d),
    )
}

pub fn act(client: &Client, target: &Target, action: Action) -> Result<Value, Failure> {
    let id = resolve(client, target, action == Action::Rollback)?;
    client.post(&format!("/deployments/{}/{action}", segment(&id)), None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Command, client::body_of, parse};

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
            body_of(&canary_request(args)),
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
        assert_eq!(body_of(&canary_request(args))["interval"], json!(30.0));
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
    fn tenant_resolves_to_its_running_deployment() {
        let list = json!({"deployments": [
            {"id": "d-3", "tenant": "web", "state": "progressing"},
            {"id": "d-2", "tenant": "api", "state": "completed"},
            {"id": "d-1", "tenant": "api", "state": "rolled_back"},
        ]});
        let list = typed(&list).unwrap();
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
