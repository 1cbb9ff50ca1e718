//! A fleet lab through etcd, shared by the fleet test files (`fleet_etcd.rs`,
//! `fleet_rollouts.rs`): a 3-member etcd cluster (see [`crate::etcd`]), backends, and
//! gateways `a`, `b`, `c`: the lab's agent (`a`, on the lab's links, carrying the
//! client traffic) and extra agents in the same gateway namespace, each on a veth
//! pair of its own, all in one fleet under [`PREFIX`]. Every gateway reaches etcd
//! through its own loopback address (127.0.0.2, .3, .4), so one gateway can be cut
//! off from etcd with an nft rule in the lab's namespace.
//!
//! Every wait polls with a deadline; the lab (etcd, agents) is removed on drop, also
//! when a test fails.

use std::{net::SocketAddr, time::Duration};

use keystone_api::{DeployState, FleetStatus};

use crate::{
    AgentConfig, Bins, CanaryConfig, Deployment, HealthCheck, Lab,
    agent::{body_as, ok},
    etcd::{
        Etcd, Gateway, fleet_block, gateway_interface, respawn_gateway, start_gateway, wait_fleet,
    },
    helpers::{BACKEND_PORT, new_lab, tcp, tcp_tenant, v4},
    wait::{Probe, wait_for},
};

pub use crate::agent::deployment_id;

/// The fleet's key prefix in etcd.
pub const PREFIX: &str = "/keystone/lab-fleet";
/// Lease TTL of every gateway (short: failovers within seconds).
pub const TTL_SECS: u64 = 3;
/// How long a fleet gets to form or come back in step.
pub const LONG: Duration = Duration::from_secs(90);

/// A fleet lab: etcd, the lab's backends and gateways (the first the lab's own
/// agent), all in one fleet and in step.
pub struct Fleet {
    pub lab: Lab,
    pub etcd: Etcd,
    pub gateways: Vec<Gateway>,
}

/// The admin address of the `i`-th gateway (the first is the lab's).
pub fn admin(i: usize) -> String {
    format!("127.0.0.1:{}", 9100 + i)
}

/// The loopback address gateway `i` reaches etcd through.
pub fn etcd_host(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// Tenant web: blue (1.0.0, all traffic) and green (1.1.0), fast HTTP health checks
/// and a 10 + 30 % canary stepping every `interval`.
pub fn web_config(lab: &Lab, interval: &str) -> AgentConfig {
    let tenant = tcp_tenant(lab, "web", v4(80), &[("blue", 100), ("green", 0)])
        .with_health(HealthCheck::fast_http())
        .with_canary(CanaryConfig::ten_plus_thirty(interval));
    lab.agent_config(vec![tenant])
}

/// How long a gateway cut off from etcd gets to say it is stale.
const STALE_WITHIN: Duration = Duration::from_secs(30);

/// An nft table in the lab's namespace that drops gateway `i`'s traffic to and from
/// etcd (its own loopback address).
pub fn cut_off(lab: &Lab, i: usize) {
    let host = etcd_host(i);
    let ns = lab.gateway_ns();
    let chain = "{ type filter hook output priority 0 ; }";
    for args in [
        vec!["add", "table", "inet", CUT],
        vec!["add", "chain", "inet", CUT, "out", chain],
        vec![
            "add", "rule", "inet", CUT, "out", "ip", "daddr", &host, "drop",
        ],
        vec![
            "add", "rule", "inet", CUT, "out", "ip", "saddr", &host, "drop",
        ],
    ] {
        ok(
            lab,
            "cutting a gateway off etcd",
            lab.exec(ns, "nft", &args),
        );
    }
}

/// The nft table of [`cut_off`].
pub const CUT: &str = "ks_fleet_cut";

/// Removes the nft table of [`cut_off`]: the gateway reaches etcd again.
pub fn reconnect(lab: &Lab) {
    let r = lab.exec(lab.gateway_ns(), "nft", &["delete", "table", "inet", CUT]);
    ok(lab, "reconnecting", r);
}

/// Waits until gateway `g`'s `status.fleet` says stale; returns the reason.
pub fn wait_stale(lab: &Lab, g: &Gateway) -> String {
    let r = wait_for(&format!("{} to report stale", g.id), STALE_WITHIN, || {
        let fleet = g.fleet(lab)?;
        Ok(match &fleet.stale_reason {
            Some(reason) if fleet.stale => Probe::Ready(reason.clone()),
            _ => Probe::NotYet(format!("{fleet:?}")),
        })
    });
    ok(lab, "stale", r)
}

impl Fleet {
    /// Gateways `ids` running [`web_config`] over backends blue and green.
    pub fn start(ids: &[&str], interval: &str) -> Fleet {
        Fleet::start_with(&["blue", "green"], ids, |lab| web_config(lab, interval), "")
    }

    /// Gateways `ids` over `backends`, each running `base(lab)` (its interface and
    /// admin address replaced for the extra gateways) followed by `extra` YAML.
    pub fn start_with(
        backends: &[&str],
        ids: &[&str],
        base: impl FnOnce(&Lab) -> AgentConfig,
        extra: &str,
    ) -> Fleet {
        // The lab tools Cargo built for the calling test sit beside it in the target dir.
        let bins = Bins::beside_current_exe().unwrap_or_else(|e| panic!("the lab's binaries: {e}"));
        let mut lab = new_lab(bins, crate::Mode::Nat, backends);
        let etcd = Etcd::start(&mut lab);
        let etcd = ok(&lab, "starting etcd", etcd);
        let r = lab.start_backends(BACKEND_PORT);
        ok(&lab, "starting the backends", r);
        ok(&lab, "warming neighbours", lab.warm_neighbours());
        let base = base(&lab);
        let ttl = format!("{TTL_SECS}s");
        let mut gateways = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let block = fleet_block(&etcd, &etcd_host(i), PREFIX, id, &ttl);
            if i == 0 {
                let text = base.to_yaml() + extra + &block;
                ok(&lab, "writing a's config", lab.write_config_text(&text));
                let r = lab.start_agent();
                ok(&lab, "starting gateway a", r);
                gateways.push(Gateway::lab_agent(id));
            } else {
                let cfg = AgentConfig {
                    interfaces: vec![gateway_interface(id)],
                    admin_listen: admin(i),
                    ..base.clone()
                };
                let text = cfg.to_yaml() + extra + &block;
                let g = start_gateway(&mut lab, id, &admin(i), &text);
                gateways.push(ok(&lab, &format!("starting gateway {id}"), g));
            }
        }
        let fleet = Fleet {
            lab,
            etcd,
            gateways,
        };
        fleet.wait_in_step("the fleet to form");
        fleet
    }

    pub fn gateway(&self, id: &str) -> &Gateway {
        self.gateways
            .iter()
            .find(|g| g.id == id)
            .unwrap_or_else(|| panic!("no gateway {id}"))
    }

    pub fn all(&self) -> Vec<&Gateway> {
        self.gateways.iter().collect()
    }

    /// Starts gateway `id`'s agent again (after it was stopped or killed) on its
    /// config, pins and state, and waits for `/health`.
    pub fn restart(&mut self, id: &str) {
        let g = self.gateway(id).clone();
        let r = if g.process == crate::agent::AGENT {
            self.lab.start_agent()
        } else {
            respawn_gateway(&mut self.lab, &g)
        };
        ok(&self.lab, &format!("starting gateway {id} again"), r);
    }

    /// `method path` with `body` on gateway `id`: (status, body).
    pub fn send(&self, id: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let r = self.gateway(id).send(&self.lab, method, path, body);
        ok(&self.lab, &format!("{method} {path} on {id}"), r)
    }

    /// `send`, sent again while gateway `id` answers 503 because it is between two
    /// sessions with etcd (a write is refused until its watch is back; a user's CI
    /// retries the same way). Any other answer is returned.
    pub fn send_when_in_step(
        &self,
        id: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let g = self.gateway(id);
        let r = wait_for(
            &format!("{method} {path} on {id} while in step"),
            LONG,
            || {
                let (code, answer) = g.send(&self.lab, method, path, body)?;
                Ok(
                    if code == 503 && answer.contains("not in step with the fleet") {
                        Probe::NotYet(answer)
                    } else {
                        Probe::Ready((code, answer))
                    },
                )
            },
        );
        ok(&self.lab, &format!("{method} {path} on {id}"), r)
    }

    /// Waits until every gateway sees all of them as members, one leader, nobody
    /// stale, and every member confirmed the same revision; returns the statuses.
    pub fn wait_in_step(&self, what: &str) -> Vec<FleetStatus> {
        let n = self.gateways.len();
        let r = wait_fleet(&self.lab, &self.all(), what, LONG, |s| in_step(s, n));
        ok(&self.lab, what, r).0
    }

    /// Every member record as every gateway sees it (`statuses`) has one and the same
    /// non-empty table hash for `tenant`; returns it.
    pub fn one_hash(&self, statuses: &[FleetStatus], tenant: &str, what: &str) -> String {
        let hashes: Vec<String> = statuses
            .iter()
            .flat_map(|s| tenant_hashes(s, tenant))
            .collect();
        assert!(
            hashes.len() == self.gateways.len().pow(2)
                && hashes.iter().all(|h| !h.is_empty() && *h == hashes[0]),
            "{what}: {tenant}'s table hashes differ: {hashes:?}\n{}",
            self.diagnostics()
        );
        hashes[0].clone()
    }

    /// Follows web's deployment `id` to its end: after every step every gateway has
    /// confirmed it with one table hash, and the split of `n` new connections to
    /// `vip` through gateway a between blue and green matches the step within
    /// `check_split`'s 4σ for `n` (when the step did not move during the measurement). Panics when the
    /// deployment ends other than completed; returns the steps measured.
    pub fn follow_steps(&mut self, id: &str, vip: SocketAddr, n: u32) -> Vec<f64> {
        let mut measured = Vec::new();
        loop {
            let statuses = self.wait_in_step("every gateway to confirm the step");
            let d = self.deployment("a", id);
            let percent = d.canary_percent;
            self.one_hash(&statuses, "web", &format!("at {percent} %"));
            if measured.last() != Some(&percent) {
                let s = tcp(&self.lab, vip, n);
                if self.deployment("a", id).canary_percent == percent {
                    let weights = [("blue", 100 - percent as u32), ("green", percent as u32)];
                    if let Err(table) = s.check_split(&weights) {
                        panic!(
                            "step {percent} % through a: {table}\n{}",
                            self.diagnostics()
                        );
                    }
                    measured.push(percent);
                }
            }
            if d.state == DeployState::Completed {
                return measured;
            }
            assert!(d.is_running(), "{}\n{}", d.summary(), self.diagnostics());
            let r = self.lab.wait_deployment(id, "the next step", LONG, |next| {
                next.canary_percent != percent || !next.is_running()
            });
            ok(&self.lab, "the deployment's next step", r);
        }
    }

    /// Waits until gateway `asked` sees a leader other than `old`; returns it.
    pub fn wait_new_leader(&self, asked: &str, old: &str) -> String {
        let r = wait_for("another gateway to lead", LONG, || {
            let fleet = self.gateway(asked).fleet(&self.lab)?;
            let now = fleet.leader.clone().unwrap_or_default();
            Ok(if !now.is_empty() && now != old {
                Probe::Ready(now)
            } else {
                Probe::NotYet(format!("{fleet:?}"))
            })
        });
        ok(&self.lab, "failover", r)
    }

    /// The lab's diagnostics and every gateway's `status.fleet`.
    pub fn diagnostics(&self) -> String {
        let mut s = self.lab.test_diagnostics();
        for g in &self.gateways {
            s.push_str(&format!(
                "--- status.fleet of {}:\n{}\n",
                g.id,
                match g.fleet(&self.lab) {
                    Ok(fleet) => format!("{fleet:?}"),
                    Err(e) => e.to_string(),
                }
            ));
        }
        s
    }

    /// `POST /deployments/canary` for web 1.1.0 on gateway `id`: (status, body).
    pub fn start_canary(&self, id: &str) -> (u16, String) {
        let r = self.gateway(id).send(
            &self.lab,
            "POST",
            "/deployments/canary",
            Some(r#"{"service":"web","version":"1.1.0"}"#),
        );
        ok(&self.lab, "POST /deployments/canary", r)
    }

    /// `POST /tenants/web/weights` blue 50, green 50 on `g`: (status, body).
    pub fn set_weights(&self, g: &Gateway) -> (u16, String) {
        let body = r#"{"weights":{"blue":50,"green":50}}"#;
        let r = g.send(&self.lab, "POST", "/tenants/web/weights", Some(body));
        ok(
            &self.lab,
            &format!("POST /tenants/web/weights on {}", g.id),
            r,
        )
    }

    /// `GET /deployments/<deployment>` on gateway `id`, which must answer 200.
    pub fn deployment(&self, id: &str, deployment: &str) -> Deployment {
        let (code, body) = ok(
            &self.lab,
            "GET /deployments/{id}",
            self.gateway(id).send(
                &self.lab,
                "GET",
                &format!("/deployments/{deployment}"),
                None,
            ),
        );
        assert_eq!(
            code,
            200,
            "GET /deployments/{deployment} on {id}: {body}\n{}",
            self.diagnostics()
        );
        body_as("a deployment", &body).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Every status lists `n` members with one leader, none is stale, and every member
/// confirmed the revision every gateway knows.
pub fn in_step(statuses: &[FleetStatus], n: usize) -> bool {
    let revision = statuses[0].revision;
    statuses.iter().all(|s| {
        !s.stale
            && s.leader.is_some()
            && s.leader == statuses[0].leader
            && s.revision == revision
            && s.members.len() == n
            && s.members.iter().all(|m| m.applied_revision == revision)
    })
}

/// The table hash of `tenant` in every member record of one gateway's
/// `status.fleet` (one per member; empty where a member has none).
pub fn tenant_hashes(status: &FleetStatus, tenant: &str) -> Vec<String> {
    status
        .members
        .iter()
        .map(|m| m.table_hashes.get(tenant).cloned().unwrap_or_default())
        .collect()
}
