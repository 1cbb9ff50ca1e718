//! The agent's life around its data plane, in the namespace lab with real XDP:
//!
//! * A start that fails (a missing interface, the admin port taken) leaves no XDP
//!   program, link or pin behind, and a data plane an earlier agent left pinned
//!   (SIGKILLed, or stopped with `--keep-forwarding`) exactly as it was, forwarding.
//! * One agent per pin directory: a second one is refused while the first runs, and
//!   a restart after the first was SIGKILLed works.
//! * Pins removed under a running agent are pinned again (and a pin directory that
//!   cannot hold them is reported in `/health` and `/metrics`), so a crash after that
//!   still leaves forwarding running.
//! * A missing bpffs gets the command that mounts it; an admin API on a non-loopback
//!   address a warning; the running agent keeps only `CAP_BPF`, with NoNewPrivs.
//!
//! Every test builds its own lab (unique names, removed on drop) and waits by polling
//! with deadlines.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use keystone_agent::dataplane::Hook;
use keystone_api::{Health, HealthStatus};
use keystone_lab::{
    AgentConfig, Bins, Lab, Mode, Probe, cmd,
    helpers::{BACKEND_PORT, kill_agent, new_lab, stop_agent_cleanly, tcp_tenant, vip},
    kernel::PlaneView,
    ok, wait_for,
};

/// Generous bounds for an agent to start or fail, and for the pin check to run.
const SHORT: Duration = Duration::from_secs(60);
/// The lab's admin address, taken by a squatter in some tests.
const ADMIN_PORT: u16 = 9100;

/// Blue and green serving, neighbours known, and the config of tenant `web` (1:1)
/// written, with `edit` applied to it; no agent yet.
fn lab_with_config(edit: impl FnOnce(&mut AgentConfig)) -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    ok(&lab, "warming neighbours", lab.warm_neighbours());
    let mut cfg = web_config(&lab);
    edit(&mut cfg);
    ok(&lab, "writing the config", lab.write_config(&cfg));
    lab
}

fn web_config(lab: &Lab) -> AgentConfig {
    lab.agent_config(vec![tcp_tenant(
        lab,
        "web",
        vip(),
        &[("blue", 1), ("green", 1)],
    )])
}

/// Writes `cfg` beside the lab's config as `name`; returns its path.
fn write_other_config(lab: &Lab, name: &str, cfg: &AgentConfig) -> PathBuf {
    let path = lab.state_dir().join(name);
    let r = fs::write(&path, cfg.to_yaml());
    ok(lab, "writing a second config", r);
    path
}

/// Runs an agent as `name` on `config` that must fail; returns its stderr.
fn failed_start(lab: &mut Lab, name: &str, config: &Path, extra: &[&str]) -> String {
    let r = lab.spawn_agent(name, config, extra);
    ok(lab, "starting keystone-agent", r);
    let status = lab.wait_exit(name, SHORT);
    let status = ok(lab, "waiting for the agent to give up", status);
    let stderr = lab.stderr_of(name).unwrap_or_default();
    assert!(
        !status.success(),
        "the agent should exit non-zero, it exited {status}; stderr:\n{stderr}"
    );
    stderr
}

/// Every one of `n` new connections to the VIP answered by a backend.
fn assert_forwarding(lab: &Lab, what: &str, n: u32) {
    let s = ok(lab, "new connections", lab.tcp_connections(vip(), n));
    assert!(
        s.failed == 0 && s.answered() == u64::from(n),
        "{what}: new connections through the VIP {s:?}\n{}",
        lab.agent_diagnostics()
    );
}

fn view(lab: &Lab) -> PlaneView {
    ok(lab, "reading the data plane", lab.plane_view())
}

fn assert_nothing_left(lab: &Lab, what: &str) {
    let v = view(lab);
    assert!(
        v.is_empty(),
        "{what}: the failed start left XDP programs or pins behind: {v:?}"
    );
}

/// Takes the admin port in the gateway namespace (a ks-backend on `[::]:9100`).
fn squat_admin_port(lab: &mut Lab) {
    let backend = lab.bins().backend.clone();
    let gw = lab.gateway_ns().to_owned();
    let port = ADMIN_PORT.to_string();
    let r = lab.spawn(
        "squatter",
        &gw,
        &backend,
        &["--name", "squatter", "--port", &port],
    );
    ok(lab, "starting the squatter", r);
    let r = wait_for("the squatter to listen", SHORT, || {
        let out = lab.stdout_of("squatter")?;
        Ok(if out.contains("listening") {
            Probe::Ready(())
        } else {
            Probe::NotYet(out)
        })
    });
    ok(lab, "squatter", r);
}

/// The config with one interface more, which does not exist.
fn with_missing_interface(cfg: &mut AgentConfig) {
    cfg.interfaces.push("eth-missing".into());
}

const MISSING_INTERFACE: &str = "interface eth-missing does not exist";
const PORT_TAKEN: &str = "cannot listen on admin.listen 127.0.0.1:9100";

#[test]
fn a_start_with_a_missing_interface_leaves_no_xdp_program_link_or_pin() {
    let mut lab = lab_with_config(with_missing_interface);
    let config = lab.config_path();
    let stderr = failed_start(&mut lab, "agent", &config, &[]);
    assert!(stderr.contains(MISSING_INTERFACE), "stderr:\n{stderr}");
    assert_nothing_left(&lab, "missing interface");
}

#[test]
fn a_start_with_the_admin_port_taken_leaves_no_xdp_program_link_or_pin() {
    let mut lab = lab_with_config(|_| {});
    squat_admin_port(&mut lab);
    let config = lab.config_path();
    let stderr = failed_start(&mut lab, "agent", &config, &[]);
    assert!(stderr.contains(PORT_TAKEN), "stderr:\n{stderr}");
    assert_nothing_left(&lab, "admin port taken");
}

/// How the first agent went away, leaving its data plane pinned.
#[derive(Clone, Copy, Debug)]
enum Gone {
    Killed,
    KeptForwarding,
}

/// A first agent leaves its data plane pinned; starts that fail (a missing
/// interface, the admin port taken) leave it exactly as it was (same program on every
/// interface, same pins with the same kernel objects) and forwarding; then a good
/// start takes over.
fn failed_starts_leave_the_pinned_data_plane(gone: Gone) {
    let mut lab = lab_with_config(|_| {});
    let args: &[&str] = match gone {
        Gone::Killed => &[],
        Gone::KeptForwarding => &["--keep-forwarding"],
    };
    let r = lab.start_agent_with(args);
    ok(&lab, "starting the first agent", r);
    assert_forwarding(&lab, "with the first agent", 50);
    match gone {
        Gone::Killed => kill_agent(&mut lab),
        Gone::KeptForwarding => stop_agent_cleanly(&mut lab),
    }
    let before = view(&lab);
    assert!(
        before.xdp.values().all(Option::is_some) && !before.pins.is_empty(),
        "the first agent should leave its data plane pinned: {before:?}"
    );

    let mut cfg = web_config(&lab);
    with_missing_interface(&mut cfg);
    let bad = write_other_config(&lab, "missing-interface.yaml", &cfg);
    let stderr = failed_start(&mut lab, "missing-interface", &bad, &[]);
    assert!(stderr.contains(MISSING_INTERFACE), "stderr:\n{stderr}");
    assert_eq!(view(&lab), before, "after a start with a missing interface");
    assert_forwarding(&lab, "after a start with a missing interface", 50);

    squat_admin_port(&mut lab);
    let config = lab.config_path();
    let stderr = failed_start(&mut lab, "port-taken", &config, &[]);
    assert!(stderr.contains(PORT_TAKEN), "stderr:\n{stderr}");
    assert_eq!(
        view(&lab),
        before,
        "after a start with the admin port taken"
    );
    assert_forwarding(&lab, "after a start with the admin port taken", 50);

    let r = lab.stop("squatter");
    ok(&lab, "stopping the squatter", r);
    let r = lab.start_agent();
    ok(&lab, "starting a good agent", r);
    let after = view(&lab);
    assert_eq!(
        after.pins.keys().collect::<Vec<_>>(),
        before.pins.keys().collect::<Vec<_>>(),
        "the good start takes over the same pins"
    );
    assert_forwarding(&lab, "after the good start", 50);
}

#[test]
fn failed_starts_leave_a_killed_agents_data_plane_as_it_was_and_forwarding() {
    failed_starts_leave_the_pinned_data_plane(Gone::Killed);
}

#[test]
fn failed_starts_leave_a_kept_forwarding_data_plane_as_it_was_and_forwarding() {
    failed_starts_leave_the_pinned_data_plane(Gone::KeptForwarding);
}

/// A second agent on the pins of a running one is refused before it touches them,
/// naming the first (the lock's holder); the first keeps its data plane (its XDP or
/// tcx links too) and forwarding; once the first is SIGKILLed (the kernel drops its
/// lock) a new agent starts on the same pins.
fn a_second_agent_is_refused(attach: Option<&str>) {
    let mut lab = lab_with_config(|cfg| cfg.attach = attach.map(str::to_owned));
    let r = lab.start_agent();
    ok(&lab, "starting the first agent", r);
    let before = view(&lab);
    if attach == Some("tc") {
        let tcx = Hook::Tc.link_pin(&lab.pin_dir(), "eth-client");
        assert!(tcx.exists(), "no tcx link pinned at {}", tcx.display());
    }
    let first = ok(&lab, "the first agent's pid", lab.pid_of("agent"));

    let mut cfg = web_config(&lab);
    cfg.attach = attach.map(str::to_owned);
    cfg.admin_listen = "127.0.0.1:9101".into();
    let second = write_other_config(&lab, "second.yaml", &cfg);
    let stderr = failed_start(&mut lab, "second", &second, &[]);
    let pin_dir = lab.pin_dir();
    assert!(
        stderr.contains(&format!(
            "pin directory {} is in use by another keystone-agent (pid {first} holds its lock)",
            pin_dir.display()
        )),
        "stderr:\n{stderr}"
    );
    let r = lab.ensure_running("agent");
    ok(&lab, "the first agent", r);
    assert_eq!(
        view(&lab),
        before,
        "the second agent changed the data plane"
    );
    assert_forwarding(&lab, "after the second agent was refused", 50);
    let (code, body) = ok(&lab, "GET /health", lab.admin_get("/health"));
    assert_eq!(code, 200, "{body}");

    let r = lab.kill("agent");
    ok(&lab, "killing the first agent", r);
    let r = lab.start_agent();
    ok(&lab, "starting an agent after the first was SIGKILLed", r);
    assert_forwarding(&lab, "after the restart", 50);
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_and_the_first_keeps_forwarding() {
    a_second_agent_is_refused(None);
}

#[test]
fn a_second_agent_on_the_same_pins_at_attach_tc_is_refused_and_the_first_keeps_its_tcx_links() {
    a_second_agent_is_refused(Some("tc"));
}

/// `GET /health`, as keystone-api reads it.
fn health(lab: &Lab) -> Health {
    ok(lab, "GET /health", lab.health())
}

/// The value of one sample line of `GET /metrics` (e.g. `keystone_pins_missing`).
fn metric(lab: &Lab, sample: &str) -> f64 {
    let (code, body) = ok(lab, "GET /metrics", lab.admin_get("/metrics"));
    assert_eq!(code, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{body}"))
}

/// Waits until the sample `sample` of `GET /metrics` is `want`.
fn wait_metric(lab: &Lab, sample: &str, want: f64) {
    let r = wait_for(&format!("{sample} to be {want}"), SHORT, || {
        let now = metric(lab, sample);
        Ok(if now == want {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{sample} {now}"))
        })
    });
    ok(lab, sample, r);
}

/// Waits until the pin directory holds exactly `names` again.
fn wait_pins(lab: &Lab, what: &str, want: &PlaneView) {
    let r = wait_for(what, SHORT, || {
        let now = lab.plane_view()?;
        Ok(if now.pins.keys().eq(want.pins.keys()) {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{:?}", now.pins.keys().collect::<Vec<_>>()))
        })
    });
    ok(lab, what, r);
}

/// Runs `args` in the mount namespace of the lab process `name` (`ip netns exec`
/// gives the agent one of its own, a slave of the host's: nothing done there
/// reaches the host).
fn in_mounts_of(lab: &Lab, name: &str, args: &[&str]) {
    let pid = ok(lab, "pid", lab.pid_of(name)).to_string();
    let r = cmd::run(
        std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "--"])
            .args(args),
    );
    ok(lab, &format!("{args:?} in the agent's mount namespace"), r);
}

/// Pins removed under a running agent are pinned again with the same kernel
/// objects, counted in `keystone_pins_restored_total`, so a SIGKILL after that leaves
/// forwarding running and a new agent takes over. When the bpffs itself goes away
/// (unmounted in the agent's mount namespace), `/health` says `degraded` and why and
/// `keystone_pins_missing` counts what could not be pinned; on a fresh bpffs the
/// agent locks it and pins everything there.
#[test]
fn pins_removed_under_a_running_agent_are_pinned_again() {
    let mut lab = lab_with_config(|_| {});
    let r = lab.start_agent();
    ok(&lab, "starting the agent", r);
    let before = view(&lab);
    let pin_dir = lab.pin_dir();
    let pins = before.pins.len() as f64;

    for name in before.pins.keys() {
        let path = pin_dir.join(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
    }
    wait_pins(&lab, "the agent to pin everything again", &before);
    // The agent counts a round's pins after pinning them: wait for the count too.
    wait_metric(&lab, "keystone_pins_restored_total", pins);
    assert_eq!(view(&lab), before, "pinned again, the same objects");
    assert_eq!(health(&lab).status, HealthStatus::Ok);

    kill_agent(&mut lab);
    assert_eq!(view(&lab), before, "after the SIGKILL");
    assert_forwarding(&lab, "with no agent, on the pins put back", 50);
    let r = lab.start_agent();
    ok(&lab, "starting a new agent", r);
    assert_forwarding(&lab, "after the restart", 50);

    // The bpffs goes away: the directory left is on the lab's state filesystem.
    let dir = pin_dir.to_str().expect("utf-8 path");
    in_mounts_of(&lab, "agent", &["umount", "-l", dir]);
    let r = wait_for("/health to say the pins are missing", SHORT, || {
        let h = health(&lab);
        Ok(if h.status == HealthStatus::Degraded {
            Probe::Ready(h)
        } else {
            Probe::NotYet(format!("{h:?}"))
        })
    });
    let h = ok(&lab, "degraded health", r);
    let problem = h.problems.first().map(String::as_str).unwrap_or_default();
    assert!(
        problem.contains("forwarding stops if the agent exits")
            && problem.contains("not on a bpf filesystem"),
        "{h:?}"
    );
    assert_eq!(metric(&lab, "keystone_pins_missing"), pins);

    in_mounts_of(&lab, "agent", &["mount", "-t", "bpf", "bpf", dir]);
    let r = wait_for("/health to be ok again", SHORT, || {
        let h = health(&lab);
        Ok(if h.status == HealthStatus::Ok {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{h:?}"))
        })
    });
    ok(&lab, "health", r);
    assert_eq!(metric(&lab, "keystone_pins_missing"), 0.0);
    assert_eq!(metric(&lab, "keystone_pins_restored_total"), pins);
    assert_forwarding(&lab, "on the new bpffs", 50);
}

/// Runs keystone-agent with `args` to completion in the gateway namespace.
fn run_agent(lab: &Lab, args: &[&OsStr]) -> Output {
    let agent = ok(lab, "keystone-agent", Bins::require(&lab.bins().agent)).to_path_buf();
    let r = cmd::output(cmd::in_ns(lab.gateway_ns(), agent).args(args));
    ok(lab, "keystone-agent", r)
}

/// Without a bpffs at /sys/fs/bpf (as under `ip netns exec`, which mounts a fresh
/// sysfs), the default pin directory is refused with the one command that fixes it.
#[test]
fn a_missing_bpffs_gets_the_mount_command() {
    let lab = lab_with_config(|_| {});
    let config = lab.config_path();
    let state = lab.state_dir().join("agent-state");
    let out = run_agent(
        &lab,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--pin-dir".as_ref(),
            "/sys/fs/bpf/keystone".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited {}: {stderr}", out.status);
    let hint: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("mount -t bpf bpf /sys/fs/bpf`"))
        .collect();
    assert_eq!(
        hint.len(),
        1,
        "one line with the mount command for /sys/fs/bpf; stderr:\n{stderr}"
    );
    assert_nothing_left(&lab, "no bpffs");
}

const EXPOSED: &str = "admin.listen 0.0.0.0:9100 is not a loopback address";

/// An admin API on 0.0.0.0: `--check` and the start say so (and the README's Admin
/// API section says what to put in front).
#[test]
fn an_admin_api_on_a_non_loopback_address_is_warned_about() {
    let mut lab = lab_with_config(|cfg| cfg.admin_listen = format!("0.0.0.0:{ADMIN_PORT}"));
    let config = lab.config_path();
    let out = run_agent(
        &lab,
        &["--check".as_ref(), "--config".as_ref(), config.as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--check exited {}: {stdout}",
        out.status
    );
    assert!(
        stdout.contains(&format!("warning: {EXPOSED}")),
        "--check output:\n{stdout}"
    );
    let r = lab.start_agent();
    ok(&lab, "starting the agent", r);
    let stderr = lab.stderr_of("agent").unwrap_or_default();
    assert!(stderr.contains(EXPOSED), "agent stderr:\n{stderr}");
}

/// `CAP_BPF` (39) alone, as /proc shows a capability set.
const CAP_BPF_ONLY: &str = "0000008000000000";

/// Every thread of the running agent holds `CAP_BPF` and nothing else, in every set
/// that can give a capability back, with NoNewPrivs; and what the agent does at run
/// time still works without the rest: weight changes reach the kernel's tables, a
/// reload is applied, a clean stop detaches and unpins everything.
#[test]
fn the_serving_agent_keeps_only_cap_bpf_with_no_new_privs() {
    let mut lab = lab_with_config(|_| {});
    let r = lab.start_agent();
    ok(&lab, "starting the agent", r);
    let pid = ok(&lab, "agent pid", lab.pid_of("agent"));
    let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the agent's threads")
        .map(|e| e.expect("thread").path())
        .collect();
    assert!(tasks.len() > 1, "the agent runs several threads: {tasks:?}");
    for task in &tasks {
        let status = fs::read_to_string(task.join("status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {}", task.display()))
                .to_owned()
        };
        let caps: Vec<(&str, String)> = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
            .into_iter()
            .map(|f| (f, field(f)))
            .collect();
        let want = [
            ("CapInh", "0000000000000000"),
            ("CapPrm", CAP_BPF_ONLY),
            ("CapEff", CAP_BPF_ONLY),
            ("CapBnd", CAP_BPF_ONLY),
            ("CapAmb", "0000000000000000"),
        ]
        .map(|(f, v)| (f, v.to_owned()));
        assert_eq!(caps, want, "thread {}", task.display());
        assert_eq!(field("NoNewPrivs"), "1", "thread {}", task.display());
    }

    let (code, body) = ok(
        &lab,
        "POST /tenants/web/weights",
        lab.admin_send(
            "POST",
            "/tenants/web/weights",
            keystone_lab::Auth::Token,
            &[],
            Some(r#"{"weights": {"blue": 0, "green": 1}}"#),
        ),
    );
    assert_eq!(code, 200, "{body}");
    let s = ok(&lab, "new connections", lab.tcp_connections(vip(), 50));
    assert!(
        s.failed == 0 && s.by_backend.keys().eq(["green"]),
        "after the weights moved to green: {s:?}\n{}",
        lab.agent_diagnostics()
    );

    let mut cfg = web_config(&lab);
    cfg.tenants[0].services[1].weight = 0;
    cfg.tenants[0].services[0].weight = 1;
    ok(&lab, "writing the config", lab.write_config(&cfg));
    ok(&lab, "keystone-ctl reload", lab.reload());
    assert_forwarding(&lab, "after the reload", 50);

    stop_agent_cleanly(&mut lab);
    assert_nothing_left(&lab, "after a clean stop");
}
