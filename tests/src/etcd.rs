//! The fleet tests' world, inside one lab's gateway namespace: a 3-member etcd
//! cluster on that namespace's loopback (data in the lab's state dir) and extra
//! gateways (agents on veth pairs of their own, admin API on their own port) beside
//! the lab's agent, which carries the real traffic. The lab starts them all as its
//! processes, so dropping it stops them, also when a test fails.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use keystone_api::{FleetStatus, Status};

use crate::{
    ADMIN_LISTEN, ADMIN_TOKEN,
    agent::{Auth, answer_as},
    error::{LabError, Result, io_err},
    lab::Lab,
    wait::{Probe, wait_for},
};

/// Members of the test cluster.
pub const ETCD_MEMBERS: usize = 3;
/// How long a restarted cluster gets to elect a leader and answer.
const ETCD_READY: Duration = Duration::from_secs(30);
/// How long an extra gateway gets to load XDP and answer `/health`.
const GATEWAY_READY: Duration = Duration::from_secs(60);

/// A 3-member etcd cluster started in `lab`'s gateway namespace.
pub struct Etcd {
    data: PathBuf,
}

/// Where Debian's etcd-server and etcd-client packages (installed by `cargo xtask
/// setup`) put `name`.
fn debian_program(name: &str) -> PathBuf {
    PathBuf::from("/usr/bin").join(name)
}

fn client_port(i: usize) -> u16 {
    2379 + 10_000 * i as u16
}

fn peer_port(i: usize) -> u16 {
    2380 + 10_000 * i as u16
}

fn member(i: usize) -> String {
    format!("etcd{i}")
}

impl Etcd {
    /// Starts the cluster and waits until every member answers.
    pub fn start(lab: &mut Lab) -> Result<Etcd> {
        let etcd = Etcd {
            data: lab.state_dir().join("etcd"),
        };
        fs::create_dir_all(&etcd.data).map_err(io_err("creating the etcd data dir"))?;
        for i in 0..ETCD_MEMBERS {
            etcd.spawn_member(lab, i, "new")?;
        }
        etcd.wait_healthy(lab)?;
        Ok(etcd)
    }

    fn spawn_member(&self, lab: &mut Lab, i: usize, state: &str) -> Result<u32> {
        let cluster: Vec<String> = (0..ETCD_MEMBERS)
            .map(|j| format!("{}=http://127.0.0.1:{}", member(j), peer_port(j)))
            .collect();
        let client = format!("http://127.0.0.1:{}", client_port(i));
        // Each gateway reaches etcd through a loopback address of its own (127.0.0.2
        // to .4, see `endpoints`); the peers and etcdctl use 127.0.0.1.
        let listen: Vec<String> = (1..=4)
            .map(|host| format!("http://127.0.0.{host}:{}", client_port(i)))
            .collect();
        let peer = format!("http://127.0.0.1:{}", peer_port(i));
        let dir = self.data.join(member(i));
        let ns = lab.gateway_ns().to_owned();
        let token = format!("{}-etcd", lab.name());
        lab.spawn(
            &member(i),
            &ns,
            &debian_program("etcd"),
            &[
                "--name",
                &member(i),
                "--data-dir",
                &dir.to_string_lossy(),
                "--listen-client-urls",
                &listen.join(","),
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                state,
            ],
        )
    }

    /// The client URLs through `host` (127.0.0.1 to .4), for `fleet.endpoints`.
    pub fn endpoints(&self, host: &str) -> Vec<String> {
        (0..ETCD_MEMBERS)
            .map(|i| format!("http://{host}:{}", client_port(i)))
            .collect()
    }

    /// `etcdctl --endpoints … <args>` in the namespace; returns stdout.
    pub fn ctl(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let endpoints = format!("--endpoints={}", self.endpoints("127.0.0.1").join(","));
        let mut all = vec![endpoints.as_str()];
        all.extend_from_slice(args);
        lab.exec(lab.gateway_ns(), debian_program("etcdctl"), &all)
    }

    /// Polls `etcdctl endpoint health` until every member is healthy.
    pub fn wait_healthy(&self, lab: &Lab) -> Result<()> {
        wait_for("every etcd member to be healthy", ETCD_READY, || {
            Ok(match self.ctl(lab, &["endpoint", "health"]) {
                Ok(_) => Probe::Ready(()),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })
    }

    /// Stops every member (SIGTERM), keeping their data.
    pub fn stop(&self, lab: &mut Lab) -> Result<()> {
        for i in 0..ETCD_MEMBERS {
            lab.stop(&member(i))?;
        }
        Ok(())
    }

    /// Starts the stopped members again on their data and waits until they answer.
    pub fn restart(&self, lab: &mut Lab) -> Result<()> {
        for i in 0..ETCD_MEMBERS {
            self.spawn_member(lab, i, "existing")?;
        }
        self.wait_healthy(lab)
    }
}

/// One gateway of the fleet: its id, lab process name and admin address.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub id: String,
    pub process: String,
    pub admin: String,
}

impl Gateway {
    /// The lab's own agent (its admin API at [`ADMIN_LISTEN`]).
    pub fn lab_agent(id: &str) -> Gateway {
        Gateway {
            id: id.to_owned(),
            process: crate::agent::AGENT.to_owned(),
            admin: ADMIN_LISTEN.to_owned(),
        }
    }

    /// `method <path>` on this gateway's admin API with the lab's token.
    pub fn send(
        &self,
        lab: &Lab,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        lab.admin_send_to(&self.admin, method, path, Auth::Token, &[], body)
    }

    /// `GET /status`.
    pub fn status(&self, lab: &Lab) -> Result<Status> {
        let (code, body) = self.send(lab, "GET", "/status", None)?;
        answer_as(&format!("GET /status on {}", self.id), code, &body)
    }

    /// `status.fleet`; an error if the status has none (the gateway is in no fleet).
    pub fn fleet(&self, lab: &Lab) -> Result<FleetStatus> {
        self.status(lab)?.fleet.ok_or_else(|| LabError::Command {
            cmd: format!("GET /status on {}", self.id),
            status: "no `fleet` in the answer".into(),
            stderr: "the gateway's config has no `fleet:` block".into(),
        })
    }

    /// Starts `keystone-ctl --api <this gateway> <args>` as the lab process `name`.
    pub fn spawn_ctl(&self, lab: &mut Lab, name: &str, args: &[&str]) -> Result<u32> {
        let ctl = lab.bins().ctl.clone();
        let ns = lab.gateway_ns().to_owned();
        let mut all = vec![
            "--api".to_owned(),
            format!("http://{}", self.admin),
            "--token".to_owned(),
            ADMIN_TOKEN.to_owned(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        lab.spawn(name, &ns, &ctl, &all)
    }
}

/// The `fleet:` block for gateway `id` reaching `etcd` through `host`, under `prefix`.
pub fn fleet_block(etcd: &Etcd, host: &str, prefix: &str, id: &str, lease_ttl: &str) -> String {
    let endpoints: Vec<String> = etcd
        .endpoints(host)
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    format!(
        "fleet:\n  endpoints: [{}]\n  prefix: \"{prefix}\"\n  gateway_id: \"{id}\"\n  lease_ttl: {lease_ttl}\n",
        endpoints.join(", ")
    )
}

/// Starts an extra gateway `id` in the lab's gateway namespace: a veth pair of its
/// own (`ks-<id>`) to attach to, its own pin and state directories, `config` (whose
/// `interfaces:` and `admin.listen` it must name), and waits for `/health`.
pub fn start_gateway(lab: &mut Lab, id: &str, admin: &str, config: &str) -> Result<Gateway> {
    let gateway = Gateway {
        id: id.to_owned(),
        process: format!("agent-{id}"),
        admin: admin.to_owned(),
    };
    let ns = lab.gateway_ns().to_owned();
    let link = gateway_interface(id);
    if lab.exec(&ns, "ip", &["link", "show", &link]).is_err() {
        let peer = format!("{link}p");
        lab.exec(
            &ns,
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
        )?;
        lab.exec(&ns, "ip", &["link", "set", &link, "up"])?;
        lab.exec(&ns, "ip", &["link", "set", &peer, "up"])?;
    }
    let dir = lab.state_dir().join(&gateway.process);
    let config_path = dir.join("keystone.yaml");
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    fs::write(&config_path, config)
        .map_err(io_err(format!("writing {}", config_path.display())))?;
    respawn_gateway(lab, &gateway)?;
    Ok(gateway)
}

/// The interface an extra gateway attaches to.
pub fn gateway_interface(id: &str) -> String {
    format!("ks-{id}")
}

/// Starts (again) the agent of an extra gateway set up by [`start_gateway`] and
/// waits for `/health`.
pub fn respawn_gateway(lab: &mut Lab, gateway: &Gateway) -> Result<()> {
    let dir = lab.state_dir().join(&gateway.process);
    let pins = lab.pin_dir().join(&gateway.id);
    let config = dir.join("keystone.yaml");
    let state = dir.join("state");
    let agent = lab.bins().agent.clone();
    let ns = lab.gateway_ns().to_owned();
    lab.spawn(
        &gateway.process,
        &ns,
        &agent,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--pin-dir".as_ref(),
            pins.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ],
    )?;
    wait_for(
        &format!("gateway {} to answer GET /health", gateway.id),
        GATEWAY_READY,
        || {
            lab.ensure_running(&gateway.process)?;
            Ok(match gateway.send(lab, "GET", "/health", None) {
                Ok((200, _)) => Probe::Ready(()),
                Ok((code, body)) => Probe::NotYet(format!("HTTP {code}: {body}")),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        },
    )
}

/// Polls every gateway's `status.fleet` until `done` holds for all; returns the
/// statuses (in `gateways` order) and how long it took.
pub fn wait_fleet(
    lab: &Lab,
    gateways: &[&Gateway],
    what: &str,
    timeout: Duration,
    done: impl Fn(&[FleetStatus]) -> bool,
) -> Result<(Vec<FleetStatus>, Duration)> {
    let start = Instant::now();
    let statuses = wait_for(what, timeout, || {
        let statuses: Vec<FleetStatus> = gateways
            .iter()
            .map(|g| g.fleet(lab))
            .collect::<Result<_>>()?;
        Ok(if done(&statuses) {
            Probe::Ready(statuses)
        } else {
            Probe::NotYet(serde_json::to_string(&statuses).unwrap_or_default())
        })
    })?;
    Ok((statuses, start.elapsed()))
}
