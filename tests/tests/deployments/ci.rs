//! The example CI scripts (examples/ci/), run against the lab.

use super::*;

/// Where the example CI scripts live.
fn ci_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .join("examples/ci")
}

/// Runs `sh examples/ci/<script>` in the gateway namespace with the lab's API, token
/// and keystone-ctl, plus `env`; returns its exit code, stdout and stderr (and prints them).
fn run_script(lab: &Lab, script: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let ctl = lab.bins().ctl.clone();
    let mut c = cmd::in_ns(lab.gateway_ns(), "sh");
    c.arg(ci_dir().join(script))
        .env(
            "KEYSTONE_API",
            format!("http://{}", keystone_lab::ADMIN_LISTEN),
        )
        .env("KEYSTONE_TOKEN", keystone_lab::ADMIN_TOKEN)
        .env("KEYSTONE_CTL", &ctl)
        .env("KEYSTONE_WAIT_TIMEOUT", "60s");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = ok(lab, script, cmd::output(&mut c));
    eprintln!(
        "--- {script} {env:?}: {}\n{}",
        out.status,
        output_text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout(&out), stderr)
}

/// Runs `script` and asserts it exits `code`; returns its stdout.
fn expect_script(lab: &Lab, code: i32, script: &str, env: &[(&str, &str)]) -> String {
    let (got, out, _) = run_script(lab, script, env);
    assert_eq!(
        got,
        Some(code),
        "{script} {env:?}\n{}",
        lab.agent_diagnostics()
    );
    out
}

/// The jobs of `pipeline` (a YAML map of jobs, or GitHub's `jobs:`) that run `script`.
fn jobs_running<'a>(pipeline: &'a serde_yaml::Value, script: &str) -> Vec<&'a serde_yaml::Value> {
    let jobs = pipeline.get("jobs").unwrap_or(pipeline);
    let jobs = jobs.as_mapping().expect("a map of jobs");
    jobs.values()
        .filter(|job| {
            serde_yaml::to_string(job)
                .unwrap_or_default()
                .contains(script)
        })
        .collect()
}

/// What a careful team would commit: releases only from the default branch, the
/// production switch and the canary's promotion behind a manual job or an approval,
/// and no environment hard-coded as the target.
fn assert_pipelines_are_safe_to_copy() {
    let read = |name: &str| -> (String, serde_yaml::Value) {
        let text = std::fs::read_to_string(ci_dir().join(name))
            .unwrap_or_else(|e| panic!("examples/ci/{name}: {e}"));
        let yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        (text, yaml)
    };
    for name in [".gitlab-ci.yml", "github-actions.yml"] {
        let (text, _) = read(name);
        for script in [
            "keystone-idle.sh",
            "keystone-health.sh",
            "keystone-switch.sh",
            "keystone-canary.sh",
            "keystone-promote.sh",
            "keystone-webhook.sh",
        ] {
            assert!(text.contains(script), "{name} does not run {script}");
        }
        assert!(
            !text.contains("KEYSTONE_TO: green") && !text.contains("green-1.internal"),
            "{name} hard-codes the green side"
        );
        assert!(
            text.contains("keystone-ctl onto the runner"),
            "{name}: how to get keystone-ctl"
        );
    }

    let (_, gitlab) = read(".gitlab-ci.yml");
    let workflow = serde_yaml::to_string(&gitlab["workflow"]).unwrap();
    assert!(
        workflow.contains("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"),
        "GitLab: pipelines only on the default branch: {workflow}"
    );
    for script in ["keystone-switch.sh", "keystone-promote.sh"] {
        for job in jobs_running(&gitlab, script) {
            let rules = serde_yaml::to_string(&job["rules"]).unwrap();
            assert!(
                job["when"] == "manual" || rules.contains("when: manual"),
                "GitLab: the job running {script} must be manual: {job:?}"
            );
        }
    }
    for job in jobs_running(&gitlab, "keystone-canary.sh") {
        let codes = serde_yaml::to_string(&job["allow_failure"]["exit_codes"]).unwrap();
        assert!(
            codes.contains("11"),
            "GitLab: a canary awaiting approval (exit 11) leads to the manual promote job: {job:?}"
        );
    }

    let (_, github) = read("github-actions.yml");
    for (name, job) in github["jobs"].as_mapping().expect("jobs").iter() {
        let job_text = serde_yaml::to_string(job).unwrap();
        assert!(
            job_text.contains("github.event.repository.default_branch")
                || job_text.contains("needs:"),
            "GitHub job {name:?} runs off the default branch: {job_text}"
        );
    }
    for script in ["keystone-switch.sh", "keystone-promote.sh"] {
        for job in jobs_running(&github, script) {
            assert!(
                job["environment"] == "production",
                "GitHub: the job running {script} needs the production environment's approval: {job:?}"
            );
        }
    }
}

/// The example pipelines' scripts (examples/ci), run unchanged in the lab's gateway, for
/// two releases in a row each way, as the pipelines run them: a canary that waits at
/// `max_traffic` (exit 11) and is promoted by the approval job, there and back; the
/// idle side looked up, health-checked and switched to, blue→green then green→blue; the
/// same two switches through the signed webhook; and a canary of a backend that is
/// down, which the agent rolls back and the script fails with 10.
#[test]
fn ci_scripts_release_through_the_lab() {
    assert_pipelines_are_safe_to_copy();
    let web = v4(80);
    let shop = v6(80);
    let (lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green", "red"]),
        |lab| {
            let mut cfg = lab.agent_config(vec![
                tenant(lab, "web", web, &[("blue", 100), ("green", 0), ("red", 0)]),
                tenant(lab, "shop", shop, &[("blue", 1), ("green", 1)])
                    .with_canary(CanaryConfig::ten_plus_thirty("1s"))
                    .blue_green("blue", SwitchConfig::instant()),
            ]);
            cfg.webhook = Some(WebhookConfig {
                secret: WEBHOOK_SECRET.into(),
                tolerance: "5m".into(),
            });
            cfg
        },
    );

    // Canary job, then the approval job: green's 1.1.0, then blue's 1.0.0 back.
    for (version, to) in [("1.1.0", "green"), ("1.0.0", "blue")] {
        let canary = [
            ("KEYSTONE_SERVICE", "web"),
            ("KEYSTONE_VERSION", version),
            ("KEYSTONE_INITIAL_TRAFFIC", "10"),
            ("KEYSTONE_INCREMENT", "40"),
            ("KEYSTONE_MAX_TRAFFIC", "50"),
            ("KEYSTONE_INTERVAL", "1s"),
        ];
        expect_script(&lab, 11, "keystone-canary.sh", &canary);
        expect_script(
            &lab,
            0,
            "keystone-promote.sh",
            &[("KEYSTONE_SERVICE", "web")],
        );
        let s = tcp(&lab, web, 400);
        assert_all_on(&lab, &format!("web after releasing {version}"), &s, to);
    }

    // web has two environments without traffic: no single idle side, and the script says so.
    let (code, _, said) = run_script(&lab, "keystone-idle.sh", &[("KEYSTONE_SERVICE", "web")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "tenant web needs exactly one environment without traffic to release to; \
             its environments: blue 100%, green 0%, red 0% (set KEYSTONE_TO to choose)"
        ),
        "{said}"
    );

    // Blue/green jobs: the idle side, its health, the switch; twice, each way.
    for to in ["green", "blue"] {
        let service = ("KEYSTONE_SERVICE", "shop");
        let idle = expect_script(&lab, 0, "keystone-idle.sh", &[service]);
        assert_eq!(idle, format!("KEYSTONE_TO={to}\n"), "the idle side");
        let pinned = ("KEYSTONE_TO", to);
        let health = [
            service,
            pinned,
            ("KEYSTONE_HEALTH_TIMEOUT", "30"),
            ("KEYSTONE_HEALTH_PAUSE", "1"),
        ];
        expect_script(&lab, 0, "keystone-health.sh", &health);
        let switch = [
            service,
            pinned,
            ("KEYSTONE_SWITCH_STRATEGY", SwitchStrategy::Instant.name()),
        ];
        expect_script(&lab, 0, "keystone-switch.sh", &switch);
        let s = tcp(&lab, shop, 400);
        assert_all_on(&lab, &format!("shop after the switch to {to}"), &s, to);
    }

    // Webhook jobs: the same two switches, the idle side looked up by the script.
    for (version, to) in [("1.1.0", "green"), ("1.0.0", "blue")] {
        let hook = [
            ("KEYSTONE_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("KEYSTONE_SERVICE", "shop"),
            ("KEYSTONE_VERSION", version),
            ("KEYSTONE_STRATEGY", Strategy::BlueGreen.name()),
            ("KEYSTONE_PIPELINE_ID", "4711"),
            ("KEYSTONE_COMMIT", "3f2c1e9"),
        ];
        expect_script(&lab, 0, "keystone-webhook.sh", &hook);
        let s = tcp(&lab, shop, 400);
        assert_all_on(&lab, &format!("shop after the webhook to {to}"), &s, to);
    }
    let hooked = ok(&lab, "GET /deployments", lab.deployments())
        .into_iter()
        .find(|d| d.tenant == "shop")
        .expect("the webhook's deployment");
    assert_eq!(
        hooked.pipeline.as_ref().map(|p| p["id"].clone()),
        Some(serde_json::json!("4711")),
        "{hooked:?}"
    );

    // A canary of a backend that is down: rolled back, the job fails with 10.
    let mut lab = lab;
    let r = lab.stop_backend("red");
    ok(&lab, "stopping red's server", r);
    let broken = [
        ("KEYSTONE_SERVICE", "web"),
        ("KEYSTONE_VERSION", "1.2.0"),
        ("KEYSTONE_INTERVAL", "1s"),
    ];
    expect_script(&lab, 10, "keystone-canary.sh", &broken);
    let s = tcp(&lab, web, 400);
    assert_all_on(&lab, "web after the rolled-back canary", &s, "blue");
}
