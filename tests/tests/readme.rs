//! README.md's "Running it on a real host" steps, run as written in the namespace lab:
//! the example config from "Config" (only its `interfaces:` line changed to the lab's),
//! the setup lines, the agent, and `keystone-ctl status`, which must exit 0 — then the
//! signed-webhook curl example, which must fail on a refusal. The README's absolute
//! paths (/etc/keystone, /var/lib/keystone, /sys/fs/bpf) are the lab's own: the steps
//! run in a private mount namespace where /etc and /var/lib are overlays (writes stay
//! in the lab's state directory) and /sys/fs/bpf is a bpffs of its own.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Output,
};

use keystone_lab::{
    ADMIN_LISTEN, Lab, Mode, cmd,
    helpers::{BACKEND_PORT, new_lab},
};

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first ```<lang> block after the heading line `heading`.
fn block(readme: &str, heading: &str, lang: &str) -> String {
    let start = readme
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let mut lines = readme.lines().skip(start + 1);
    let fence = format!("```{lang}");
    lines
        .by_ref()
        .find(|l| *l == fence)
        .unwrap_or_else(|| panic!("no {fence} block under {heading:?}"));
    let body: Vec<&str> = lines.take_while(|l| *l != "```").collect();
    body.join("\n") + "\n"
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where the README's relative paths (`keystone.yaml`, `target/release/…`) and the
/// overlays live, and a `sudo` that just runs its command (the lab runs as root).
fn workdir(lab: &Lab, config: &str) -> PathBuf {
    let dir = lab.state_dir().join("readme");
    for sub in [
        "bin",
        "target",
        "etc-upper",
        "etc-work",
        "lib-upper",
        "lib-work",
    ] {
        fs::create_dir_all(dir.join(sub)).expect("creating the README's work dir");
    }
    let bin_dir = lab.bins().agent.parent().expect("bin dir").to_path_buf();
    symlink(&bin_dir, dir.join("target/release")).expect("linking target/release");
    let sudo = dir.join("bin/sudo");
    fs::write(&sudo, "#!/bin/sh\nexec \"$@\"\n").expect("writing sudo");
    fs::set_permissions(&sudo, fs::Permissions::from_mode(0o755)).expect("chmod sudo");
    fs::write(dir.join("keystone.yaml"), config).expect("writing keystone.yaml");
    dir
}

/// `lines` as a shell script in `dir` with the `sudo` above first on PATH.
fn script(dir: &Path, lines: &str) -> String {
    format!(
        "set -e\ncd '{d}'\nPATH='{d}/bin':$PATH\n{lines}",
        d = dir.display()
    )
}

#[test]
fn readme_real_host_steps_work_as_written() {
    let readme = readme();
    let steps = block(&readme, "## Running it on a real host", "sh");
    let example = block(&readme, "## Config", "yaml");
    let webhook_yaml = block(&readme, "## Deployments", "yaml");
    let webhook_curl = block(&readme, "### Signed webhook for CI", "sh");

    let interfaces = "interfaces: [eth0, eth1]";
    let (before, after) = steps
        .split_once("sudo target/release/keystone-agent --config /etc/keystone/keystone.yaml\n")
        .expect("the steps start the agent on /etc/keystone/keystone.yaml");
    let before = before
        .strip_prefix("cargo xtask build")
        .expect("the steps start with the build (done already: the test runs its binaries)");
    let before = &before[before.find('\n').expect("a line after the build")..];

    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    lab.start_backends(BACKEND_PORT)
        .expect("starting the backends");
    lab.warm_neighbours().expect("warming the neighbours");
    let green = lab.backend("green").expect("green").ipv4;
    assert!(
        example.contains(&format!("address: {green}:{BACKEND_PORT}")),
        "the example's api-v2 is the lab's green backend"
    );
    let blue = lab.backend("blue").expect("blue").ipv4;
    assert!(example.contains(interfaces), "{example}");
    // The only change: the lab's interfaces. The webhook section comes from Deployments.
    let webhook_section: String = webhook_yaml
        .lines()
        .skip_while(|l| !l.starts_with("webhook:"))
        .take_while(|l| *l == "webhook:" || l.starts_with(' '))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = example.replace(
        interfaces,
        &format!("interfaces: [{}]", lab.gateway_interfaces().join(", ")),
    ) + &webhook_section;
    assert!(
        config.contains(&format!("listen: {ADMIN_LISTEN}")),
        "the lab polls the example's admin.listen"
    );
    let dir = workdir(&lab, &config);

    // The agent process: private mounts, the README's lines up to the agent, then the
    // agent itself (exec, so the lab supervises it and stops it on drop).
    let d = dir.display();
    let agent = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work /etc\n\
         mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/lib-upper,workdir={d}/lib-work /var/lib\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         # the user's DNS: the example's api-v1.internal is the lab's blue backend\n\
         echo '{blue} api-v1.internal' >> /etc/hosts\n\
         {before}\
         mkdir -p /etc/keystone && openssl rand -hex 24 > /etc/keystone/webhook-secret\n\
         exec sudo target/release/keystone-agent --config /etc/keystone/keystone.yaml\n"
    );
    let gw = lab.gateway_ns().to_owned();
    let pid = lab
        .spawn(
            keystone_lab::agent::AGENT,
            &gw,
            Path::new("/bin/sh"),
            &[
                "-c",
                "exec unshare --mount --propagation private /bin/sh -c \"$1\"",
                "sh",
                &script(&dir, &agent),
            ],
        )
        .expect("starting the agent");
    if let Err(e) = lab.wait_agent_ready(std::time::Duration::from_secs(60)) {
        panic!(
            "the README's agent did not come up: {e}\n{}",
            lab.diagnostics()
        );
    }

    // Later lines run in the agent's mount namespace (they see its /etc/keystone).
    let in_agent_mounts = |lines: &str| {
        cmd::output(
            cmd::in_ns(lab.gateway_ns(), "nsenter")
                .args(["-t", &pid.to_string(), "-m", "/bin/sh", "-c"])
                .arg(script(&dir, lines)),
        )
        .expect("running nsenter")
    };
    let status = in_agent_mounts(after);
    assert!(
        status.status.success(),
        "the README's `keystone-ctl status` failed:\n{}\n{}",
        text(&status),
        lab.diagnostics()
    );
    let shown = String::from_utf8_lossy(&status.stdout);
    for backend in ["api-v1", "api-v2"] {
        assert!(shown.contains(backend), "status lacks {backend}:\n{shown}");
    }

    // The webhook example starts a canary of api 1.24.0 (api-v2's version) ...
    let first = in_agent_mounts(&webhook_curl);
    assert!(
        first.status.success() && String::from_utf8_lossy(&first.stdout).contains("deployment_id"),
        "the README's webhook call was not accepted:\n{}",
        text(&first)
    );
    // ... and the same call again is refused (a replay, or a canary already running):
    // curl must fail the job and print the agent's reason.
    let again = in_agent_mounts(&webhook_curl);
    assert_eq!(
        again.status.code(),
        Some(22),
        "a refused webhook call must fail (curl --fail-with-body):\n{}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("\"error\""),
        "the refusal's reason is printed:\n{}",
        text(&again)
    );
}
