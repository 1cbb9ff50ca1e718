//! The leader's agent SIGKILLed → another gateway leads: as the lease expires (the
//! leader key's delete), as the new leader's key is put, and as a survivor's
//! `status.fleet` names it; then the killed gateway is started again and rejoins.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use keystone_lab::etcd::respawn_gateway;

use keystone_lab::fleet_etcd::{Fleet, PREFIX};

use super::{IDS, WAIT, admin, fleet_status, gateway_index, watch::Watch};
use crate::{
    bench::table::{Table, human, median},
    util,
};

/// How often the survivor's status is read while waiting for a new leader.
const POLL: Duration = Duration::from_millis(10);

pub struct Failover {
    killed: String,
    leader: String,
    /// Kill → the old leader's key deleted (its lease expired).
    key_gone: Option<Duration>,
    /// Kill → the new leader's key put.
    key_put: Duration,
    /// Kill → a survivor's status names the new leader.
    status: Duration,
    /// Restart → all three in step again.
    rejoined: Duration,
}

pub fn measure(fleet: &mut Fleet, watch: &Watch, rounds: usize) -> Result<Vec<Failover>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        util::interrupted()?;
        let before = fleet_status(&mut admin(fleet, 0)?)?;
        let Some(leader) = before["leader"].as_str().map(str::to_owned) else {
            bail!("no leader before the kill: {before}");
        };
        let l = gateway_index(&leader)?;
        let mut asked = admin(fleet, (l + 1) % IDS.len())?;
        let gateway = fleet.gateways[l].clone();
        watch.collect(Duration::ZERO);
        let killed = Instant::now();
        fleet.lab.kill(&gateway.process)?;
        let (new, status) = loop {
            let s = fleet_status(&mut asked)?;
            if let Some(now) = s["leader"].as_str().filter(|now| *now != leader) {
                break (now.to_owned(), killed.elapsed());
            }
            if killed.elapsed() > WAIT {
                bail!("no new leader {WAIT:?} after killing {leader}: {s}");
            }
            std::thread::sleep(POLL);
        };
        let key = format!("{PREFIX}/leader");
        let mut key_gone = None;
        let put = watch.until("the new leader's key", WAIT, |e| {
            if e.key != key {
                return None;
            }
            if e.deleted {
                key_gone = Some(e.seen - killed);
                return None;
            }
            (e.value != leader.as_bytes()).then_some(e.seen)
        })?;
        let restarted = Instant::now();
        if l == 0 {
            fleet.lab.start_agent()?;
        } else {
            respawn_gateway(&mut fleet.lab, &gateway)?;
        }
        fleet.wait_in_step("the killed gateway to rejoin");
        out.push(Failover {
            killed: leader,
            leader: new,
            key_gone,
            key_put: put - killed,
            status,
            rejoined: restarted.elapsed(),
        });
    }
    Ok(out)
}

pub fn print(rounds: &[Failover], ttl: Duration) {
    let mut table = Table::new(&[
        "SIGKILL of the leader's agent",
        "new leader",
        "→ its lease expired",
        "→ new leader's key",
        "→ a survivor's status names it",
        "killed gateway back in step",
    ]);
    for r in rounds {
        table.row(&[
            format!("leader {}", r.killed),
            r.leader.clone(),
            r.key_gone.map_or("not seen".into(), human),
            human(r.key_put),
            human(r.status),
            human(r.rejoined),
        ]);
    }
    println!(
        "\nleader failover, {} rounds (lease TTL {}):",
        rounds.len(),
        human(ttl)
    );
    table.print();
    let status: Vec<f64> = rounds.iter().map(|r| r.status.as_secs_f64()).collect();
    if let Some(m) = median(&status) {
        println!(
            "takeover (median, as status shows it) is {:.2}× the lease TTL",
            m / ttl.as_secs_f64()
        );
    }
}
