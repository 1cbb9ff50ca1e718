//! The lab itself: its topology serves and cleans up, and a cleanup removes only the
//! labs its own runs left behind.

use super::*;

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The topology alone (no agent): backends answer TCP and UDP over IPv4 and IPv6
/// from the gateway namespace, and dropping the lab leaves nothing behind.
#[test]
fn lab_topology_serves_and_cleans_up() {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    let client = lab.bins().client.clone();
    let gw = lab.gateway_ns().to_owned();
    for b in lab.backends() {
        for ip in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
            let target = SocketAddr::new(ip, BACKEND_PORT).to_string();
            for mode in ["--connections", "--udp"] {
                let out = ok(
                    &lab,
                    "ks-client from the gateway",
                    lab.exec(&gw, &client, &["--target", &target, mode, "20"]),
                );
                let s = parse_summary("ks-client", &out).unwrap();
                assert_eq!(s.failed, 0, "{mode} to {target}: {s:?}");
                assert_eq!(
                    s.by_backend.get(&b.name),
                    Some(&20),
                    "{mode} to {target}: {s:?}"
                );
            }
        }
    }
    let prefix = lab.gateway_ns().trim_end_matches("-gw").to_owned();
    assert!(namespaces().contains(&prefix));
    let dir = lab.state_dir().to_owned();
    drop(lab);
    let left = namespaces();
    assert!(
        !left.contains(&format!("{prefix}-")),
        "namespaces left behind: {left}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Set in the child process of `lab_cleanup_takes_only_its_runs_left_behind_labs`.
const LEAVE_BEHIND: &str = "KEYSTONE_TEST_LEAVE_A_LAB_BEHIND";

/// Not a test of its own: in a child process (with [`LEAVE_BEHIND`] set) it builds a lab
/// and exits without dropping it, as a test killed mid-run does.
#[test]
#[ignore = "a helper of lab_cleanup_takes_only_its_runs_left_behind_labs"]
fn leave_a_lab_behind() {
    if std::env::var_os(LEAVE_BEHIND).is_none() {
        return;
    }
    let lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue"]);
    println!("left behind: {}", lab.name());
    std::io::Write::flush(&mut std::io::stdout()).ok();
    std::process::exit(0);
}

/// Takes a lab down when dropped (for the labs this test makes, whatever it asserts).
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        Lab::down(&self.0).ok();
    }
}

/// `.ci/run`'s cleanup (`xtask lab down --run ID`) removes the labs its run left behind
/// and no other: not a lab whose creator still runs (in use, on a shared host maybe by
/// someone else), not one another run left behind.
#[test]
fn lab_cleanup_takes_only_its_runs_left_behind_labs() {
    let run = format!("test-{}", std::process::id());
    let other_run = format!("{run}-other");
    let leave_behind = |run: &str| {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "lab::leave_a_lab_behind",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(LEAVE_BEHIND, "1")
            .env(keystone_lab::RUN_ENV, run)
            .output()
            .expect("running the child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let name = stdout
            .lines()
            .find_map(|l| l.strip_prefix("left behind: "))
            .unwrap_or_else(|| {
                panic!(
                    "the child built no lab: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        Down(name.to_owned())
    };
    let ours = leave_behind(&run);
    let others = leave_behind(&other_run);
    let live = LabBuilder::new()
        .backends(&["blue"])
        .bins(keystone_lab::test_bins!())
        .run(&run)
        .build()
        .unwrap_or_else(|e| panic!("building the lab: {e}"));
    let ns_of = |lab: &str| {
        let state = Lab::read_state(lab).unwrap_or_else(|e| panic!("{lab}: {e}"));
        state.gateway_ns
    };
    let (ours_ns, others_ns) = (ns_of(&ours.0), ns_of(&others.0));

    let xtask = keystone_lab::test_bins!().agent.with_file_name("xtask");
    let out = Command::new(Bins::require(&xtask).expect("cargo xtask builds it"))
        .args(["lab", "down", "--run", &run])
        .output()
        .expect("running xtask lab down");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "xtask lab down --run {run}: {said}");

    let labs = Lab::list();
    let netns = namespaces();
    assert!(
        !labs.contains(&ours.0) && !netns.contains(&ours_ns),
        "this run's lab left behind was not removed: {said}"
    );
    assert!(
        labs.contains(&live.name().to_owned()) && netns.contains(live.gateway_ns()),
        "a lab whose creator runs was removed: {said}"
    );
    assert!(
        labs.contains(&others.0) && netns.contains(&others_ns),
        "another run's lab was removed: {said}"
    );
}
