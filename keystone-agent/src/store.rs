//! State that must survive an agent restart — deployments and traffic plans, and the
//! last config that went live — written atomically: temp file, fsync, rename, fsync
//! of the directory. A crash leaves either the old file or the new one, never half.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::deploy::{Deployment, TrafficPlan};

/// Bump when the layout changes incompatibly; older files are refused by name.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    /// Oldest first.
    pub deployments: Vec<Deployment>,
    /// Per tenant: how traffic is shared when not by configured weights.
    pub plans: BTreeMap<String, TrafficPlan>,
    pub next_seq: u64,
    /// Coordinated multi-service plans (see `orchestration`), oldest first; saved with
    /// the deployments they start, in one write.
    #[serde(default)]
    pub orchestrations: Vec<keystone_api::Plan>,
    #[serde(default)]
    pub next_plan_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Keystone state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has state version {found}; this agent understands {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.last-good.yaml")
    }

    /// The saved state, or the empty state when there is none yet.
    pub fn load(&self) -> Result<PersistedState, StoreError> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PersistedState {
                    version: STATE_VERSION,
                    ..Default::default()
                });
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let state: PersistedState =
            serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Version {
                path,
                found: state.version,
            });
        }
        Ok(state)
    }

    pub fn save(&self, state: &PersistedState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        write_atomically(&self.state_path(), &bytes)
    }

    /// Keeps a copy of the config that just went live.
    pub fn save_config(&self, text: &str) -> Result<(), StoreError> {
        write_atomically(&self.config_path(), text.as_bytes())
    }

    /// Another file of the state directory (`name` is a plain file name).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Renames an unreadable state file to `state.json.unreadable-<unix time>` so a
    /// new one can be written without losing it; returns where it went.
    pub fn set_aside_state(&self) -> Result<PathBuf, StoreError> {
        let from = self.state_path();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = self.dir.join(format!("state.json.unreadable-{secs}"));
        fs::rename(&from, &to).map_err(|source| StoreError::Write {
            path: to.clone(),
            source,
        })?;
        Ok(to)
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert_eq!(
            store.load().unwrap().deployments.len(),
            0,
            "no file yet: empty state"
        );
        let mut state = PersistedState {
            version: STATE_VERSION,
            next_seq: 7,
            ..Default::default()
        };
        state.plans.insert(
            "web".into(),
            TrafficPlan::Split {
                from: vec!["blue".into()],
                to: vec!["green".into()],
                to_percent: 40.0,
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!store.state_path().with_extension("tmp").exists());

        fs::write(store.state_path(), "{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        fs::write(
            store.state_path(),
            r#"{"version": 99, "deployments": [], "plans": {}, "next_seq": 0}"#,
        )
        .unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("state version 99"), "{e}");
    }
}
