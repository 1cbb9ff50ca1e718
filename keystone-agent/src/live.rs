//! The running config: one `Arc<LoadedConfig>` handed out to every reader, its
//! generation and when it went live. Owns the `live` lock (a leaf: held only to copy
//! or swap the `Arc`).

use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

use crate::config::LoadedConfig;

struct Live {
    config: Arc<LoadedConfig>,
    generation: u64,
    loaded_at: SystemTime,
}

pub struct LiveConfig {
    live: RwLock<Live>,
}

/// One consistent reading of the live config.
pub struct Snapshot {
    pub config: Arc<LoadedConfig>,
    pub generation: u64,
    pub loaded_at: SystemTime,
}

impl LiveConfig {
    pub fn new(config: LoadedConfig) -> LiveConfig {
        LiveConfig {
            live: RwLock::new(Live {
                config: Arc::new(config),
                generation: 1,
                loaded_at: SystemTime::now(),
            }),
        }
    }

    pub fn get(&self) -> Arc<LoadedConfig> {
        self.live
            .read()
            .expect("config lock poisoned")
            .config
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.live.read().expect("config lock poisoned").generation
    }

    pub fn snapshot(&self) -> Snapshot {
        let live = self.live.read().expect("config lock poisoned");
        Snapshot {
            config: live.config.clone(),
            generation: live.generation,
            loaded_at: live.loaded_at,
        }
    }

    /// Makes `config` the live one, as the next generation.
    pub fn replace(&self, config: Arc<LoadedConfig>) {
        let mut live = self.live.write().expect("config lock poisoned");
        live.config = config;
        live.generation += 1;
        live.loaded_at = SystemTime::now();
    }
}
