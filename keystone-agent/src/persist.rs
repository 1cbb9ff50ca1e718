//! Whether the agent's own files are saved: every write goes through here, so a
//! failed one is counted (`keystone_state_write_failures_total`), shown in `/health`
//! and `status`, and never only logged. Also what happened to an unreadable state
//! file at start.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};

use crate::{
    announce::SavedDrain,
    health::{BackendKey, HealthState},
    store::{PersistedState, STATE_VERSION, Store, StoreError, write_atomically},
};

/// Backend health as saved: a restarted agent starts its checks from it, so a backend
/// that was down takes no new connection before its first check.
const HEALTH_FILE: &str = "health.json";

#[derive(Debug, Deserialize, Serialize)]
struct SavedHealth {
    tenant: String,
    service: String,
    address: SocketAddr,
    state: HealthState,
}

/// A drain in progress or done, as saved (see `announce::SavedDrain`).
const DRAIN_FILE: &str = "drain.json";

/// How often a background save that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The files the agent writes, as named in metrics and `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum File {
    /// Deployments and traffic plans (`state.json`).
    State,
    /// The copy of the last config that went live.
    Config,
    /// Backend health (`health.json`).
    Health,
    /// Accepted webhook signatures (`webhook-replay.json`).
    WebhookReplay,
    /// The BGP drain (`drain.json`).
    Drain,
}

impl File {
    pub fn name(self) -> &'static str {
        match self {
            File::State => "state",
            File::Config => "config",
            File::Health => "health",
            File::WebhookReplay => "webhook_replay",
            File::Drain => "drain",
        }
    }
}

/// What `/health` and `status` say about the agent's files.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PersistStatus {
    /// False while the latest write of some file failed.
    pub saved: bool,
    /// Failed writes since the agent started.
    pub write_failures: u64,
    /// By file: why its latest write failed (cleared by the next good one).
    pub unsaved: BTreeMap<&'static str, String>,
    /// Set when the state file could not be read at start.
    pub recovered: Option<String>,
}

pub struct Persistence {
    store: Option<Store>,
    failures: IntCounterVec,
    status: Mutex<PersistStatus>,
    /// Files whose last write failed, and when it may be tried again in the
    /// background (the tick retries `state` and `health`, see [`Self::retry_due`]).
    retry_at: Mutex<BTreeMap<&'static str, Instant>>,
}

impl Persistence {
    pub fn new(store: Option<Store>) -> Persistence {
        Persistence {
            store,
            failures: IntCounterVec::new(
                Opts::new(
                    "keystone_state_write_failures_total",
                    "Writes of the agent's files that failed (disk full, read-only, …), by file: \
                     state, config, health, webhook_replay, drain.",
                ),
                &["file"],
            )
            .expect("metric definitions are static and valid"),
            status: Mutex::new(PersistStatus {
                saved: true,
                ..Default::default()
            }),
            retry_at: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn metric(&self) -> &IntCounterVec {
        &self.failures
    }

    pub fn status(&self) -> PersistStatus {
        self.status
            .lock()
            .expect("persist status lock poisoned")
            .clone()
    }

    /// The saved state. An unreadable file (corrupt, empty, another version) does not
    /// stop the agent: it is moved aside, and `status` and `/health` say so until the
    /// agent restarts (the caller adds what it started from: [`Self::recovered_with`]).
    pub fn load_state(&self) -> PersistedState {
        let empty = PersistedState {
            version: STATE_VERSION,
            ..Default::default()
        };
        let Some(store) = &self.store else {
            return empty;
        };
        let error = match store.load() {
            Ok(state) => return state,
            Err(e) => e,
        };
        let note = match store.set_aside_state() {
            Ok(kept) => format!("{error}; kept it as {}", kept.display()),
            Err(e) => format!("{error}; could not move it aside either ({e})"),
        };
        self.status
            .lock()
            .expect("persist status lock poisoned")
            .recovered = Some(note);
        empty
    }

    /// Whether the state file was unreadable at start.
    pub fn state_was_unreadable(&self) -> bool {
        self.status().recovered.is_some()
    }

    /// Completes the note on an unreadable state file with what the agent started from.
    pub fn recovered_with(&self, start: &str) {
        let mut status = self.status.lock().expect("persist status lock poisoned");
        if let Some(note) = &mut status.recovered {
            note.push_str(" and ");
            note.push_str(start);
            tracing::error!("saved state unreadable: {note}");
        }
    }

    /// Records how a write of `file` went; passes the result on.
    pub fn record<E: std::fmt::Display>(&self, file: File, result: Result<(), E>) -> Result<(), E> {
        {
            let mut retry_at = self.retry_at.lock().expect("retry lock poisoned");
            match &result {
                Ok(()) => retry_at.remove(file.name()),
                Err(_) => retry_at.insert(file.name(), Instant::now() + RETRY),
            };
        }
        let mut status = self.status.lock().expect("persist status lock poisoned");
        match &result {
            Ok(()) => {
                if status.unsaved.remove(file.name()).is_some() {
                    tracing::info!(file = file.name(), "saved again");
                }
            }
            Err(e) => {
                self.failures.with_label_values(&[file.name()]).inc();
                status.write_failures += 1;
                if status.unsaved.insert(file.name(), e.to_string()).is_none() {
                    tracing::error!(file = file.name(), error = %e, "cannot save");
                }
            }
        }
        status.saved = status.unsaved.is_empty();
        result
    }

    /// Saves deployments and plans (nothing without a store).
    pub fn save_state(&self, state: &PersistedState) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        self.record(File::State, store.save(state))
    }

    /// Saves which checked backends are up and which are down.
    pub fn save_health(&self, known: Vec<(BackendKey, SocketAddr, HealthState)>) {
        let Some(store) = &self.store else { return };
        let saved: Vec<SavedHealth> = known
            .into_iter()
            .map(|((tenant, service), address, state)| SavedHealth {
                tenant,
                service,
                address,
                state,
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&saved).expect("health serialises");
        let _ = self.record(
            File::Health,
            write_atomically(&store.path_of(HEALTH_FILE), &bytes),
        );
    }

    /// The health a previous agent saved; nothing if there is none or it is unreadable.
    pub fn load_health(&self) -> Vec<(BackendKey, SocketAddr, HealthState)> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let path = store.path_of(HEALTH_FILE);
        let saved: Vec<SavedHealth> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "saved health unreadable; checking every backend afresh");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        saved
            .into_iter()
            .map(|h| ((h.tenant, h.service), h.address, h.state))
            .collect()
    }

    /// Saves the BGP drain; whether it was saved (else it is counted and shown, and
    /// the caller tries again).
    pub fn save_drain(&self, drain: &SavedDrain) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let bytes = serde_json::to_vec_pretty(drain).expect("a drain serialises");
        self.record(
            File::Drain,
            write_atomically(&store.path_of(DRAIN_FILE), &bytes),
        )
        .is_ok()
    }

    /// The drain a previous agent saved; `None` if there is none. An unreadable file
    /// is logged and counts as none (the gateway then announces what is ready).
    pub fn load_drain(&self) -> Option<SavedDrain> {
        let path = self.store.as_ref()?.path_of(DRAIN_FILE);
        let bytes = std::fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "saved drain unreadable; not draining")
            })
            .ok()
    }

    /// Whether the last write of `file` failed and is due to be tried again (at most
    /// once per `RETRY`): without it, a file that failed while the disk was full
    /// stayed unsaved, and `/health` degraded, until its content next changed.
    pub fn retry_due(&self, file: File) -> bool {
        self.retry_at
            .lock()
            .expect("retry lock poisoned")
            .get(file.name())
            .is_some_and(|at| Instant::now() >= *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A health write that failed (here: `health.json` is a directory, so the
    /// rename onto it fails) keeps `health` unsaved and due for a retry; the next
    /// write that works clears both.
    #[test]
    fn a_failed_health_write_is_retried_and_a_good_one_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join(HEALTH_FILE);
        std::fs::create_dir(&blocker).unwrap();
        let p = Persistence::new(Some(Store::new(dir.path())));
        p.save_health(Vec::new());
        assert!(
            p.status().unsaved.contains_key("health"),
            "{:?}",
            p.status()
        );
        assert!(!p.retry_due(File::Health), "not before RETRY has passed");
        // RETRY passed (moved back rather than waited for).
        p.retry_at
            .lock()
            .unwrap()
            .insert(File::Health.name(), Instant::now());
        assert!(p.retry_due(File::Health) && !p.retry_due(File::State));
        std::fs::remove_dir(&blocker).unwrap();
        p.save_health(Vec::new());
        assert!(!p.retry_due(File::Health));
        assert!(p.status().saved && p.status().unsaved.is_empty());
    }
}
