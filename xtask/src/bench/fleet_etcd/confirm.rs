//! A weight change accepted on one gateway → every gateway's confirmation, and etcd's
//! own put → watch event beside it: one bare put and one change in turn, so both see
//! the same load.

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use keystone_lab::fleet_etcd::{Fleet, PREFIX};

use super::{
    BASELINE_KEY, IDS, WAIT, WEIGHTS_TENANT, admin, confirmation, etcd_http, gateway_index,
    member_of,
    watch::{Watch, put_body},
};
use crate::{
    bench::{
        live::Admin,
        table::{Table, human, quantile, ratio},
    },
    util,
};

/// One weight change's instants.
pub struct Change {
    /// The gateway it was sent to.
    writer: usize,
    sent: Instant,
    /// Its HTTP 200.
    answered: Instant,
    /// The state put, as the watch saw it.
    committed: Instant,
    /// Each gateway's confirming member record, as the watch saw it (`IDS` order).
    confirmed: [Instant; 3],
    /// Every gateway confirmed with the same table hash.
    same_hash: bool,
}

/// The changes, the baseline's put → event delays, and the local save's floor.
pub struct Changes {
    changes: Vec<Change>,
    baseline: Vec<Duration>,
    saves: Vec<Duration>,
}

/// Weights of change `k`: blue 20 … 80 % in turn (each differs from the one before).
fn weights(k: usize) -> String {
    let blue = 20 + (k % 7) * 10;
    format!(r#"{{"weights":{{"blue":{blue},"green":{}}}}}"#, 100 - blue)
}

pub fn measure(fleet: &Fleet, watch: &Watch, n: usize) -> Result<Changes> {
    // The baseline puts go to another member than the one the watch reads from.
    let mut etcd = etcd_http(fleet, 1)?;
    let mut admins = (0..IDS.len())
        .map(|i| admin(fleet, i))
        .collect::<Result<Vec<_>>>()?;
    let path = format!("/tenants/{WEIGHTS_TENANT}/weights");
    let mut out = Changes {
        changes: Vec::new(),
        baseline: Vec::new(),
        saves: Vec::new(),
    };
    let probe = fleet.lab.state_dir().join("save-probe.json");
    wait_live(watch, &mut etcd)?;
    for k in 1..=n {
        util::interrupted()?;
        out.baseline
            .push(bare_put(watch, &mut etcd, &k.to_string(), WAIT)?);
        out.saves.push(local_save(&probe)?);

        let writer = k % IDS.len();
        let sent = Instant::now();
        admins[writer].ok("POST", &path, Some(&weights(k)))?;
        let answered = Instant::now();
        out.changes
            .push(confirmations(watch, writer, sent, answered)?);
    }
    Ok(out)
}

/// Puts `value` at the baseline key; how long until the watch saw it.
fn bare_put(watch: &Watch, etcd: &mut Admin, value: &str, timeout: Duration) -> Result<Duration> {
    let sent = Instant::now();
    etcd.ok("POST", "/v3/kv/put", Some(&put_body(BASELINE_KEY, value)))?;
    let seen = watch.until("the baseline put", timeout, |e| {
        (e.key == BASELINE_KEY && e.value == value.as_bytes()).then_some(e.seen)
    })?;
    Ok(seen - sent)
}

/// How long the agent's atomic save of its local state copy takes on the disk of
/// the gateways' state dirs: the same calls as `keystone_agent::store`'s
/// `write_atomically` (write, fsync, rename, fsync the directory), which every
/// gateway runs before it confirms a revision.
fn local_save(path: &Path) -> Result<Duration> {
    let bytes = vec![b' '; SAVED_BYTES];
    let started = Instant::now();
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(path.parent().context("a state dir")?)?.sync_all()?;
    Ok(started.elapsed())
}

/// About the size of a gateway's `state.json` in this bench.
const SAVED_BYTES: usize = 2048;

/// Puts until the watch sees one: etcdctl's watch starts at the revision it is
/// created at, so a put before that is never seen.
fn wait_live(watch: &Watch, etcd: &mut Admin) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        match bare_put(
            watch,
            etcd,
            &format!("live {attempt}"),
            Duration::from_secs(1),
        ) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("the watch never started")),
            Err(_) => {}
        }
    }
    unreachable!("the loop returns")
}

/// Reads the watch from the change's state put to the last gateway's confirmation.
fn confirmations(watch: &Watch, writer: usize, sent: Instant, answered: Instant) -> Result<Change> {
    let state = format!("{PREFIX}/state");
    let (revision, committed) = watch.until("the change's state put", WAIT, |e| {
        (e.key == state).then_some((e.revision, e.seen))
    })?;
    let mut confirmed: [Option<(Instant, String)>; 3] = Default::default();
    watch.until("every gateway's confirmation", WAIT, |e| {
        let id = member_of(&e.key)?;
        let (applied, hash) = confirmation(&e.value, WEIGHTS_TENANT)?;
        let i = gateway_index(id).ok()?;
        if applied >= revision && confirmed[i].is_none() {
            confirmed[i] = Some((e.seen, hash));
        }
        confirmed.iter().all(Option::is_some).then_some(())
    })?;
    let [a, b, c] = confirmed.map(|c| c.expect("all confirmed"));
    let same_hash = !a.1.is_empty() && a.1 == b.1 && b.1 == c.1;
    if a.0 < committed {
        bail!("a confirmation before its state put: the watch is out of order");
    }
    Ok(Change {
        writer,
        sent,
        answered,
        committed,
        confirmed: [a.0, b.0, c.0],
        same_hash,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of `samples` (ms) as two cells.
fn p50_p99(samples: &[f64]) -> [String; 2] {
    [0.5, 0.99].map(|q| {
        quantile(samples, q).map_or("n/a".into(), |v| human(Duration::from_secs_f64(v / 1e3)))
    })
}

pub fn print(c: &Changes) {
    let last = |x: &Change| *x.confirmed.iter().max().expect("three");
    let of = |f: &dyn Fn(&Change) -> Duration| c.changes.iter().map(|x| ms(f(x))).collect();
    let rows: [(&str, Vec<f64>); 7] = [
        (
            "etcd alone: put on one member → watch event (baseline)",
            c.baseline.iter().copied().map(ms).collect(),
        ),
        (
            "local save alone: write, fsync, rename, fsync dir (state dir's disk)",
            c.saves.iter().copied().map(ms).collect(),
        ),
        (
            "change sent → HTTP 200 from its gateway",
            of(&|x| x.answered - x.sent),
        ),
        (
            "change sent → last gateway's confirmation seen",
            of(&|x| last(x) - x.sent),
        ),
        (
            "state put seen → last confirmation seen",
            of(&|x| last(x) - x.committed),
        ),
        (
            "state put seen → the writing gateway's confirmation",
            of(&|x| x.confirmed[x.writer] - x.committed),
        ),
        (
            "state put seen → another gateway's confirmation",
            c.changes
                .iter()
                .flat_map(|x| {
                    (0..IDS.len())
                        .filter(move |i| *i != x.writer)
                        .map(move |i| ms(x.confirmed[i] - x.committed))
                })
                .collect(),
        ),
    ];
    let mut table = Table::new(&["weight change (watched by the bench)", "p50", "p99"]);
    for (name, samples) in &rows {
        let [p50, p99] = p50_p99(samples);
        table.row(&[name.to_string(), p50, p99]);
    }
    println!(
        "\n{} weight changes, each through the next gateway in turn (target p99 ≤ 100 ms):",
        c.changes.len()
    );
    table.print();
    let p99 = |s: &[f64]| quantile(s, 0.99).unwrap_or(0.0);
    let p50 = |s: &[f64]| quantile(s, 0.5).unwrap_or(0.0);
    println!(
        "change → last confirmation against etcd's own put → event: p50 {}, p99 {}",
        ratio(p50(&rows[3].1), p50(&rows[0].1)),
        ratio(p99(&rows[3].1), p99(&rows[0].1))
    );
    let same = c.changes.iter().filter(|x| x.same_hash).count();
    println!(
        "the three confirmations carried one table hash in {same} of {} changes",
        c.changes.len()
    );
}
