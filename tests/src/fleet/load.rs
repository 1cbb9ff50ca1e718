//! Load on a fleet while a gateway leaves or joins: long-lived echo connections and
//! new connections without pause, and what happened to both (shared by the fleet
//! tests and `cargo xtask bench fleet`).

use std::net::SocketAddr;

use super::{Announce, Fleet};
use crate::lab::*;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::error::{LabError, Result};
use crate::traffic::{ClientLoop, HoldEvent};

/// The hold process's name.
const HOLD: &str = "fleet-hold";
/// Each held connection sends one request this often.
const HOLD_INTERVAL_MS: u32 = 100;
/// New connections per `ks-client` run of the loop.
const BATCH: u32 = 50;

/// Held echo connections to one VIP, each answering every 100 ms.
pub struct Hold {
    conns: u32,
    /// Hold events before the connections were established: what came before (a slow
    /// start on a busy machine) is not the event's.
    skip: usize,
}

/// Held echo connections and a loop of new connections to one VIP.
pub struct Load {
    hold: Hold,
    new: ClientLoop,
    /// When the load was established.
    since: Instant,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub held: u32,
    /// Held connections with at least one failed request (broken, or wrong bytes):
    /// the first failure of each.
    pub held_broken: Vec<String>,
    /// New connections tried, and failed, in all.
    pub new_attempted: u64,
    pub new_failed: u64,
    /// Failed new connections in the batches that started after the `after` instant
    /// given to [`Load::finish`].
    pub new_failed_after: u64,
    /// Every kind of new-connection failure, counted.
    pub errors: BTreeMap<String, u64>,
}

impl Fleet {
    /// Starts `held` echo connections to `vip` (each every 100 ms, for at most
    /// `max_time`); waits until every one has answered 3 times.
    pub fn start_hold(&mut self, vip: SocketAddr, held: u32, max_time: Duration) -> Result<Hold> {
        let secs = max_time.as_secs().max(1) as u32;
        let base = self.base_mut();
        base.spawn_echo_hold(HOLD, vip, held, secs, HOLD_INTERVAL_MS, 64)?;
        base.held_answers(HOLD, held, 0, 3, Duration::from_secs(30))?;
        Ok(Hold {
            conns: held,
            skip: base.hold_events(HOLD)?.len(),
        })
    }

    /// A [`Fleet::start_hold`] and new connections without pause; waits until 2
    /// batches of new ones finished too.
    pub fn start_load(&mut self, vip: SocketAddr, held: u32, max_time: Duration) -> Result<Load> {
        let hold = self.start_hold(vip, held, max_time)?;
        let new = self.base_mut().client_loop(vip, BATCH, max_time)?;
        new.wait_batches_since(Instant::now(), 2, Duration::from_secs(30))?;
        Ok(Load {
            hold,
            new,
            since: Instant::now(),
        })
    }
}

impl Hold {
    /// Waits until every held connection answered 5 more times (a broken one on a
    /// new connection): the hold crossed whatever just happened.
    pub fn settle(&self, fleet: &Fleet) -> Result<()> {
        let base = fleet.base();
        let seen = base.hold_events(HOLD)?.len();
        base.held_answers(HOLD, self.conns, seen, 5, Duration::from_secs(60))
            .map(drop)
    }

    /// [`Hold::settle`], then stops the hold; each broken connection's first failure.
    pub fn finish(self, fleet: &mut Fleet) -> Result<Vec<String>> {
        self.settle(fleet)?;
        let base = fleet.base_mut();
        let events: Vec<HoldEvent> = base.hold_events(HOLD)?.split_off(self.skip);
        base.stop(HOLD)?;
        // Each broken connection once, by its first failure.
        let mut first_failure = BTreeMap::new();
        for e in HoldEvent::failures(&events) {
            first_failure.entry(e.conn).or_insert_with(|| e.to_line());
        }
        Ok(first_failure.into_values().collect())
    }
}

impl Load {
    /// Waits until the hold settled ([`Hold::settle`]) and 3 more batches of new
    /// connections finished (the load crossed whatever just happened), then stops it
    /// and reports; `after` splits the new connections' failures.
    pub fn finish(self, fleet: &mut Fleet, after: Instant) -> Result<LoadReport> {
        let held = self.hold.conns;
        self.hold.settle(fleet)?;
        self.new
            .wait_batches_since(Instant::now(), 3, Duration::from_secs(60))?;
        let batches: Vec<_> = self
            .new
            .stop()?
            .into_iter()
            .filter(|b| b.started >= self.since)
            .collect();
        let held_broken = self.hold.finish(fleet)?;
        let total = ClientLoop::total(&batches);
        Ok(LoadReport {
            held,
            held_broken,
            new_attempted: total.attempted,
            new_failed: total.failed,
            new_failed_after: batches
                .iter()
                .filter(|b| b.started >= after)
                .map(|b| b.summary.failed)
                .sum(),
            errors: total.errors,
        })
    }
}

impl LoadReport {
    /// One line for logs and the bench.
    pub fn line(&self) -> String {
        format!(
            "held {} (broken {}), new {} (failed {}, {} of them after the router's change){}",
            self.held,
            self.held_broken.len(),
            self.new_attempted,
            self.new_failed,
            self.new_failed_after,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", errors {:?}", self.errors)
            }
        )
    }
}

/// The fleet the tests and the bench run: tenant `web` on [`VIP4`] port 80 over
/// `weights`' backends (HTTP health checks every 200 ms), on every gateway.
pub const FLEET_VIP_PORT: u16 = 80;
/// The backends' port.
pub(super) const BACKEND_PORT: u16 = 8080;
/// How long gateways get to start and announce.
const ANNOUNCE: Duration = Duration::from_secs(60);

impl Fleet {
    /// Gateway `i`'s config of the standard fleet (see [`FLEET_VIP_PORT`]).
    pub fn web_config(&self, i: usize, weights: &[(&str, u32)]) -> Result<String> {
        let vip = SocketAddr::new(VIP4.into(), FLEET_VIP_PORT);
        let tenant = self
            .gateway(i)
            .tenant(
                "web",
                vip,
                crate::Protocol::Tcp,
                Mode::Nat,
                BACKEND_PORT,
                weights,
            )?
            .with_health(crate::HealthCheck::tolerant_http());
        Ok(self.agent_config_text(i, vec![tenant]))
    }

    /// Starts gateway `i`'s agent on [`Fleet::web_config`] (and with
    /// [`Announce::ByHand`], announces the VIP once it is ready).
    pub fn start_web_agent(&mut self, i: usize, weights: &[(&str, u32)]) -> Result<()> {
        let cfg = self.web_config(i, weights)?;
        self.start_agent(i, &cfg, &[])?;
        match self.announce {
            Announce::ByHand => self.gateway(i).announce_by_hand(&[VIP4.into()]),
            Announce::Agent => Ok(()),
        }
    }

    /// Starts `weights`' backends (the fleet's, in that order), waits for the router's
    /// sessions, then starts the agents of gateways `started` on
    /// [`Fleet::web_config`] and waits until the router sends the VIP to exactly those.
    pub fn start_web(&mut self, weights: &[(&str, u32)], started: &[usize]) -> Result<()> {
        self.base_mut().start_backends(BACKEND_PORT)?;
        let all: Vec<usize> = (1..=self.gateways().len()).collect();
        self.wait_sessions(&all, ANNOUNCE)?;
        for &i in started {
            self.start_web_agent(i, weights)?;
        }
        self.wait_announced(started).map(drop)
    }

    /// Waits until the router sends [`VIP4`] to exactly `gateways` and its return
    /// path goes through each of them (returns when it saw the VIP's next hops); first
    /// checks that their agents report announcements at all (`announce` in
    /// `/status`), so an agent without the `bgp:` side fails with that, not with a
    /// timeout.
    pub fn wait_announced(&self, gateways: &[usize]) -> Result<Instant> {
        if self.announce == Announce::Agent {
            for &i in gateways {
                self.announce_status(i)?;
            }
        }
        let announced = self.wait_vip_next_hops(VIP4.into(), gateways, ANNOUNCE)?;
        self.wait_return_path(gateways, ANNOUNCE)?;
        Ok(announced)
    }

    /// Gateway `i`'s `announce` in `GET /status`.
    pub fn announce_status(&self, i: usize) -> Result<serde_json::Value> {
        let status = self.status(i)?;
        status
            .get("announce")
            .cloned()
            .ok_or_else(|| LabError::Command {
                cmd: format!("GET /status on gateway {i}"),
                status: "no `announce` in the answer".into(),
                stderr: format!(
                    "the agent does not announce VIPs (the `bgp:` block of issue 11); it said: {status}"
                ),
            })
    }

    /// Gateway `i`'s `GET /status`, as JSON.
    pub fn status(&self, i: usize) -> Result<serde_json::Value> {
        let (code, body) = self.gateway(i).admin_get("/status")?;
        if code != 200 {
            return Err(LabError::Http {
                what: format!("GET /status on gateway {i}"),
                status: code,
                body,
            });
        }
        serde_json::from_str(&body).map_err(|source| LabError::Parse {
            what: format!("GET /status on gateway {i}"),
            output: body,
            source,
        })
    }
}
