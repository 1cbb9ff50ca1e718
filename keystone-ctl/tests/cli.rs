//! The built binary: exit codes for bad connection settings, from flags and from the
//! environment alike (a usage error, 2, not "agent unreachable", 3), and the bodies
//! its deployment verbs send.

use std::process::Command;

use serde_json::{Value, json};

#[path = "../src/test_server.rs"]
mod test_server;

fn ctl(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keystone-ctl"))
        .env_remove("KEYSTONE_API")
        .env_remove("KEYSTONE_CONFIG")
        // No contexts file: the user's own must not change what these tests see.
        .env("XDG_CONFIG_HOME", "/nonexistent/keystone-ctl-tests")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .expect("running keystone-ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_empty_or_scheme_less_api_or_an_unreadable_config_is_a_usage_error() {
    for (envs, args, says) in [
        (
            vec![("KEYSTONE_API", "")],
            vec!["status"],
            "the admin API URL is empty",
        ),
        (
            vec![],
            vec!["--api", "", "status"],
            "the admin API URL is empty",
        ),
        (
            vec![("KEYSTONE_API", "127.0.0.1:9100")],
            vec!["tenants"],
            "'127.0.0.1:9100' is not an admin API URL: it needs http:// or https://",
        ),
        (
            vec![],
            vec!["--api", "10.0.0.5:9100", "reload"],
            "'10.0.0.5:9100' is not an admin API URL",
        ),
        (
            vec![("KEYSTONE_CONFIG", "/nonexistent/keystone.yaml")],
            vec!["status"],
            "cannot read the agent's config /nonexistent/keystone.yaml",
        ),
    ] {
        let (code, stderr) = ctl(&envs, &args);
        assert_eq!(code, Some(2), "{envs:?} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{envs:?} {args:?}: {stderr}");
    }
}

/// Runs keystone-ctl against a canned agent answering 202; returns the exit code, the
/// one request it saw and the body as JSON.
fn sent(args: &[&str]) -> (Option<i32>, String, Value) {
    let accepted = json!({"deployment_id": "d-1", "deployment": {"id": "d-1", "tenant": "web"}});
    let (url, requests) = test_server::canned(vec![(202, accepted)]);
    let (code, stderr) = ctl(
        &[],
        &[&["--api", url.as_str(), "--token", "t"], args].concat(),
    );
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{args:?}: {stderr}");
    let (request, body) = requests[0].clone();
    (code, request, serde_json::from_str(&body).unwrap())
}

#[test]
fn canary_start_sends_every_step_parameter() {
    let (code, request, body) = sent(&[
        "canary",
        "start",
        "api",
        "--version",
        "2",
        "--initial-traffic",
        "5",
        "--increment",
        "10",
        "--interval",
        "30s",
        "--max-traffic",
        "50",
        "--health-threshold",
        "99",
        "--rollback-threshold",
        "90",
        "--min-samples",
        "20",
        "--validation-timeout",
        "1m",
        "--rollback-on-failure",
        "false",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(request, "POST /deployments/canary");
    assert_eq!(
        body,
        json!({"service": "api", "version": "2", "initial_traffic": 5.0, "increment": 10.0,
               "interval": "30s", "max_traffic": 50.0, "health_threshold": 99.0,
               "rollback_threshold": 90.0, "min_samples": 20, "validation_timeout": "1m",
               "rollback_on_failure": false})
    );
}

#[test]
fn switch_sends_its_step_parameters() {
    let (code, request, body) = sent(&[
        "switch",
        "web",
        "--to",
        "green",
        "--strategy",
        "gradual",
        "--initial-traffic",
        "25",
        "--increment",
        "25",
        "--interval",
        "5",
        "--validation-timeout",
        "10s",
        "--rollback-on-failure",
        "true",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(request, "POST /deployments/blue-green/switch");
    assert_eq!(
        body,
        json!({"service": "web", "to": "green", "strategy": "gradual", "initial_traffic": 25.0,
               "increment": 25.0, "interval": 5.0, "validation_timeout": "10s",
               "rollback_on_failure": true})
    );
}

/// What keystone-ctl printed and how it exited, run with its contexts file under
/// `home` (`$XDG_CONFIG_HOME`) and no connection settings from this environment.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn ctl_at(home: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_keystone-ctl"))
        .env("XDG_CONFIG_HOME", home)
        .env_remove("KEYSTONE_CONFIG")
        .env_remove("KEYSTONE_API")
        .env_remove("KEYSTONE_TOKEN")
        .env_remove("KEYSTONE_TOKEN_FILE")
        .env_remove("KEYSTONE_CONTEXT")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .expect("running keystone-ctl");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// keystone-ctl told the canned agent at `url` by flags, without contexts.
fn ctl_against(url: &str, args: &[&str]) -> Ran {
    let home = tempfile::tempdir().unwrap();
    ctl_at(
        home.path(),
        &[],
        &[&["--api", url, "--token", "t"], args].concat(),
    )
}

/// The "METHOD /path" lines a canned agent received.
fn seen(requests: &test_server::Requests) -> Vec<String> {
    requests
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect()
}

fn token_file(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, "s3cret-token\n").unwrap();
    path.display().to_string()
}

#[test]
fn contexts_are_set_listed_chosen_and_used() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let no_tenants = json!({"tenants": []});
    let (dev, dev_seen) = test_server::canned(vec![(200, no_tenants.clone())]);
    let (prod, prod_seen) = test_server::canned(vec![(200, no_tenants)]);
    let token = token_file(home, "token");
    for (name, url) in [("dev", &dev), ("prod", &prod)] {
        let r = ctl_at(
            home,
            &[],
            &[
                "config",
                "set-context",
                name,
                "--api",
                url,
                "--token-file",
                &token,
            ],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let file = home.join("keystone/config.yaml");
    assert!(
        file.is_file(),
        "the contexts file is under $XDG_CONFIG_HOME"
    );
    let r = ctl_at(home, &[], &["config", "use-context", "dev"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    let r = ctl_at(home, &[], &["config", "get-contexts"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let rows: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["CURRENT", "NAME", "API", "TOKEN_FILE", "GATED"]);
    assert_eq!(rows[1], ["*", "dev", dev.as_str(), token.as_str(), "no"]);
    assert_eq!(rows[2], ["prod", prod.as_str(), token.as_str(), "no"]);

    assert_eq!(ctl_at(home, &[], &["tenants"]).code, Some(0));
    assert_eq!(seen(&dev_seen), ["GET /tenants"], "the current context");
    let r = ctl_at(home, &[], &["--context", "prod", "tenants"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(seen(&prod_seen), ["GET /tenants"], "--context");

    let r = ctl_at(home, &[], &["config", "use-context", "nope"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains(&format!(
            "no context 'nope' in {} (contexts: dev, prod)",
            file.display()
        )),
        "{}",
        r.stderr
    );
    let r = ctl_at(home, &[], &["--context", "nope", "tenants"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);

    let r = ctl_at(home, &[], &["config", "set-context", "qa"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("a new context needs --api (context 'qa')"),
        "{}",
        r.stderr
    );
    let r = ctl_at(
        home,
        &[],
        &["config", "set-context", "prod", "--gated", "true"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let listed = ctl_at(home, &[], &["-o", "json", "config", "get-contexts"]).stdout;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["contexts"]["prod"],
        json!({"api": prod, "token_file": token, "gated": true}),
        "set-context changes only the fields given"
    );

    // The context's token file is what is sent: gone, it is an auth failure naming it.
    std::fs::remove_file(&token).unwrap();
    let r = ctl_at(home, &[], &["tenants"]);
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot read the admin token from {token} (token_file of context 'dev' in {})",
            file.display()
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn a_broken_contexts_file_is_a_usage_error_naming_the_field_and_line() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("keystone/config.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "contexts:\n  dev:\n    apii: http://x\n").unwrap();
    let r = ctl_at(home.path(), &[], &["--context", "dev", "tenants"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}: contexts.dev: unknown field `apii`",
            file.display()
        )) && r.stderr.contains("line 3"),
        "{}",
        r.stderr
    );
    std::fs::write(&file, "contexts:\n  dev:\n    api: gw:9100\n").unwrap();
    let r = ctl_at(home.path(), &[], &["--context", "dev", "tenants"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}: contexts.dev.api: 'gw:9100' is not an admin API URL",
            file.display()
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn precedence_is_flag_then_environment_then_context_then_agent_config() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let answer = || vec![(200, json!({"tenants": []}))];
    let (context, context_seen) = test_server::canned(answer());
    let (env, env_seen) = test_server::canned(answer());
    let (flag, flag_seen) = test_server::canned(answer());
    let (agent, agent_seen) = test_server::canned(answer());
    let token = token_file(home, "token");
    let agent_config = home.join("keystone.yaml");
    std::fs::write(
        &agent_config,
        format!(
            "admin:\n  listen: {}\n  token_file: {token}\n",
            agent.trim_start_matches("http://")
        ),
    )
    .unwrap();
    let config = agent_config.to_str().unwrap();
    let config_env = ("KEYSTONE_CONFIG", config);

    assert_eq!(ctl_at(home, &[config_env], &["tenants"]).code, Some(0));
    assert_eq!(
        seen(&agent_seen).len(),
        1,
        "no contexts: the agent's config"
    );
    let set = [
        "config",
        "set-context",
        "dev",
        "--api",
        &context,
        "--token-file",
        &token,
    ];
    assert_eq!(ctl_at(home, &[], &set).code, Some(0));
    assert_eq!(
        ctl_at(home, &[], &["config", "use-context", "dev"]).code,
        Some(0)
    );
    assert_eq!(ctl_at(home, &[config_env], &["tenants"]).code, Some(0));
    assert_eq!(
        seen(&context_seen).len(),
        1,
        "the context beats the agent's config"
    );
    assert_eq!(seen(&agent_seen).len(), 1);
    let r = ctl_at(home, &[config_env, ("KEYSTONE_API", &env)], &["tenants"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(seen(&env_seen).len(), 1, "KEYSTONE_API beats the context");
    let r = ctl_at(
        home,
        &[("KEYSTONE_API", &env)],
        &["--api", &flag, "tenants"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(seen(&flag_seen).len(), 1, "--api beats KEYSTONE_API");
    assert_eq!(seen(&env_seen).len(), 1);
    assert_eq!(seen(&context_seen).len(), 1);

    let help = ctl_at(home, &[], &["--help"]).stdout;
    assert!(
        help.contains("flag, then environment, then the context, then the agent's config"),
        "{help}"
    );
}

fn sample_deployment(id: &str, state: &str) -> Value {
    json!({"id": id, "tenant": "api", "strategy": "canary", "version": "2", "state": state,
           "canary_percent": 30.0, "stable_backends": ["api-v1"], "canary_backends": ["api-v2"],
           "params": {"initial_traffic": 10.0, "increment": 10.0, "max_traffic": 50.0,
                      "interval_seconds": 30.0},
           "history": [{"at": "2026-11-21T21:00:00Z", "canary_percent": 10.0, "state": "progressing", "reason": "started"},
                       {"at": "2026-11-21T21:00:30Z", "canary_percent": 20.0, "state": "progressing", "reason": "step to 20%"},
                       {"at": "2026-11-21T21:01:00Z", "canary_percent": 30.0, "state": "progressing", "reason": "step to 30%"}],
           "started_at": "2026-11-21T21:00:00Z"})
}

#[test]
fn output_yaml_is_the_answer_and_wide_adds_columns() {
    let list = json!({"deployments": [sample_deployment("d-1", "progressing")]});
    let run = |output: &str| {
        let (url, _) = test_server::canned(vec![(200, list.clone())]);
        let r = ctl_against(&url, &["-o", output, "deployments"]);
        assert_eq!(r.code, Some(0), "-o {output}: {}", r.stderr);
        r.stdout
    };
    let yaml: Value = serde_yaml::from_str(&run("yaml")).expect("-o yaml is YAML");
    assert_eq!(yaml, list);
    let header = |out: &str| -> Vec<String> {
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let human = header(&run("human"));
    let wide = header(&run("wide"));
    assert_eq!(wide[..human.len()], human[..], "wide keeps the columns");
    assert_eq!(wide[human.len()..], ["STABLE", "NEW", "ENV", "REASON"]);
    let wide_row = run("wide");
    assert!(
        wide_row
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("api-v1  api-v2  -    step to 30%"),
        "{wide_row}"
    );
}

#[test]
fn status_watch_shows_the_step_counter_and_the_last_finished_deployment() {
    let status = json!({"config_path": "k.yaml", "tenants": []});
    let mut finished = sample_deployment("d-0", "completed");
    finished["tenant"] = json!("web");
    let (url, _) = test_server::canned(vec![
        (200, status),
        (
            200,
            json!({"deployments": [sample_deployment("d-1", "progressing"), finished]}),
        ),
        (200, sample_deployment("d-1", "completed")),
    ]);
    let r = ctl_against(
        &url,
        &[
            "status",
            "--watch",
            "--until-done",
            "d-1",
            "--interval",
            "10ms",
        ],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("  step 3 of 6 (30%), next step "),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("last finished:\ndeployment d-0  tenant web"),
        "{}",
        r.stdout
    );
}

#[test]
fn wait_on_a_switch_says_switch() {
    let switch = |state: &str, percent: f64| {
        json!({"id": "web-1", "tenant": "web", "strategy": "blue_green", "state": state,
               "canary_percent": percent, "from_environment": "blue", "to_environment": "green",
               "history": [{"reason": "idle side validated"}]})
    };
    let (url, _) = test_server::canned(vec![
        (200, switch("progressing", 100.0)),
        (200, switch("completed", 100.0)),
    ]);
    let r = ctl_against(&url, &["wait", "web-1", "--interval", "10ms"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(" switch   100%"), "{}", r.stdout);
    assert!(!r.stdout.contains("canary"), "{}", r.stdout);
}

/// Promotion: one canned agent per context, each answering in the order promote asks.
mod promote {
    use super::*;

    fn tenants(strategy: &str) -> Value {
        json!({"tenants": [{"name": "web", "strategy": strategy, "backends": [
            {"name": "web-v1", "version": "1", "environment": "blue"},
            {"name": "web-v2", "version": "2", "environment": "green"}]}]})
    }

    fn deployment(id: &str, strategy: &str, state: &str) -> Value {
        json!({"id": id, "tenant": "web", "strategy": strategy,
               "version": if strategy == "canary" { json!("2") } else { Value::Null },
               "to_environment": if strategy == "canary" { Value::Null } else { json!("green") },
               "state": state, "canary_percent": 100.0, "history": [{"reason": state}]})
    }

    /// Answers of a context where the tenant's newest deployment already delivered 2.
    fn done(strategy: &str) -> Vec<(u16, Value)> {
        vec![
            (200, tenants(strategy)),
            (
                200,
                json!({"deployments": [deployment("old", strategy, "completed")]}),
            ),
        ]
    }

    /// Answers of a context that runs the tenant's strategy and ends `state`.
    pub fn runs(strategy: &str, state: &str) -> Vec<(u16, Value)> {
        let id = format!("{strategy}-1");
        vec![
            (200, tenants(strategy)),
            (200, json!({"deployments": []})),
            (
                202,
                json!({"deployment_id": id, "deployment": deployment(&id, strategy, "progressing")}),
            ),
            (200, deployment(&id, strategy, state)),
        ]
    }

    /// Three contexts, production gated, each with its canned agent.
    pub fn contexts(
        home: &std::path::Path,
        answers: [Vec<(u16, Value)>; 3],
    ) -> Vec<test_server::Requests> {
        let token = token_file(home, "token");
        let names = ["dev", "staging", "production"];
        answers
            .into_iter()
            .zip(names)
            .map(|(answers, name)| {
                let (url, requests) = test_server::canned(answers);
                let mut set = vec![
                    "config",
                    "set-context",
                    name,
                    "--api",
                    &url,
                    "--token-file",
                    &token,
                ];
                if name == "production" {
                    set.extend(["--gated", "true"]);
                }
                assert_eq!(ctl_at(home, &[], &set).code, Some(0));
                requests
            })
            .collect()
    }

    fn assert_ends(out: &str, tail: &str) {
        assert!(
            out.ends_with(tail),
            "expected to end with:\n{tail}\ngot:\n{out}"
        );
    }

    pub const PROMOTE: [&str; 8] = [
        "promote",
        "web",
        "--version",
        "2",
        "--through",
        "dev,staging,production",
        "--interval",
        "10ms",
    ];

    pub fn unused() -> Vec<(u16, Value)> {
        vec![(500, json!({"error": "not expected"}))]
    }

    #[test]
    fn runs_each_context_skips_those_done_and_stops_before_a_gate() {
        let home = tempfile::tempdir().unwrap();
        let seen_by = contexts(
            home.path(),
            [
                runs("canary", "completed"),
                done("canary"),
                runs("canary", "completed"),
            ],
        );
        let r = ctl_at(home.path(), &[], &PROMOTE);
        assert_eq!(r.code, Some(11), "{}{}", r.stdout, r.stderr);
        assert_eq!(
            seen(&seen_by[0]),
            [
                "GET /tenants",
                "GET /deployments",
                "POST /deployments/canary",
                "GET /deployments/canary-1"
            ]
        );
        assert_eq!(
            serde_json::from_str::<Value>(&seen_by[0].lock().unwrap()[2].1).unwrap(),
            json!({"service": "web", "version": "2"})
        );
        assert_eq!(seen(&seen_by[1]), ["GET /tenants", "GET /deployments"]);
        assert_eq!(
            seen(&seen_by[2]),
            ["GET /tenants", "GET /deployments"],
            "the gated context is only read"
        );
        assert!(
            r.stdout.contains(
                "staging: web is at version 2 already (deployment old completed); skipped"
            ),
            "{}",
            r.stdout
        );
        assert_ends(
            &r.stdout,
            "stopped before production: it is gated — exit 11\n\
                 resume with: keystone-ctl promote web --version 2 --through dev,staging,production --interval 10ms --approve production\n",
        );
    }

    #[test]
    fn the_resumed_command_passes_the_gate_and_switches_a_blue_green_tenant() {
        let home = tempfile::tempdir().unwrap();
        let seen_by = contexts(
            home.path(),
            [
                done("blue_green"),
                done("blue_green"),
                runs("blue_green", "completed"),
            ],
        );
        let args = [PROMOTE.as_slice(), &["--approve", "production"]].concat();
        let r = ctl_at(home.path(), &[], &args);
        assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
        let production = seen_by[2].lock().unwrap().clone();
        assert_eq!(production[2].0, "POST /deployments/blue-green/switch");
        assert_eq!(
            serde_json::from_str::<Value>(&production[2].1).unwrap(),
            json!({"service": "web", "to": "green"}),
            "the environment whose backends have version 2"
        );
        assert_ends(
            &r.stdout,
            "web is at version 2 in dev, staging, production\n",
        );
    }

    #[test]
    fn a_rollback_stops_the_promotion_with_exit_10() {
        let home = tempfile::tempdir().unwrap();
        let seen_by = contexts(
            home.path(),
            [runs("canary", "rolled_back"), unused(), unused()],
        );
        let r = ctl_at(home.path(), &[], &PROMOTE);
        assert_eq!(r.code, Some(10), "{}{}", r.stdout, r.stderr);
        assert!(seen(&seen_by[1]).is_empty() && seen(&seen_by[2]).is_empty());
        assert_ends(
            &r.stdout,
            "stopped in dev: deployment canary-1 ended rolled_back — exit 10\n\
                 resume with: fix it, then keystone-ctl promote web --version 2 --through dev,staging,production --interval 10ms\n",
        );
    }

    #[test]
    fn an_unreachable_context_is_an_error_naming_it() {
        let home = tempfile::tempdir().unwrap();
        let seen_by = contexts(
            home.path(),
            [runs("canary", "completed"), unused(), unused()],
        );
        // A port nothing listens on: bound, then let go.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let set = ["config", "set-context", "staging", "--api", &api];
        assert_eq!(ctl_at(home.path(), &[], &set).code, Some(0));
        let r = ctl_at(home.path(), &[], &PROMOTE);
        assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.starts_with(&format!(
                "keystone-ctl: context staging: cannot reach the agent at {api}/tenants: "
            )),
            "{}",
            r.stderr
        );
        assert_eq!(seen(&seen_by[0]).len(), 4, "dev ran first");
        assert!(seen(&seen_by[2]).is_empty(), "production was never asked");
    }
}

#[test]
fn promote_stops_at_a_deployment_awaiting_approval_and_refuses_api_flags() {
    let home = tempfile::tempdir().unwrap();
    let seen_by = promote::contexts(
        home.path(),
        [
            promote::runs("canary", "awaiting_approval"),
            promote::unused(),
            promote::unused(),
        ],
    );
    let r = ctl_at(home.path(), &[], &promote::PROMOTE);
    assert_eq!(r.code, Some(11), "{}{}", r.stdout, r.stderr);
    assert!(seen(&seen_by[1]).is_empty());
    assert!(
        r.stdout.ends_with(
            "stopped in dev: deployment canary-1 is awaiting_approval — exit 11\n\
             resume with: keystone-ctl --context dev canary promote canary-1, then \
             keystone-ctl promote web --version 2 --through dev,staging,production --interval 10ms\n"
        ),
        "{}",
        r.stdout
    );
    let r = ctl_at(
        home.path(),
        &[("KEYSTONE_API", "http://127.0.0.1:9")],
        &promote::PROMOTE,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("promote connects through each context of --through")
    );
}
