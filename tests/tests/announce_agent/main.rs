//! keystone-agent's process with `bgp:` against a real BIRD 2 run by the test in the
//! lab's gateway namespace (a BGP peer nobody answers: only the routes BIRD holds and
//! would export matter here):
//!
//! * `stop.rs` — SIGTERM withdraws (BIRD reconfigured before the program is
//!   detached), `--keep-forwarding` keeps the routes and the forwarding, SIGKILL keeps
//!   the routes and a restart re-adopts them without withdrawing;
//! * `reload.rs` — a reload that removes `bgp:` withdraws, one that moves it to
//!   another BIRD empties the old routes file and fills the new one;
//! * `drain.rs` — a drain stays through a reload, a SIGTERM and a restart;
//! * `disk.rs` — a routes-file directory that cannot be written (read-only tmpfs).
//!
//! Needs root, Debian's bird2 and a built agent:
//! `cargo xtask build && cargo test --release -p keystone-tests --test announce_agent`.

mod disk;
mod drain;
mod reload;
mod stop;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use keystone_api::{AnnounceReason, AnnounceStatus, ConfigureResult, DrainState, VipAnnounce};
use keystone_lab::{
    HealthCheck, Lab, Mode, Probe,
    cmd::{self, in_ns},
    helpers::{BACKEND_PORT, new_lab, stop_agent_cleanly, tcp, tcp_tenant, vip},
    ok, wait_for,
};

const BIRD_PROGRAM: &str = "/usr/sbin/bird";
const BIRDC_PROGRAM: &str = "/usr/sbin/birdc";
/// Bound on every wait for the agent or BIRD to get somewhere.
const SHORT: Duration = Duration::from_secs(30);

/// The VIP's address, as the routes carry it.
fn vip4() -> IpAddr {
    vip().ip()
}

/// One BIRD in the gateway namespace: its lab process, control socket and the
/// routes file its config includes.
#[derive(Clone)]
struct Bird {
    name: String,
    ns: String,
    socket: PathBuf,
    routes_file: PathBuf,
}

impl Bird {
    /// BIRD `name` with its socket in the lab's state dir and its routes file in `dir`.
    fn new(lab: &Lab, name: &str, dir: &Path) -> Bird {
        Bird {
            name: name.to_owned(),
            ns: lab.gateway_ns().to_owned(),
            socket: lab.state_dir().join(format!("{name}.ctl")),
            routes_file: dir.join(format!("{name}-routes.conf")),
        }
    }

    /// Writes an empty routes file and the config, starts BIRD, waits until it answers.
    fn start(&self, lab: &mut Lab) {
        let conf = lab.state_dir().join(format!("{}.conf", self.name));
        let text = format!(
            "router id 198.18.0.1;\n\
             include \"{}\";\n\
             protocol bgp uplink {{ local as 65001; neighbor 198.18.0.2 as 65000;\n  \
               ipv4 {{ import none; export where proto = \"keystone4\"; }};\n}}\n",
            self.routes_file.display()
        );
        let written = std::fs::write(&self.routes_file, "")
            .and_then(|()| std::fs::write(&conf, text))
            .map_err(|e| format!("writing {}: {e}", conf.display()));
        ok(lab, "writing BIRD's config", written);
        let r = lab.spawn(
            &self.name,
            &self.ns.clone(),
            Path::new(BIRD_PROGRAM),
            &[
                "-f".as_ref(),
                "-c".as_ref(),
                conf.as_os_str(),
                "-s".as_ref(),
                self.socket.as_os_str(),
            ],
        );
        ok(lab, "starting BIRD", r);
        wait(lab, "BIRD to answer on its control socket", || {
            self.birdc("show status")
                .contains("Daemon is up and running")
        });
    }

    /// `birdc -s <socket> <args>`: its output, or the error as text.
    fn birdc(&self, args: &str) -> String {
        let mut c = in_ns(&self.ns, BIRDC_PROGRAM);
        c.arg("-s").arg(&self.socket).args(args.split(' '));
        cmd::run(&mut c).unwrap_or_else(|e| e.to_string())
    }

    /// Whether BIRD holds the agent's route for `address` (`show route protocol keystone4`).
    fn announces(&self, address: IpAddr) -> bool {
        self.birdc("show route protocol keystone4")
            .contains(&format!("{address}/32"))
    }

    /// Whether the routes file lists `address`.
    fn file_lists(&self, address: IpAddr) -> bool {
        std::fs::read_to_string(&self.routes_file)
            .is_ok_and(|t| t.contains(&format!("route {address}/32")))
    }

    /// The agent's `bgp:` block for this BIRD.
    fn bgp_block(&self) -> String {
        format!(
            "bgp:\n  control_socket: \"{}\"\n  routes_file: \"{}\"\n  birdc: {BIRDC_PROGRAM}\n",
            self.socket.display(),
            self.routes_file.display()
        )
    }
}

/// Waits (at most [`SHORT`]) until `done`, failing with the lab's diagnostics.
fn wait(lab: &Lab, what: &str, mut done: impl FnMut() -> bool) {
    let r = wait_for(what, SHORT, || {
        Ok(if done() {
            Probe::Ready(())
        } else {
            Probe::NotYet(String::new())
        })
    });
    ok(lab, what, r);
}

/// Tenant `web` on the VIP over blue and green (1:1, HTTP health checks), with
/// `bgp` (on `bird`) when given.
fn config(lab: &Lab, bird: Option<&Bird>) -> String {
    let web = tcp_tenant(lab, "web", vip(), &[("blue", 1), ("green", 1)])
        .with_health(HealthCheck::fast_http());
    let mut text = lab.agent_config(vec![web]).to_yaml();
    if let Some(bird) = bird {
        text.push_str(&bird.bgp_block());
    }
    text
}

/// A nat lab with blue and green serving and their neighbours known; no agent yet.
fn backends_lab() -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    ok(&lab, "warming neighbours", lab.warm_neighbours());
    lab
}

/// [`backends_lab`] with BIRD `bird` in the gateway namespace, its routes file in
/// the lab's state dir.
fn gateway_lab() -> (Lab, Bird) {
    let mut lab = backends_lab();
    let bird = Bird::new(&lab, "bird", lab.state_dir());
    bird.start(&mut lab);
    (lab, bird)
}

/// [`gateway_lab`] with the agent running (`extra` arguments) and the VIP announced.
fn announcing_gateway(extra: &[&str]) -> (Lab, Bird) {
    let (mut lab, bird) = gateway_lab();
    let r = lab.write_config_text(&config(&lab, Some(&bird)));
    ok(&lab, "writing the config", r);
    let r = lab.start_agent_with(extra);
    ok(&lab, "starting the agent", r);
    wait_announced(&lab, &bird);
    (lab, bird)
}

fn wait_announced(lab: &Lab, bird: &Bird) {
    wait(lab, "BIRD to hold the VIP's route", || {
        bird.announces(vip4())
    });
}

/// `status.announce` of the running agent (None without a `bgp:` block).
fn announce_status(lab: &Lab) -> Option<AnnounceStatus> {
    ok(lab, "GET /status", lab.status()).announce
}

/// The last `birdc configure` of the running agent, if any.
fn last_configure(lab: &Lab) -> Option<ConfigureResult> {
    announce_status(lab).and_then(|a| a.last_configure)
}

/// The first VIP of `status.announce`, if any.
fn first_vip(lab: &Lab) -> Option<VipAnnounce> {
    announce_status(lab).and_then(|a| a.vips.into_iter().next())
}

/// Every one of `n` new connections through the VIP answered by a backend.
fn assert_forwarding(lab: &Lab, what: &str, n: u32) {
    let s = tcp(lab, vip(), n);
    assert!(
        s.failed == 0 && s.answered() == u64::from(n),
        "{what}: new connections through the VIP {s:?}\n{}",
        lab.agent_diagnostics()
    );
}

/// `keystone-ctl <args>`: exit code, stdout and stderr.
fn ctl(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = ok(lab, "running keystone-ctl", lab.ctl(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops the agent with SIGTERM (it must exit 0) and returns its log.
fn stop_agent_for_log(lab: &mut Lab) -> String {
    let log = lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == "agent")
        .map(|p| p.stderr.clone());
    stop_agent_cleanly(lab);
    log.and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
}

/// The agent's log line when BIRD took a routes file without any VIP.
const WITHDRAWN_ALL: &str = "BIRD reconfigured with the VIP routes announced=[]";
