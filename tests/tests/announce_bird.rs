//! The announcer against a real BIRD 2, started by the test in a temp dir on its own
//! control socket (in a network namespace of its own, so its BGP listener is private):
//! ready VIPs are in BIRD's routes, a VIP that stops qualifying leaves them, a
//! refused `birdc configure` is reported (status and counter) and retried, and a
//! drain withdraws everything and ends drained once new connections stop.
//!
//! Needs root and `bird` (Debian bird2): `cargo test -p keystone-tests --test announce_bird`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use keystone_agent::{
    announce::{Announcer, Health, Inputs, Table, TenantInput, routes},
    config::BgpConfig,
};
use keystone_api::{AnnounceReason, DrainState};

const V4: &str = "198.18.1.10";
const V6: &str = "2001:2::10";

/// BIRD running in its own network namespace; killed on drop.
struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bird_conf(dir: &Path, include: &Path) -> String {
    format!(
        "router id 198.18.0.1;\n\
         log \"{}/bird.log\" all;\n\
         include \"{}\";\n\
         protocol bgp uplink {{ local as 65001; neighbor 198.18.0.2 as 65000;\n  \
           ipv4 {{ import none; export where proto = \"keystone4\"; }};\n}}\n",
        dir.display(),
        include.display()
    )
}

fn start_bird(dir: &Path) -> Bird {
    std::fs::write(dir.join("routes.conf"), routes::render(&[])).unwrap();
    std::fs::write(
        dir.join("bird.conf"),
        bird_conf(dir, &dir.join("routes.conf")),
    )
    .unwrap();
    let socket = dir.join("bird.ctl");
    let child = Command::new("unshare")
        .args(["-n", "bird", "-f", "-c"])
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .spawn()
        .expect("starting bird (needs root and Debian's bird2)");
    let bird = Bird { child, socket };
    wait_until("BIRD's control socket", || bird.socket.exists());
    bird
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn birdc(socket: &Path, args: &str) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args.split(' '))
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tenant(address: &str, backends: &[Health]) -> TenantInput {
    TenantInput {
        address: address.parse().unwrap(),
        table: Table::Live,
        backends: backends.to_vec(),
    }
}

fn inputs(v4: Health, new_connections: u64) -> Inputs {
    Inputs {
        tenants: vec![tenant(V4, &[v4]), tenant(V6, &[Health::Up])],
        new_connections,
    }
}

#[test]
fn announcer_drives_a_real_bird() {
    let dir = tempfile::tempdir().unwrap();
    let bird = start_bird(dir.path());
    let bgp = BgpConfig {
        control_socket: bird.socket.clone(),
        routes_file: dir.path().join("routes.conf"),
        birdc: None,
        vips: None,
        drain_timeout: None,
    };
    let announcer = Announcer::new();
    let v4_routes = || birdc(&bird.socket, "show route protocol keystone4");
    let v6_routes = || birdc(&bird.socket, "show route protocol keystone6");

    // Both ready: both in BIRD's tables; the BGP session is listed.
    announcer.update(Some(&bgp), inputs(Health::Up, 0));
    assert!(v4_routes().contains("198.18.1.10/32"), "{}", v4_routes());
    assert!(v6_routes().contains("2001:2::10/128"), "{}", v6_routes());
    let status = announcer.status();
    assert!(
        status.last_configure.as_ref().is_some_and(|c| c.ok),
        "{status:?}"
    );
    assert!(
        status
            .vips
            .iter()
            .all(|v| v.announced && v.reason == AnnounceReason::Ready)
    );
    assert!(
        status
            .sessions
            .iter()
            .any(|s| s.name == "uplink" && !s.state.is_empty()),
        "{status:?}"
    );

    // The v4 VIP's health becomes unknown: withdrawn, the v6 one stays.
    announcer.update(Some(&bgp), inputs(Health::Unknown, 0));
    assert!(!v4_routes().contains("198.18.1.10/32"), "{}", v4_routes());
    assert!(v6_routes().contains("2001:2::10/128"));
    let v4 = &announcer.status().vips[0];
    assert_eq!(
        (v4.announced, v4.reason),
        (false, AnnounceReason::HealthUnknown)
    );

    // BIRD's config includes a file that is not there: configure is refused, said in
    // status and counted; BIRD keeps the routes it had.
    let conf = dir.path().join("bird.conf");
    std::fs::write(
        &conf,
        bird_conf(dir.path(), &dir.path().join("missing.conf")),
    )
    .unwrap();
    announcer.update(Some(&bgp), inputs(Health::Up, 0));
    let status = announcer.status();
    let last = status.last_configure.clone().unwrap();
    assert!(!last.ok, "{status:?}");
    assert!(
        last.error.as_deref().unwrap_or("").contains("missing.conf"),
        "{last:?}"
    );
    assert_eq!(announcer.configure_errors().get(), 1);
    assert!(
        !status.vips[0].announced,
        "BIRD did not take the new routes"
    );
    assert!(!v4_routes().contains("198.18.1.10/32"));

    // Fixed: the retry (after its backoff) succeeds.
    std::fs::write(
        &conf,
        bird_conf(dir.path(), &dir.path().join("routes.conf")),
    )
    .unwrap();
    wait_until("the retried configure", || {
        announcer.update(Some(&bgp), inputs(Health::Up, 0));
        announcer.status().last_configure.is_some_and(|c| c.ok)
    });
    assert!(v4_routes().contains("198.18.1.10/32"), "{}", v4_routes());

    // Drain: everything withdrawn at once; drained once new connections stopped.
    announcer.start_drain(Duration::from_secs(15), 7);
    announcer.update(Some(&bgp), inputs(Health::Up, 9));
    assert!(!v4_routes().contains("198.18.1.10/32"));
    assert!(!v6_routes().contains("2001:2::10/128"));
    let status = announcer.status();
    assert_eq!(status.drain, DrainState::Draining);
    assert!(
        status
            .vips
            .iter()
            .all(|v| !v.announced && v.reason == AnnounceReason::Draining)
    );
    wait_until("drained", || {
        announcer.update(Some(&bgp), inputs(Health::Up, 9));
        announcer.status().drain == DrainState::Drained
    });
    announcer.undrain();
    announcer.update(Some(&bgp), inputs(Health::Up, 9));
    assert!(v4_routes().contains("198.18.1.10/32"));

    // Stopping (without --keep-forwarding) withdraws everything.
    announcer.stop();
    announcer.update(Some(&bgp), inputs(Health::Up, 9));
    assert!(!v4_routes().contains("198.18.1.10/32"));
    assert!(!v6_routes().contains("2001:2::10/128"));
}
