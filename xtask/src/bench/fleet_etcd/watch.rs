//! The bench's eyes on etcd: `etcdctl watch --prefix -w json` in the lab's namespace,
//! every event stamped with the instant its line reached the bench. Both ends of every
//! figure are stamped by this one watcher, so its own delay is in the baseline too.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;

/// One put or delete under the watched prefix.
#[derive(Clone, Debug)]
pub struct Event {
    /// When the bench read it.
    pub seen: Instant,
    /// The key's mod revision (for a delete: the revision that deleted it).
    pub revision: i64,
    pub key: String,
    /// Empty for a delete.
    pub value: Vec<u8>,
    pub deleted: bool,
}

pub struct Watch {
    child: Child,
    events: Receiver<Event>,
    reader: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts `etcdctl watch --prefix <prefix>` in namespace `ns` against `endpoint`.
    /// The watch is live only once an event was seen: put a key first.
    pub fn start(ns: &str, endpoint: &str, prefix: &str) -> Result<Watch> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "etcdctl"])
            .arg(format!("--endpoints={endpoint}"))
            .args(["watch", "--prefix", prefix, "-w", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcdctl watch")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, events) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let seen = Instant::now();
                for event in parse(&line, seen) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watch {
            child,
            events,
            reader: Some(reader),
        })
    }

    /// Reads events until `found` returns something, for at most `timeout`.
    pub fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(t) = found(&event) {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no {what} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("etcdctl watch ended before {what}"),
            }
        }
    }

    /// Every event that arrives within `window` (those already read included).
    pub fn collect(&self, window: Duration) -> Vec<Event> {
        let deadline = Instant::now() + window;
        let mut events: Vec<Event> = self.events.try_iter().collect();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        events
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The events of one line of `etcdctl watch -w json` (keys and values in base64; a
/// put has no `type`, a delete has `"type": 1`).
fn parse(line: &str, seen: Instant) -> Vec<Event> {
    let Ok(response) = serde_json::from_str::<Value>(line) else {
        return Vec::new();
    };
    let header = response["Header"]["revision"].as_i64().unwrap_or(0);
    let decode = |v: &Value| {
        v.as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .unwrap_or_default()
    };
    response["Events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let deleted = e["type"].as_i64() == Some(1);
            let kv = &e["kv"];
            Event {
                seen,
                revision: kv["mod_revision"].as_i64().unwrap_or(header),
                key: String::from_utf8_lossy(&decode(&kv["key"])).into_owned(),
                value: decode(&kv["value"]),
                deleted,
            }
        })
        .collect()
}

/// `key` and `value` as etcd's HTTP gateway wants a put's body.
pub fn put_body(key: &str, value: &str) -> String {
    serde_json::json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)}).to_string()
}

/// A counter's value in a Prometheus text page (`name value` lines).
pub fn counter(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What etcdctl 3.4 printed for a put and for a lease expiry.
    #[test]
    fn reads_puts_and_deletes_from_etcdctl_json() {
        let now = Instant::now();
        let put = r#"{"Header":{"revision":4},"Events":[{"kv":{"key":"L3AvZQ==","create_revision":4,"mod_revision":4,"version":1,"value":"dg=="}}],"CompactRevision":0,"Canceled":false,"Created":false}"#;
        let e = &parse(put, now)[0];
        assert_eq!(
            (e.key.as_str(), e.value.as_slice(), e.revision, e.deleted),
            ("/p/e", &b"v"[..], 4, false)
        );
        let delete = r#"{"Header":{"revision":9},"Events":[{"type":1,"kv":{"key":"L3AvZQ==","mod_revision":9}}]}"#;
        let e = &parse(delete, now)[0];
        assert_eq!((e.key.as_str(), e.revision, e.deleted), ("/p/e", 9, true));
        assert!(e.value.is_empty());
    }

    #[test]
    fn reads_a_counter_by_its_exact_name() {
        let page =
            "# TYPE etcd_mvcc_put_total counter\netcd_mvcc_put_total 12\netcd_mvcc_put_total_x 3\n";
        assert_eq!(counter(page, "etcd_mvcc_put_total"), Some(12.0));
        assert_eq!(counter(page, "etcd_mvcc_txn_total"), None);
    }
}
