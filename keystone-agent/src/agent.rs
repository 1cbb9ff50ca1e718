//! The agent's live state: the running config, the data plane, and recent traffic.
//! The admin API, signals and metrics all go through here.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use keystone_common::{Endpoint, Reason, TrafficCounters, xdp_action_name};
use serde::Serialize;

use crate::{
    config::{ConfigError, LoadedConfig, Problem},
    dataplane::{Counters, Dataplane, DataplaneError},
};

/// How far back the "live" traffic share looks.
pub const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config {path} is invalid:\n  {problem}")]
    NeedsRestart { path: PathBuf, problem: Problem },
    #[error("the data plane refused the new config (the previous one stays live): {0}")]
    Dataplane(#[source] DataplaneError),
}

impl ReloadError {
    /// Problems with field and line, for API answers.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ReloadError::Config(e) => e.problems().to_vec(),
            ReloadError::NeedsRestart { problem, .. } => vec![problem.clone()],
            ReloadError::Dataplane(_) => Vec::new(),
        }
    }
}

struct Live {
    config: LoadedConfig,
    generation: u64,
    loaded_at: SystemTime,
}

pub struct Agent {
    live: RwLock<Live>,
    dataplane: Mutex<Box<dyn Dataplane>>,
    /// Counter samples, oldest first, covering about `TRAFFIC_WINDOW`.
    samples: Mutex<VecDeque<(Instant, Counters)>>,
    /// Reloads are serialised so SIGHUP and the API cannot interleave.
    reload_lock: tokio::sync::Mutex<()>,
}

impl Agent {
    /// Programs `config` into `dataplane` and returns the agent serving it.
    pub fn start(
        config: LoadedConfig,
        mut dataplane: Box<dyn Dataplane>,
    ) -> Result<Agent, DataplaneError> {
        dataplane.apply(&config.vip_specs(|_, _| true))?;
        Ok(Agent {
            live: RwLock::new(Live {
                config,
                generation: 1,
                loaded_at: SystemTime::now(),
            }),
            dataplane: Mutex::new(dataplane),
            samples: Mutex::new(VecDeque::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> LoadedConfig {
        self.live
            .read()
            .expect("config lock poisoned")
            .config
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.live.read().expect("config lock poisoned").generation
    }

    /// Re-reads the config file and makes it live, or leaves the running config
    /// untouched and says why.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let _serialised = self.reload_lock.lock().await;
        let path = self.config().path;
        let new = tokio::task::spawn_blocking(move || LoadedConfig::load(&path))
            .await
            .expect("config loader panicked")?;
        let old = self.config();
        if let Some(problem) = needs_restart(&old, &new) {
            return Err(ReloadError::NeedsRestart {
                path: new.path.clone(),
                problem,
            });
        }
        {
            let mut dataplane = self.dataplane.lock().expect("dataplane lock poisoned");
            if let Err(e) = dataplane.apply(&new.vip_specs(|_, _| true)) {
                // Put back what was live; a half-applied change must not linger.
                if let Err(restore) = dataplane.apply(&old.vip_specs(|_, _| true)) {
                    tracing::error!(error = %restore, "could not restore the previous config in the data plane");
                }
                return Err(ReloadError::Dataplane(e));
            }
        }
        for field in &new.ignored_fields {
            tracing::warn!(field, "unknown config field ignored");
        }
        let mut live = self.live.write().expect("config lock poisoned");
        live.config = new;
        live.generation += 1;
        live.loaded_at = SystemTime::now();
        tracing::info!(generation = live.generation, "config reloaded");
        Ok(live.generation)
    }

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown_dataplane(&self, keep_forwarding: bool) -> Result<(), DataplaneError> {
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .shutdown(keep_forwarding)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        self.dataplane
            .lock()
            .expect("dataplane lock poisoned")
            .counters()
    }

    /// Records a counter sample for the live traffic share; called about once a second.
    pub fn sample(&self) -> Result<(), DataplaneError> {
        let counters = self.counters()?;
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("samples lock poisoned");
        samples.push_back((now, counters));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= TRAFFIC_WINDOW)
        {
            samples.pop_front();
        }
        Ok(())
    }

    /// Everything `keystone-ctl status` shows.
    pub fn status(&self) -> Result<Status, DataplaneError> {
        let now = self.counters()?;
        let oldest = self
            .samples
            .lock()
            .expect("samples lock poisoned")
            .front()
            .cloned();
        let live = self.live.read().expect("config lock poisoned");
        let window = oldest.as_ref().map(|(t, c)| (t.elapsed(), c));
        let find =
            |list: &[(Endpoint, Endpoint, TrafficCounters)], vip: &Endpoint, backend: &Endpoint| {
                list.iter()
                    .find(|(v, b, _)| v == vip && b == backend)
                    .map(|(_, _, c)| *c)
                    .unwrap_or_default()
            };
        let tenants = live
            .config
            .tenants
            .iter()
            .map(|t| {
                let vip = t.vip_endpoint();
                let total_weight: u64 = t.services.iter().map(|s| s.weight as u64).sum();
                let mut backends: Vec<BackendStatus> = t
                    .services
                    .iter()
                    .map(|s| {
                        let endpoint = Endpoint::new(s.address, t.protocol.number());
                        let total = find(&now.backends, &vip, &endpoint);
                        let recent = window.map(|(_, then)| {
                            let before = find(&then.backends, &vip, &endpoint);
                            total.new_flows.saturating_sub(before.new_flows)
                        });
                        BackendStatus {
                            name: s.name.clone(),
                            address: s.address.to_string(),
                            environment: s.environment.clone(),
                            version: s.version.clone(),
                            weight: s.weight,
                            weight_share: share(s.weight as u64, total_weight),
                            packets: total.packets,
                            bytes: total.bytes,
                            new_connections: total.new_flows,
                            recent_new_connections: recent.unwrap_or(0),
                            traffic_share: 0.0,
                        }
                    })
                    .collect();
                let recent_total: u64 = backends.iter().map(|b| b.recent_new_connections).sum();
                for b in &mut backends {
                    b.traffic_share = share(b.recent_new_connections, recent_total);
                }
                let vip_counters = now
                    .vips
                    .iter()
                    .find(|(v, _)| *v == vip)
                    .map(|(_, c)| *c)
                    .unwrap_or_default();
                TenantStatus {
                    name: t.name.clone(),
                    vip: t.vip.to_string(),
                    protocol: t.protocol,
                    mode: t.mode,
                    strategy: t.strategy,
                    packets: vip_counters.packets,
                    bytes: vip_counters.bytes,
                    new_connections: vip_counters.new_flows,
                    backends,
                }
            })
            .collect();
        Ok(Status {
            config_path: live.config.path.display().to_string(),
            config_generation: live.generation,
            config_loaded_at: humantime::format_rfc3339_seconds(live.loaded_at).to_string(),
            traffic_window_seconds: window.map(|(d, _)| d.as_secs_f64()).unwrap_or(0.0),
            tenants,
            xdp_actions: now
                .actions
                .iter()
                .enumerate()
                .map(|(i, &n)| (xdp_action_name(i as u32).to_owned(), n))
                .collect(),
            packet_reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), now.reasons[*r as usize]))
                .collect(),
        })
    }
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// Fields a reload cannot change in place.
fn needs_restart(old: &LoadedConfig, new: &LoadedConfig) -> Option<Problem> {
    let lines = crate::yaml_lines::index(&std::fs::read_to_string(&new.path).unwrap_or_default());
    let problem = |field: &str, what: String| Problem {
        field: field.to_owned(),
        line: crate::yaml_lines::line_of(&lines, field),
        reason: format!("{what} cannot change on reload; restart the agent to apply it"),
    };
    if old.config.interfaces != new.config.interfaces {
        return Some(problem(
            "interfaces",
            "the interfaces the XDP program is attached to".into(),
        ));
    }
    if old.config.admin.listen != new.config.admin.listen {
        return Some(problem("admin.listen", "the admin API address".into()));
    }
    None
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub config_path: String,
    pub config_generation: u64,
    pub config_loaded_at: String,
    /// Seconds covered by `recent_new_connections` / `traffic_share`.
    pub traffic_window_seconds: f64,
    pub tenants: Vec<TenantStatus>,
    pub xdp_actions: std::collections::BTreeMap<String, u64>,
    pub packet_reasons: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub name: String,
    pub vip: String,
    pub protocol: crate::config::Protocol,
    pub mode: crate::config::ForwardingMode,
    pub strategy: crate::config::Strategy,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub environment: Option<String>,
    pub version: String,
    pub weight: u32,
    /// This backend's share of the tenant's total weight.
    pub weight_share: f64,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    /// New connections within the traffic window.
    pub recent_new_connections: u64,
    /// Share of the tenant's new connections within the traffic window.
    pub traffic_share: f64,
}
