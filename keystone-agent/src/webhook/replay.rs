//! Replay refusal: the (timestamp, MAC) pairs of accepted requests, remembered until
//! their timestamp leaves the tolerance window and saved in the state directory
//! (`webhook-replay.json`) before a request is accepted, so a restart does not
//! reopen the window.

use std::{collections::BTreeSet, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{MAX_REMEMBERED, WebhookError};
use crate::{
    signing::{self, Mac, unix_secs},
    store::StoreError,
};

/// The accepted pairs of one verifier.
#[derive(Default)]
pub(super) struct ReplayCache {
    /// Accepted (timestamp, MAC) pairs, ordered by timestamp so expiry is a prefix.
    accepted: BTreeSet<(u64, Mac)>,
    /// Where the accepted pairs are saved, if anywhere.
    replay_file: Option<PathBuf>,
    /// Timestamps before this are refused: the pairs saved before it were unreadable.
    not_before: u64,
}

/// The replay file: accepted pairs as (timestamp, hex MAC).
#[derive(Default, Deserialize, Serialize)]
struct ReplayFile {
    accepted: Vec<(u64, String)>,
}

impl ReplayCache {
    /// Keeps accepted pairs in `path` from now on, adding what is there. An unreadable
    /// file is logged and makes every timestamp older than now refused.
    pub(super) fn load(&mut self, path: PathBuf) {
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ReplayFile>(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplayFile::default()),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(file) => {
                let pairs = file.accepted.into_iter().filter_map(|(ts, mac)| {
                    let mac: Mac = hex::decode(mac).ok()?.try_into().ok()?;
                    Some((ts, mac))
                });
                self.accepted.extend(pairs);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "accepted webhook signatures unreadable; refusing timestamps from before this start");
                self.not_before = unix_secs(SystemTime::now());
            }
        }
        self.replay_file = Some(path);
    }

    fn save_replays(&self) -> Result<(), StoreError> {
        let Some(path) = &self.replay_file else {
            return Ok(());
        };
        let file = ReplayFile {
            accepted: self
                .accepted
                .iter()
                .map(|(ts, mac)| (*ts, hex::encode(mac)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("the replay file serialises");
        crate::store::write_atomically(path, &bytes)
    }

    /// Accepts the pair of a verified request once: not accepted before, not from
    /// before an unreadable replay file, room left, and saved.
    pub(super) fn accept(
        &mut self,
        timestamp: u64,
        expected: Mac,
        now_secs: u64,
        tolerance_secs: u64,
    ) -> Result<(), WebhookError> {
        let accepted = &mut self.accepted;
        // Forget pairs whose timestamp has left the window: they are refused as stale.
        while let Some(&(oldest, _)) = accepted.first()
            && signing::expired(oldest, now_secs, tolerance_secs)
        {
            accepted.pop_first();
        }
        if accepted.contains(&(timestamp, expected)) {
            return Err(WebhookError::Replayed { timestamp });
        }
        if timestamp < self.not_before {
            return Err(WebhookError::BeforeStart { timestamp });
        }
        if accepted.len() >= MAX_REMEMBERED {
            return Err(WebhookError::TooManyRequests {
                remembered: accepted.len(),
                tolerance_secs,
            });
        }
        accepted.insert((timestamp, expected));
        if let Err(e) = self.save_replays() {
            self.accepted.remove(&(timestamp, expected));
            return Err(WebhookError::ReplayNotSaved(e));
        }
        Ok(())
    }

    /// Pairs still remembered.
    pub(super) fn len(&self) -> usize {
        self.accepted.len()
    }
}
