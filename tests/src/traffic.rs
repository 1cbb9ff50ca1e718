//! What `ks-client` reports, and running it from the client namespace.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    bins::Bins,
    cmd::{self, in_ns},
    error::{LabError, Result},
    lab::Lab,
    wait::{Probe, wait_for},
};

/// How far, in binomial standard deviations, a measured share may be from its
/// weight's share. A fair split then fails one check in ~16,000 (two-sided 4σ); the
/// rule is ≥ 3.5σ, since ±5 points at n = 200 (1.4σ) failed CI on a fair draw.
pub const SPLIT_SIGMAS: f64 = 4.0;

/// Each held connection's request timeout (ks-client `--timeout-ms`): a held
/// connection is broken when a request gets no answer within it.
pub const HOLD_TIMEOUT_MS: u64 = 5000;

/// The standard deviation, in percentage points, of a share `p` (0..=1) measured
/// over `n` independent new connections: 100·√(p(1−p)/n).
pub fn share_sigma(p: f64, n: u64) -> f64 {
    100.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// The tolerance, in points, of a split over `n` answers: [`SPLIT_SIGMAS`] σ of
/// the weights' largest-variance share (the one nearest 50 %). E.g. n = 2000:
/// 90/10 ±2.68, 50/50 ±4.47; n = 1000: 50/50 ±6.32.
pub fn split_tolerance(weights: &[(&str, u32)], n: u64) -> f64 {
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    weights
        .iter()
        .map(|(_, w)| share_sigma(f64::from(*w) / f64::from(total.max(1)), n))
        .fold(0.0, f64::max)
        * SPLIT_SIGMAS
}

/// `ks-client`'s closing JSON line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// "tcp", "udp" or "hold".
    pub mode: String,
    pub target: String,
    /// Requests (TCP) or datagrams (UDP) tried.
    pub attempted: u64,
    /// Answered requests, by the backend name in the answer.
    pub by_backend: BTreeMap<String, u64>,
    pub failed: u64,
    /// Failures by kind ("connect: ConnectionRefused", "read: timeout", …).
    pub errors: BTreeMap<String, u64>,
    /// Hold mode: connections re-opened after an error.
    #[serde(default)]
    pub reconnects: u64,
    pub elapsed_ms: u64,
}

impl Summary {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Summary) {
        if self.mode.is_empty() {
            self.mode = other.mode.clone();
            self.target = other.target.clone();
        }
        self.attempted += other.attempted;
        self.failed += other.failed;
        self.reconnects += other.reconnects;
        self.elapsed_ms += other.elapsed_ms;
        for (k, v) in &other.by_backend {
            *self.by_backend.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn answered(&self) -> u64 {
        self.by_backend.values().sum()
    }

    /// Percentage of answered requests that `backend` served.
    pub fn share(&self, backend: &str) -> f64 {
        let total = self.answered();
        if total == 0 {
            return 0.0;
        }
        100.0 * *self.by_backend.get(backend).unwrap_or(&0) as f64 / total as f64
    }

    /// `Err` (with a table) unless nothing failed, only `weights`' backends answered
    /// and every backend's share is within [`split_tolerance`] of its weight's
    /// share for the number of answers measured.
    pub fn check_split(&self, weights: &[(&str, u32)]) -> Result<(), String> {
        let n = self.answered();
        let tolerance = split_tolerance(weights, n);
        let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut bad = self.failed > 0 || n == 0;
        for (name, w) in weights {
            let expected = 100.0 * f64::from(*w) / f64::from(total_weight.max(1));
            bad |= (self.share(name) - expected).abs() > tolerance;
        }
        let unknown = self
            .by_backend
            .keys()
            .any(|k| !weights.iter().any(|(n, _)| n == k));
        if bad || unknown {
            Err(format!(
                "split outside ±{tolerance:.2} points ({SPLIT_SIGMAS}σ at n = {n}) or requests failed:\n{}",
                self.table(weights)
            ))
        } else {
            Ok(())
        }
    }

    /// Expected vs measured, one row per backend.
    pub fn table(&self, weights: &[(&str, u32)]) -> String {
        let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut s = format!(
            "{:<10} {:>7} {:>9} {:>9} {:>8}\n",
            "backend", "weight", "expected", "measured", "answers"
        );
        let mut names: Vec<&str> = weights.iter().map(|(n, _)| *n).collect();
        names.extend(
            self.by_backend
                .keys()
                .map(String::as_str)
                .filter(|k| !weights.iter().any(|(n, _)| n == k)),
        );
        for name in names {
            let w = weights
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, w)| *w);
            let expected = 100.0 * f64::from(w) / f64::from(total_weight.max(1));
            s.push_str(&format!(
                "{:<10} {:>7} {:>8.1}% {:>8.1}% {:>8}\n",
                name,
                w,
                expected,
                self.share(name),
                self.by_backend.get(name).unwrap_or(&0)
            ));
        }
        s.push_str(&format!(
            "{} answered, {} failed{} in {} ms",
            self.answered(),
            self.failed,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.errors)
            },
            self.elapsed_ms
        ));
        s
    }
}

/// One line of `ks-client --hold` output: `conn=<i> gen=<g> seq=<n> backend=<name>` or
/// `conn=<i> gen=<g> seq=<n> error=<text>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldEvent {
    /// Which held connection (0-based).
    pub conn: u32,
    /// How many times it was re-opened after an error.
    pub generation: u32,
    pub seq: u64,
    pub outcome: Result<String, String>,
}

impl HoldEvent {
    pub fn to_line(&self) -> String {
        match &self.outcome {
            Ok(b) => format!(
                "conn={} gen={} seq={} backend={b}",
                self.conn, self.generation, self.seq
            ),
            Err(e) => format!(
                "conn={} gen={} seq={} error={e}",
                self.conn, self.generation, self.seq
            ),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("conn=")?;
        let (conn, rest) = rest.split_once(" gen=")?;
        let (generation, rest) = rest.split_once(" seq=")?;
        let (seq, rest) = rest.split_once(' ')?;
        let outcome = if let Some(b) = rest.strip_prefix("backend=") {
            Ok(b.to_owned())
        } else {
            Err(rest.strip_prefix("error=")?.to_owned())
        };
        Some(Self {
            conn: conn.parse().ok()?,
            generation: generation.parse().ok()?,
            seq: seq.parse().ok()?,
            outcome,
        })
    }

    /// Every event in `output`, in order.
    pub fn parse_all(output: &str) -> Vec<Self> {
        output.lines().filter_map(Self::parse).collect()
    }

    /// The events that are failures (a broken connection, wrong echoed bytes, ...).
    pub fn failures(events: &[Self]) -> Vec<&Self> {
        events.iter().filter(|e| e.outcome.is_err()).collect()
    }
}

/// From hold `events` past index `skip`, each connection's backend once every one of
/// `conns` connections has at least `min` answers there.
fn held_backends(events: &[HoldEvent], conns: u32, skip: usize, min: usize) -> Probe<Vec<String>> {
    let mut per_conn: Vec<Vec<&HoldEvent>> = vec![Vec::new(); conns as usize];
    for e in events.iter().skip(skip) {
        if let Some(v) = per_conn.get_mut(e.conn as usize) {
            v.push(e);
        }
    }
    if per_conn
        .iter()
        .any(|v| v.iter().filter(|e| e.outcome.is_ok()).count() < min)
    {
        let counts: Vec<usize> = per_conn.iter().map(Vec::len).collect();
        return Probe::NotYet(format!("answers per connection: {counts:?}"));
    }
    Probe::Ready(
        per_conn
            .iter()
            .map(|v| {
                v.iter()
                    .find_map(|e| e.outcome.clone().ok())
                    .unwrap_or_default()
            })
            .collect(),
    )
}

/// The last line of `output` that parses as a [`Summary`].
pub fn parse_summary(what: &str, output: &str) -> Result<Summary> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|source| LabError::Parse {
        what: what.to_owned(),
        output: output.to_owned(),
        source,
    })
}

/// One run of `ks-client --connections` inside a [`ClientLoop`].
#[derive(Clone, Debug)]
pub struct Batch {
    pub started: Instant,
    pub finished: Instant,
    pub summary: Summary,
}

/// New TCP connections without pause: `ks-client --connections <batch>` run again and
/// again from the client namespace by a background thread, until [`ClientLoop::stop`]
/// (or drop), or `max_time`, whichever comes first.
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    batches: Arc<Mutex<Vec<Batch>>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl ClientLoop {
    /// The batches finished so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.batches.lock().expect("batches lock").clone()
    }

    /// Waits (at most `timeout`) until `n` batches that started at or after `since`
    /// have finished, or the loop ended by itself (an error, which `stop()` reports).
    pub fn wait_batches_since(&self, since: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait_for(&format!("{n} batches of new connections"), timeout, || {
            let done = self.batches().iter().filter(|b| b.started >= since).count();
            Ok(if done >= n || self.is_finished() {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{done} batches"))
            })
        })
    }

    /// Whether the loop has ended by itself (its time bound, or an error).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops after the running batch; returns every batch, or the error that ended
    /// the loop early.
    pub fn stop(mut self) -> Result<Vec<Batch>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("client loop thread panicked")?;
        }
        Ok(self.batches())
    }

    /// Everything the batches saw, summed.
    pub fn total(batches: &[Batch]) -> Summary {
        let mut total = Summary::default();
        for b in batches {
            total.merge(&b.summary);
        }
        total
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_client(client: &PathBuf, ns: &str, args: &[String]) -> Result<Summary> {
    let mut c: Command = in_ns(ns, client);
    c.args(args);
    let what = cmd::describe(&c);
    let out = cmd::run(&mut c)?;
    parse_summary(&what, &out)
}

impl Lab {
    /// Starts a [`ClientLoop`] of `batch` new connections per `ks-client` run to
    /// `target`, ending by itself after `max_time`.
    pub fn client_loop(
        &self,
        target: SocketAddr,
        batch: u32,
        max_time: Duration,
    ) -> Result<ClientLoop> {
        let client = Bins::require(&self.bins().client)?.to_path_buf();
        let ns = self.client_ns().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let args = vec![
            "--target".to_owned(),
            target.to_string(),
            "--connections".to_owned(),
            batch.to_string(),
            "--concurrency".to_owned(),
            "4".to_owned(),
        ];
        let handle = {
            let (stop, batches) = (stop.clone(), batches.clone());
            thread::spawn(move || {
                let until = Instant::now() + max_time;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    let started = Instant::now();
                    let summary = run_client(&client, &ns, &args)?;
                    batches.lock().expect("batches lock").push(Batch {
                        started,
                        finished: Instant::now(),
                        summary,
                    });
                }
                Ok(())
            })
        };
        Ok(ClientLoop {
            stop,
            batches,
            handle: Some(handle),
        })
    }

    /// Runs `ks-client <args>` in the client namespace and returns its summary.
    pub fn client(&self, args: &[String]) -> Result<Summary> {
        let client = Bins::require(&self.bins().client)?.to_path_buf();
        run_client(&client, self.client_ns(), args)
    }

    /// `n` new TCP connections (one HTTP request each) to `target`.
    pub fn tcp_connections(&self, target: SocketAddr, n: u32) -> Result<Summary> {
        self.client(&[
            "--target".into(),
            target.to_string(),
            "--connections".into(),
            n.to_string(),
        ])
    }

    /// `n` UDP datagrams to `target`, each from a fresh socket.
    pub fn udp_datagrams(&self, target: SocketAddr, n: u32) -> Result<Summary> {
        self.client(&[
            "--target".into(),
            target.to_string(),
            "--udp".into(),
            n.to_string(),
        ])
    }

    /// Starts `ks-client --hold` in the client namespace as process `name`:
    /// `conns` keep-alive connections, one request each every `interval_ms`, for `secs`.
    pub fn spawn_hold(
        &mut self,
        name: &str,
        target: SocketAddr,
        conns: u32,
        secs: u32,
        interval_ms: u32,
    ) -> Result<u32> {
        self.spawn_echo_hold(name, target, conns, secs, interval_ms, 0)
    }

    /// [`Lab::spawn_hold`] whose requests each send `echo_bytes` fresh bytes to the
    /// backend's `/echo` and check every byte of the answer (a mismatch is an error
    /// event, like a broken connection).
    pub fn spawn_echo_hold(
        &mut self,
        name: &str,
        target: SocketAddr,
        conns: u32,
        secs: u32,
        interval_ms: u32,
        echo_bytes: usize,
    ) -> Result<u32> {
        let client = self.bins().client.clone();
        let ns = self.client_ns().to_owned();
        self.spawn(
            name,
            &ns,
            &client,
            &[
                "--target".to_owned(),
                target.to_string(),
                "--hold".into(),
                secs.to_string(),
                "--hold-connections".into(),
                conns.to_string(),
                "--interval-ms".into(),
                interval_ms.to_string(),
                "--echo-bytes".into(),
                echo_bytes.to_string(),
                // A request lost at a gateway's failure is resent by TCP at ~0.2, 0.6,
                // 1.4 and 3 s: a connection that answers within 5 s was not broken.
                "--timeout-ms".into(),
                HOLD_TIMEOUT_MS.to_string(),
            ],
        )
    }

    /// Every event the hold process `name` (see [`Lab::spawn_hold`]) has printed.
    pub fn hold_events(&self, name: &str) -> Result<Vec<HoldEvent>> {
        Ok(HoldEvent::parse_all(&self.stdout_of(name)?))
    }

    /// Waits up to `timeout` until each of the `conns` connections held by process
    /// `name` (see [`Lab::spawn_hold`]) has answered `min` times after event index
    /// `skip`; returns each one's backend.
    pub fn held_answers(
        &self,
        name: &str,
        conns: u32,
        skip: usize,
        min: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let more = if skip == 0 { "" } else { " more" };
        wait_for(
            &format!("every held connection to answer {min}{more} times"),
            timeout,
            || {
                self.stdout_of(name)
                    .map(|out| held_backends(&HoldEvent::parse_all(&out), conns, skip, min))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_lines_round_trip() {
        for e in [
            HoldEvent {
                conn: 3,
                generation: 0,
                seq: 7,
                outcome: Ok("blue".into()),
            },
            HoldEvent {
                conn: 0,
                generation: 2,
                seq: 1,
                outcome: Err("read: timed out after 2s".into()),
            },
        ] {
            assert_eq!(HoldEvent::parse(&e.to_line()), Some(e));
        }
        assert_eq!(HoldEvent::parse("{\"mode\":\"hold\"}"), None);
    }

    #[test]
    fn the_split_tolerance_is_four_binomial_sigmas_of_the_widest_share() {
        let close = |a: f64, b: f64| (a - b).abs() < 0.005;
        assert!(
            close(share_sigma(0.5, 2000), 1.118),
            "{}",
            share_sigma(0.5, 2000)
        );
        assert!(close(share_sigma(0.9, 2000), 0.671));
        assert!(close(share_sigma(0.1, 2000), share_sigma(0.9, 2000)));
        assert_eq!(share_sigma(1.0, 2000), 0.0);
        let t = |w: &[(&str, u32)], n| split_tolerance(w, n);
        assert!(close(t(&[("blue", 90), ("green", 10)], 2000), 2.683));
        assert!(close(t(&[("blue", 50), ("green", 50)], 2000), 4.472));
        assert!(close(t(&[("a", 50), ("b", 25), ("c", 25)], 2000), 4.472));
        assert!(close(t(&[("blue", 1), ("green", 1)], 1000), 6.325));
        assert_eq!(t(&[("blue", 100), ("green", 0)], 2000), 0.0);
    }

    #[test]
    fn a_split_is_checked_against_its_binomial_tolerance() {
        let summary = |blue, green| {
            let mut s = Summary::default();
            s.by_backend.insert("blue".into(), blue);
            s.by_backend.insert("green".into(), green);
            s
        };
        let w90 = &[("blue", 90), ("green", 10)];
        // n = 2000, 90/10: ±2.68 points.
        assert!(summary(1750, 250).check_split(w90).is_ok(), "87.5 %");
        assert!(summary(1740, 260).check_split(w90).is_err(), "87.0 %");
        // The draw that failed CI, 54.5/45.5 at n = 200, is fair (±14.1 points)…
        assert!(
            summary(109, 91)
                .check_split(&[("blue", 1), ("green", 1)])
                .is_ok()
        );
        // …and one 10 points off at n = 2000 is not (±4.47).
        let err = summary(1200, 800)
            .check_split(&[("blue", 1), ("green", 1)])
            .unwrap_err();
        assert!(err.contains("±4.47 points (4σ at n = 2000)"), "{err}");
        let mut failed = summary(1800, 200);
        failed.failed = 1;
        assert!(failed.check_split(w90).is_err(), "a failed request");
        assert!(summary(0, 0).check_split(w90).is_err(), "nothing answered");
        let mut stray = summary(1800, 200);
        stray.by_backend.insert("red".into(), 1);
        assert!(stray.check_split(w90).is_err(), "an unknown backend");
    }

    #[test]
    fn summary_is_the_last_json_line() {
        let out = "conn=0 gen=0 seq=0 backend=blue\n{\"mode\":\"hold\",\"target\":\"x\",\"attempted\":1,\"by_backend\":{\"blue\":1},\"failed\":0,\"errors\":{},\"elapsed_ms\":5}\n";
        let s = parse_summary("t", out).unwrap();
        assert_eq!(s.by_backend["blue"], 1);
        assert_eq!(s.reconnects, 0);
    }
}
