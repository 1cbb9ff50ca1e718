//! The admin port under a connection flood, in the namespace lab. Run with
//! `cargo xtask test -- admin_port`.
//!
//! The agent runs with the open-files limit a systemd unit gives it by default (soft
//! 1,024; the hard limit here is 2,048, below what the attack needs). 1,100 idle TCP
//! connections and 2,000 slowloris ones (a request's headers, one line a second,
//! reconnecting when closed) hit the admin port for 25 s while a client opens new
//! connections through the VIP without pause and health checks run every 200 ms.
//! No connection through the VIP may fail, no backend may go down, and afterwards the
//! admin API answers again.

use std::{
    fs::File,
    io::Write,
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use keystone_api::{HealthState, Status};
use keystone_lab::{
    ADMIN_LISTEN, ClientLoop, HealthCheck, Lab, Mode, Probe,
    agent::{AGENT, body_as},
    helpers::{BACKEND_PORT, new_lab, tcp_tenant, vip},
    ok, wait_for,
};

const IDLE: usize = 1_100;
const SLOW: usize = 2_000;
/// How long the flood lasts: longer than the agent's 10 s header timeout, so idle
/// connections are closed and slowloris ones come back during it.
const FLOOD: Duration = Duration::from_secs(25);
/// The agent's open-files limit: systemd's default soft limit, a low hard one.
const AGENT_NOFILE: &str = "--nofile=1024:2048";
const SHORT: Duration = Duration::from_secs(30);

/// The flood needs more descriptors than a test runner may start with.
fn raise_own_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let needed = (IDLE + SLOW + 1_000) as u64;
    assert!(
        hard >= needed,
        "the flood needs {needed} descriptors; the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising the open-files limit");
}

fn enter_namespace(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening the namespace {ns}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering the namespace {ns}: {e}"));
}

fn connect(admin: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()
}

/// A slowloris connection: a request line and a first header, never finished.
fn slow_connect(admin: SocketAddr) -> Option<TcpStream> {
    let mut s = connect(admin)?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: keystone\r\n")
        .ok()?;
    Some(s)
}

/// From inside `ns` until `until`: `IDLE` connections opened once and held, `SLOW`
/// slowloris ones fed a header line every second and re-opened when closed (every
/// step checks the deadline: an agent that stops accepting cannot stretch the flood).
/// Returns how many times a slowloris connection had to be re-opened.
fn flood(ns: &str, until: Instant) -> u64 {
    enter_namespace(ns);
    let admin: SocketAddr = ADMIN_LISTEN.parse().expect("admin address");
    let going = || Instant::now() < until;
    let _idle: Vec<TcpStream> = (0..IDLE)
        .take_while(|_| going())
        .filter_map(|_| connect(admin))
        .collect();
    let mut slow: Vec<Option<TcpStream>> = (0..SLOW)
        .take_while(|_| going())
        .map(|_| slow_connect(admin))
        .collect();
    let mut reopened = 0;
    while going() {
        let round = Instant::now();
        for s in slow.iter_mut().take_while(|_| going()) {
            let alive = s
                .as_mut()
                .is_some_and(|s| s.write_all(b"X-Slow: 1\r\n").is_ok());
            if !alive {
                *s = slow_connect(admin);
                reopened += 1;
            }
        }
        // One header line per connection and second, as slowloris does.
        let pause = Duration::from_secs(1).saturating_sub(round.elapsed());
        thread::sleep(pause.min(until.saturating_duration_since(Instant::now())));
    }
    reopened
}

/// The value of the agent's metric `name` (no labels), 0 when absent.
fn metric(lab: &Lab, name: &str) -> f64 {
    let (_, body) = ok(lab, "GET /metrics", lab.admin_get("/metrics"));
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn idle_and_slowloris_admin_connections_do_not_take_the_vips_down() {
    raise_own_open_files_limit();
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let vip = vip();
    // The client loop opens ~30,000 connections during the flood on a quiet machine;
    // their TIME_WAITs would use up the client's default 28,000 ephemeral ports
    // (AddrNotAvailable at the client, nothing to do with the agent).
    let widened = keystone_lab::cmd::run(
        keystone_lab::cmd::in_ns(lab.client_ns(), "sysctl")
            .args(["-qw", "net.ipv4.ip_local_port_range=1024 65535"]),
    );
    ok(&lab, "widening the client's ephemeral ports", widened);
    let tenant = tcp_tenant(&lab, "web", vip, &[("blue", 1), ("green", 1)])
        .with_health(HealthCheck::fast_http());
    let cfg = lab.agent_config(vec![tenant]);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    ok(&lab, "neighbours", lab.warm_neighbours());
    ok(&lab, "config", lab.write_config(&cfg));
    let r = lab.start_agent_wrapped(&["/usr/bin/prlimit", AGENT_NOFILE], &[]);
    ok(&lab, "starting keystone-agent under prlimit", r);

    let traffic = ok(
        &lab,
        "client loop",
        lab.client_loop(vip, 50, Duration::from_secs(180)),
    );
    ok(
        &lab,
        "traffic",
        traffic.wait_batches_since(Instant::now(), 2, SHORT),
    );

    let flood_started = Instant::now();
    let gateway_ns = lab.gateway_ns().to_owned();
    // The client loop keeps connecting through the VIP meanwhile.
    let reopened = thread::spawn(move || flood(&gateway_ns, flood_started + FLOOD))
        .join()
        .expect("flood thread panicked");
    let batches = ok(&lab, "traffic", traffic.stop());
    let during: Vec<_> = batches
        .iter()
        .filter(|b| b.started >= flood_started)
        .collect();
    let total = ClientLoop::total(&batches);
    assert!(
        total.failed == 0 && during.len() >= 2 && total.by_backend.len() == 2,
        "connections through the VIP failed during the admin-port flood ({} batches during it, \
         {reopened} slowloris reconnects): {total:?}\n{}",
        during.len(),
        lab.agent_diagnostics()
    );

    let log = lab.stderr_of(AGENT).unwrap_or_default();
    let downs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backend health changed") && l.contains("Down"))
        .collect();
    assert!(downs.is_empty(), "a backend went down: {downs:#?}");

    // Afterwards the API answers again, and shows what happened.
    let status = wait_for("GET /status to answer after the flood", SHORT, || {
        Ok(match lab.admin_get("/status") {
            Ok((200, body)) => Probe::Ready(body),
            other => Probe::NotYet(format!("{other:?}")),
        })
    });
    let status = ok(&lab, "GET /status", status);
    let status: Status = body_as("GET /status", &status).expect("status JSON");
    for b in &status.tenants.first().expect("backends").backends {
        let b = &b.backend.identity;
        assert_eq!(b.health, HealthState::Up, "{b:?}");
        assert_eq!(b.health_local_error, None, "{b:?}");
    }
    // At the limit a new connection closes the one idle the longest (all of the
    // flood's are idle: none has sent a whole request) or, were all busy, is refused.
    let at_limit = metric(&lab, "keystone_admin_connections_evicted_total")
        + metric(&lab, "keystone_admin_connections_refused_total");
    assert!(
        at_limit > 0.0,
        "the flood reached the admin connection limit"
    );

    // The agent raised its soft limit to the hard one (and still had to cap the flood).
    let pid = lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == AGENT)
        .expect("agent")
        .pid;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["2048", "2048"],
        "soft open-files limit raised to the hard one: {open_files}"
    );
}
