//! A routes-file directory that cannot be written (a small tmpfs of the lab's, made
//! read-only or filled): read-only at start is refused; read-only or full at run time
//! is reported, counted and retried, and forwarding goes on.

use keystone_lab::ok;

use super::*;

/// The lab with BIRD's routes file on a tmpfs of its own; returns the tmpfs too.
fn lab_with_routes_tmpfs() -> (Lab, Bird, PathBuf) {
    let mut lab = backends_lab();
    let dir = lab.state_dir().join("routes");
    let r = lab.mount_tmpfs(&dir, 64 * 1024);
    ok(&lab, "mounting the routes tmpfs", r);
    let bird = Bird::new(&lab, "bird", &dir);
    bird.start(&mut lab);
    (lab, bird, dir)
}

#[test]
fn a_read_only_routes_directory_is_refused_at_start_with_the_path_and_os_error() {
    let (mut lab, bird, dir) = lab_with_routes_tmpfs();
    ok(&lab, "making it read-only", lab.set_read_only(&dir, true));
    let config = ok(
        &lab,
        "writing the config",
        lab.write_config_text(&config(&lab, Some(&bird))),
    );
    let r = lab.spawn_agent("agent", &config, &[]);
    ok(&lab, "starting the agent", r);
    let r = lab.wait_exit("agent", SHORT);
    let status = ok(&lab, "the agent to give up", r);
    let stderr = lab.stderr_of("agent").unwrap_or_default();
    assert_eq!(status.code(), Some(64), "{stderr}");
    let want = format!(
        "bgp.routes_file: cannot write in its directory {}: Read-only file system",
        dir.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

/// How the routes file's directory breaks under a running agent.
#[derive(Clone, Copy)]
enum Broken {
    /// Remounted read-only.
    ReadOnly,
    /// Filled to the last byte by another file.
    Full,
}

/// The directory breaks under a running agent, then a drain needs a new routes
/// file: the failure is in `status.announce.last_configure` (with the path and the
/// OS error), the configure-errors counter and `keystone-ctl status`; new connections
/// still forward; once the directory is mended a retry withdraws the VIP.
fn a_broken_routes_directory_is_reported_retried_and_forwarding_goes_on(broken: Broken) {
    let (mut lab, bird, dir) = lab_with_routes_tmpfs();
    let r = lab.write_config_text(&config(&lab, Some(&bird)));
    ok(&lab, "writing the config", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent", r);
    wait_announced(&lab, &bird);

    let filler = dir.join("filler");
    let os_error = match broken {
        Broken::ReadOnly => {
            ok(&lab, "making it read-only", lab.set_read_only(&dir, true));
            "Read-only file system"
        }
        Broken::Full => {
            let r = keystone_lab::mounts::fill_filesystem(&filler, 1 << 20);
            ok(&lab, "filling it", r);
            "No space left on device"
        }
    };
    let (code, out, err) = ctl(&lab, &["drain", "--no-wait"]);
    assert_eq!(code, 0, "keystone-ctl drain: {out}{err}");
    let last = last_configure(&lab);
    assert_eq!(last.as_ref().map(|c| c.ok), Some(false), "{last:?}");
    let error = last
        .as_ref()
        .and_then(|c| c.error.as_deref())
        .unwrap_or_default();
    assert!(
        error.contains(&bird.routes_file.display().to_string()) && error.contains(os_error),
        "want the path and {os_error:?}: {last:?}"
    );
    let (_, metrics) = ok(&lab, "GET /metrics", lab.admin_get("/metrics"));
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keystone_bgp_configure_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "configure errors {errors}:\n{metrics}");
    assert_forwarding(&lab, "with the routes file unwritable", 50);
    let (_, out, _) = ctl(&lab, &["status"]);
    assert!(out.contains("last birdc configure FAILED"), "{out}");

    let mended = match broken {
        Broken::ReadOnly => lab.set_read_only(&dir, false).map_err(|e| e.to_string()),
        Broken::Full => std::fs::remove_file(&filler).map_err(|e| e.to_string()),
    };
    ok(&lab, "mending the directory", mended);
    wait(&lab, "the retry to withdraw the VIP", || {
        !bird.announces(vip4()) && last_configure(&lab).is_some_and(|c| c.ok)
    });
}

#[test]
fn a_routes_directory_gone_read_only_is_reported_retried_and_forwarding_goes_on() {
    a_broken_routes_directory_is_reported_retried_and_forwarding_goes_on(Broken::ReadOnly);
}

#[test]
fn a_full_routes_directory_is_reported_retried_and_forwarding_goes_on() {
    a_broken_routes_directory_is_reported_retried_and_forwarding_goes_on(Broken::Full);
}
