//! Secrets on disk and in logs, with the real agent in the namespace lab. Run with
//! `cargo xtask test -- secrets`.
//!
//! The agent starts on a state directory an older agent left open (0755, files 0644)
//! with a token file anyone can read and a notification target whose URL carries a
//! user, a password and an `api_key`. Afterwards the directory is 0700 and every file
//! in it 0600, the log warns about the token file, and no credential of the URL or
//! secret of the config appears in the log, however often the target fails.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use keystone_lab::{
    ADMIN_TOKEN, Auth, Mode, NotificationTarget, Probe, Protocol, WebhookConfig,
    agent::AGENT,
    helpers::{BACKEND_PORT, new_lab, vip},
    wait_for,
};

const WEBHOOK_SECRET: &str = "webhook-secret-never-logged";
const NOTIFY_SECRET: &str = "notify-secret-never-logged";
const PASSWORD: &str = "hunter2-password";
const API_KEY: &str = "abc123-api-key";

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn write_with_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn secret_files_are_private_and_logs_show_no_credentials() {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let r = lab.start_backends(BACKEND_PORT);
    r.unwrap_or_else(|e| panic!("backends: {e}"));

    // What an older agent left behind, and a token file anyone can read.
    let state = lab.state_dir().join("agent-state");
    fs::create_dir_all(&state).expect("state dir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
    write_with_mode(&state.join("admin-token"), "an-old-generated-token", 0o644);
    write_with_mode(&state.join("config.last-good.yaml"), "# old copy", 0o644);
    let token_file = lab.state_dir().join("token");
    write_with_mode(&token_file, ADMIN_TOKEN, 0o644);

    let vip = vip();
    let tenant = lab
        .tenant(
            "web",
            vip,
            Protocol::Tcp,
            Mode::Nat,
            BACKEND_PORT,
            &[("blue", 100), ("green", 0)],
        )
        .unwrap_or_else(|e| panic!("tenant: {e}"));
    let mut cfg = lab.agent_config(vec![tenant]);
    cfg.webhook = Some(WebhookConfig {
        secret: WEBHOOK_SECRET.into(),
        tolerance: "5m".into(),
    });
    // Nothing listens on port 9: every delivery fails and is logged, four times.
    cfg.notifications.push(NotificationTarget {
        url: format!("http://ci:{PASSWORD}@127.0.0.1:9/hook?api_key={API_KEY}&team=web"),
        secret: NOTIFY_SECRET.into(),
    });
    let yaml = cfg.to_yaml().replace(
        &format!("  token: \"{ADMIN_TOKEN}\""),
        &format!("  token_file: \"{}\"", token_file.display()),
    );
    lab.write_config_text(&yaml).expect("config");
    lab.start_agent()
        .unwrap_or_else(|e| panic!("starting keystone-agent: {e}\n{}", lab.diagnostics()));

    let (code, answer) = lab
        .admin_send(
            "POST",
            "/deployments/canary",
            Auth::Token,
            &[],
            Some(r#"{"service": "web", "version": "1.1.0"}"#),
        )
        .expect("POST /deployments/canary");
    assert_eq!(code, 202, "{answer}");
    let log = wait_for(
        "the agent to give up on the notification",
        Duration::from_secs(30),
        || {
            let log = lab.stderr_of(AGENT)?;
            Ok(if log.contains("notification failed; giving up") {
                Probe::Ready(log)
            } else {
                Probe::NotYet(log.lines().last().unwrap_or("").to_owned())
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.diagnostics()));

    for secret in [PASSWORD, API_KEY, WEBHOOK_SECRET, NOTIFY_SECRET] {
        assert!(!log.contains(secret), "the log shows '{secret}':\n{log}");
    }
    assert!(
        log.contains("http://***:***@127.0.0.1:9/hook?api_key=***&team=web"),
        "the log names the target without its credentials:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("readable by other users")
            && l.contains(&token_file.display().to_string())),
        "the log warns about the open token file:\n{log}"
    );

    assert_eq!(mode(&state), 0o700, "the state directory");
    let files: Vec<_> = fs::read_dir(&state)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .collect();
    for name in ["admin-token", "config.last-good.yaml", "state.json"] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "{name} in {files:?}"
        );
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // The copy is of the live config, secrets and all: its mode is what guards them.
    let copy = fs::read_to_string(state.join("config.last-good.yaml")).expect("copy");
    assert!(copy.contains(WEBHOOK_SECRET), "{copy}");
}
