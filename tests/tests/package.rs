//! The Debian package and the systemd unit, tried as an operator would.
//!
//! - `cargo xtask package --no-build` builds it from the binaries under test, lintian finds no error, `dpkg -i` installs it on
//!   this host (CI is a throwaway root machine), `systemd-analyze verify` accepts the
//!   installed unit, the installed agent prints its version and checks the shipped
//!   config, and `dpkg --purge` leaves nothing behind (also when the test fails).
//! - In a lab, the agent runs as the unit runs it: only the unit's
//!   `CapabilityBoundingSet`, `NoNewPrivileges`, a `NOTIFY_SOCKET`; it says READY=1 once
//!   it forwards and answers, and logs JSON lines with the deployment fields as keys.
//!   Without any one of those capabilities it cannot start.

use std::{
    collections::BTreeSet,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use keystone_api::{DeployState, EventKind};
use keystone_lab::{
    AgentConfig, Lab, Mode,
    cmd::{repo, xtask},
    helpers::{BACKEND_PORT, new_lab, tcp_tenant, vip},
};

const PACKAGE: &str = "keystone-lb";
const UNIT: &str = "keystone-agent.service";
const CONFFILE: &str = "/etc/keystone/keystone.yaml";

fn run(cmd: &mut Command) -> Output {
    let what = keystone_lab::cmd::describe(cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn is_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", PACKAGE])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

/// Purges the package when dropped, so a failed assertion leaves no install behind.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if is_installed() {
            let _ = Command::new("dpkg").args(["--purge", PACKAGE]).status();
        }
    }
}

#[test]
fn the_package_installs_a_working_agent_and_purges_without_a_trace() {
    assert!(
        !is_installed() && !Path::new(CONFFILE).exists(),
        "this host already has {PACKAGE} or {CONFFILE}; the test installs and purges its \
         own copy and leaves an operator's alone: `dpkg --purge {PACKAGE}` first"
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let deb = dir.path().join(format!("{PACKAGE}.deb"));
    // The binaries this suite tests, as built: no second build with other features.
    run(xtask()
        .args(["package", "--no-build", "--output"])
        .arg(&deb));

    let lint = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("lintian runs (cargo xtask setup installs it)");
    let report = String::from_utf8_lossy(&lint.stdout);
    assert!(
        lint.status.success() && !report.lines().any(|l| l.starts_with("E:")),
        "lintian found errors:\n{report}{}",
        String::from_utf8_lossy(&lint.stderr)
    );

    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<PathBuf> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| Path::new("/").join(p.trim_start_matches("./")))
        .collect();
    for want in [
        "/usr/bin/keystone-agent",
        "/usr/bin/keystone-ctl",
        "/usr/lib/systemd/system/keystone-agent.service",
        CONFFILE,
        "/usr/share/man/man1/keystone-agent.1.gz",
        "/usr/share/man/man1/keystone-ctl.1.gz",
        "/usr/share/man/man1/keystone-ctl-canary-start.1.gz",
        "/usr/share/bash-completion/completions/keystone-ctl",
        "/usr/share/zsh/vendor-completions/_keystone-ctl",
        "/usr/share/fish/vendor_completions.d/keystone-ctl.fish",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(want)),
            "{want} is not in the package:\n{listing}"
        );
    }
    let conffiles = stdout(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), CONFFILE, "the config is a conffile");

    // What exists before the install (shared directories such as /usr/bin) stays.
    let before: BTreeSet<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    let _purge = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));

    let unit = format!("/usr/lib/systemd/system/{UNIT}");
    let verify = run(Command::new("systemd-analyze").args(["verify", &unit]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{said}"
    );

    let version = stdout(Command::new("/usr/bin/keystone-agent").arg("--version"));
    let commit =
        stdout(
            Command::new("git")
                .current_dir(repo())
                .args(["rev-parse", "--short=12", "HEAD"]),
        );
    assert_eq!(
        version.trim(),
        format!(
            "keystone-agent {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            commit.trim()
        )
    );
    let check = stdout(Command::new("/usr/bin/keystone-agent").args(["--check", CONFFILE]));
    assert_eq!(
        check.trim(),
        format!("{CONFFILE}: valid, 1 tenant(s), 0 error(s), 0 warning(s)")
    );

    run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(
        !is_installed(),
        "{PACKAGE} is still installed after the purge"
    );
    let left: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !before.contains(f) && f.symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left behind by dpkg --purge: {left:?}");
}

/// The capabilities the shipped unit keeps (`CAP_BPF` …), as setpriv names them (`bpf`).
fn unit_capabilities() -> Vec<String> {
    let path = repo().join("keystone-agent/debian").join(UNIT);
    let unit = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `setpriv` as the unit confines the agent: a root process with only `caps` in its
/// bounding set (and none inheritable), and no_new_privs.
fn confined(caps: &[String]) -> Vec<String> {
    let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "/usr/bin/setpriv".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all{bounding}"),
        "--".into(),
    ]
}

fn lab() -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    lab.start_backends(BACKEND_PORT)
        .unwrap_or_else(|e| panic!("starting the backends: {e}\n{}", lab.diagnostics()));
    lab.warm_neighbours()
        .unwrap_or_else(|e| panic!("warming neighbours: {e}\n{}", lab.diagnostics()));
    let web = tcp_tenant(&lab, "web", vip(), &[("blue", 1), ("green", 0)]);
    let cfg: AgentConfig = lab.agent_config(vec![web]);
    lab.write_config(&cfg).expect("writing the config");
    lab
}

/// The bounding set of a running process, from /proc (a hex mask).
fn bounding_set(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd line");
    u64::from_str_radix(hex.trim(), 16).expect("hex mask")
}

#[test]
fn the_agent_runs_as_the_unit_runs_it() {
    let caps = unit_capabilities();
    let mut lab = lab();
    let socket_path = lab.state_dir().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut launcher = vec![
        "/usr/bin/env".to_owned(),
        format!("NOTIFY_SOCKET={}", socket_path.display()),
    ];
    launcher.extend(confined(&caps));
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    lab.start_agent_wrapped(&launcher, &["--log-format", "json"])
        .unwrap_or_else(|e| panic!("starting the confined agent: {e}\n{}", lab.diagnostics()));

    let mut buf = [0u8; 64];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 within 60 s: {e}\n{}", lab.diagnostics()));
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means forwarding: every connection reaches the backend with all the traffic.
    let summary = lab.tcp_connections(vip(), 200).expect("traffic");
    assert_eq!(summary.failed, 0, "{summary:?}\n{}", lab.diagnostics());
    assert_eq!(summary.by_backend.get("blue"), Some(&200), "{summary:?}");

    let pid = lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == keystone_lab::agent::AGENT)
        .expect("the agent's record")
        .pid;
    let allowed: u64 = caps.iter().map(|c| 1u64 << capability_number(c)).sum();
    let held = bounding_set(pid);
    assert_eq!(
        held & !allowed,
        0,
        "the agent holds capabilities ({held:#x}) outside the unit's {caps:?}"
    );

    let canary = r#"{"service":"web","version":"1.1.0","initial_traffic":10,"increment":10,"interval":"1h"}"#;
    let (code, body) = lab
        .admin_send(
            "POST",
            "/deployments/canary",
            keystone_lab::Auth::Token,
            &[],
            Some(canary),
        )
        .expect("POST /deployments/canary");
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["deployment_id"]
        .as_str()
        .expect("deployment_id")
        .to_owned();
    let event = keystone_lab::wait_for(
        "the deployment's JSON log line",
        Duration::from_secs(10),
        || {
            let logs = lab.stderr_of(keystone_lab::agent::AGENT)?;
            // Whole lines only: the agent may be writing the last one.
            let lines: Vec<serde_json::Value> = logs
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            Ok(
                match lines.into_iter().find(|l| l["deployment"] == id.as_str()) {
                    Some(line) => keystone_lab::Probe::Ready(line),
                    None => keystone_lab::Probe::NotYet(logs),
                },
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.diagnostics()));
    assert_eq!(event["message"], "deployment event", "{event}");
    assert_eq!(event["tenant"], "web", "{event}");
    assert_eq!(event["event"], EventKind::Started.name(), "{event}");
    assert_eq!(event["state"], DeployState::Progressing.name(), "{event}");
    assert_eq!(event["level"], "INFO", "{event}");
}

#[test]
fn the_agent_cannot_start_without_any_one_of_the_units_capabilities() {
    let caps = unit_capabilities();
    let mut lab = lab();
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let launcher = confined(&fewer);
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        let started = lab.start_agent_wrapped(&launcher, &[]);
        let stderr = lab
            .stderr_of(keystone_lab::agent::AGENT)
            .unwrap_or_default();
        let status = lab.stop_agent().expect("stopping the agent");
        assert!(
            started.is_err() && status.is_some_and(|s| !s.success()),
            "the agent started without CAP_{}: the unit need not keep it\n{stderr}",
            dropped.to_uppercase()
        );
        // It fails where the capability is used, and says so.
        assert!(
            stderr.contains("cannot load the XDP program") && stderr.contains("os error"),
            "without CAP_{}:\n{stderr}",
            dropped.to_uppercase()
        );
    }
}

/// Linux's number of a capability (capability.h).
fn capability_number(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other}: add its number"),
    }
}
