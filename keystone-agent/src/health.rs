//! Active health checks: TCP connect or HTTP (path, expected status, expected body),
//! with rise/fall thresholds and flap damping. Results feed the data plane (a down
//! backend leaves the Maglev table and its flows are re-picked) and canary analysis.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
};

use crate::config::{HealthConfig, LoadedConfig};

/// Defaults where the config is silent (HAProxy-like: 2 up, 3 down).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Flap damping: this many down-transitions within `FLAP_WINDOW_INTERVALS` intervals
/// double the successes needed to come back (up to 8×).
const FLAP_LIMIT: usize = 3;
const FLAP_WINDOW_INTERVALS: u32 = 30;
/// Most bytes of an HTTP answer read to find the status line and expected body.
const MAX_HTTP_RESPONSE: usize = 64 * 1024;

/// What a probe does.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeKind {
    Tcp,
    Http {
        path: String,
        expected_status: u16,
        expected_body: Option<String>,
    },
}

/// One backend's check, from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub address: SocketAddr,
    pub probe: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl CheckSpec {
    /// From the seed's `health:` block: `path` (or `endpoint`) makes it HTTP;
    /// `retries` is the seed's name for the fall threshold (the config refuses both).
    pub fn from_config(address: SocketAddr, health: &HealthConfig) -> CheckSpec {
        let probe = match health.http_path() {
            Some(path) => ProbeKind::Http {
                path: path.to_owned(),
                expected_status: health.expected_status_code.unwrap_or(200),
                expected_body: health.expected_response.clone(),
            },
            None => ProbeKind::Tcp,
        };
        CheckSpec {
            address,
            probe,
            interval: health
                .interval
                .as_ref()
                .map(|d| d.get())
                .unwrap_or(DEFAULT_INTERVAL),
            timeout: health
                .timeout
                .as_ref()
                .map(|d| d.get())
                .unwrap_or(DEFAULT_TIMEOUT),
            rise: health.success_threshold.unwrap_or(DEFAULT_RISE).max(1),
            fall: health
                .failure_threshold
                .or(health.retries)
                .unwrap_or(DEFAULT_FALL)
                .max(1),
        }
    }
}

/// How a blue/green switch validates one backend of the idle side: an HTTP `GET` of
/// `switch_config.validation_endpoint` when set (with the service's expected status
/// and body, if it has a check), else the service's own check, else a TCP connect.
pub fn validation_spec(
    address: SocketAddr,
    health: Option<&HealthConfig>,
    endpoint: Option<&str>,
) -> CheckSpec {
    let mut spec = match health {
        Some(h) => CheckSpec::from_config(address, h),
        None => CheckSpec {
            address,
            probe: ProbeKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: DEFAULT_TIMEOUT,
            rise: 1,
            fall: 1,
        },
    };
    if let Some(path) = endpoint {
        spec.probe = ProbeKind::Http {
            path: path.to_owned(),
            expected_status: health.and_then(|h| h.expected_status_code).unwrap_or(200),
            expected_body: health.and_then(|h| h.expected_response.clone()),
        };
    }
    spec
}

/// Why a probe did not pass.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The backend failed the check.
    #[error("{0}")]
    Backend(String),
    /// This host could not run the check (out of descriptors, buffers or ports): it
    /// says nothing about the backend, whose state stays as it was.
    #[error("{0} (a local error: the check could not run on this host)")]
    Local(String),
}

impl ProbeError {
    fn io(what: impl std::fmt::Display, e: std::io::Error) -> ProbeError {
        let text = format!("{what}: {e}");
        if crate::open_files::is_local(&e) {
            ProbeError::Local(text)
        } else {
            ProbeError::Backend(text)
        }
    }
}

impl From<String> for ProbeError {
    fn from(reason: String) -> ProbeError {
        ProbeError::Backend(reason)
    }
}

/// Runs one probe; `Err` says why it failed.
pub async fn probe(spec: &CheckSpec) -> Result<(), ProbeError> {
    tokio::time::timeout(spec.timeout, probe_inner(spec))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", spec.timeout).into()))
}

async fn probe_inner(spec: &CheckSpec) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(spec.address)
        .await
        .map_err(|e| ProbeError::io(format_args!("connect {}", spec.address), e))?;
    let ProbeKind::Http {
        path,
        expected_status,
        expected_body,
    } = &spec.probe
    else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keystone-health\r\nConnection: close\r\n\r\n",
        spec.address
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::io("send request", e))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::io("read response", e))?;
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        let complete = n == 0 || response.len() >= MAX_HTTP_RESPONSE || http_complete(&text);
        if complete {
            return Ok(check_response(
                &text,
                *expected_status,
                expected_body.as_deref(),
            )?);
        }
    }
}

/// Whether a response with a Content-Length has all its body.
fn http_complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

fn check_response(
    text: &str,
    expected_status: u16,
    expected_body: Option<&str>,
) -> Result<(), String> {
    let status_line = text.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: '{}'",
                status_line.chars().take(60).collect::<String>()
            )
        })?;
    if status != expected_status {
        return Err(format!("HTTP status {status}, expected {expected_status}"));
    }
    if let Some(want) = expected_body {
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        if !body.contains(want) {
            return Err(format!("body does not contain '{want}'"));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No check configured, or none finished yet: treated as up.
    Unknown,
    Up,
    Down,
}

/// A backend's health as the checker sees it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendHealth {
    pub state: HealthState,
    pub consecutive_ok: u32,
    pub consecutive_failed: u32,
    /// Probes since the checker started (canary analysis takes differences).
    pub total_ok: u64,
    pub total_failed: u64,
    pub last_error: Option<String>,
    /// Why the last check could not run on this host (e.g. out of descriptors); set
    /// until a check runs again. Such a check counts neither way.
    pub local_error: Option<String>,
    pub total_local_errors: u64,
    /// Successes needed to come back up (rise, raised while flapping).
    pub rise_needed: u32,
    #[serde(skip)]
    down_transitions: VecDeque<Instant>,
}

impl BackendHealth {
    fn new(rise: u32) -> BackendHealth {
        BackendHealth {
            state: HealthState::Unknown,
            consecutive_ok: 0,
            consecutive_failed: 0,
            total_ok: 0,
            total_failed: 0,
            last_error: None,
            local_error: None,
            total_local_errors: 0,
            rise_needed: rise,
            down_transitions: VecDeque::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state != HealthState::Down
    }

    /// Records one probe result; returns true if the state changed.
    fn record(&mut self, spec: &CheckSpec, result: Result<(), ProbeError>, now: Instant) -> bool {
        let before = self.state;
        if let Err(ProbeError::Local(e)) = result {
            self.total_local_errors += 1;
            self.local_error = Some(e);
            return false;
        }
        self.local_error = None;
        match result {
            Ok(()) => {
                self.total_ok += 1;
                self.consecutive_ok += 1;
                self.consecutive_failed = 0;
                self.last_error = None;
                let needed = if self.state == HealthState::Down {
                    self.rise_needed
                } else {
                    1
                };
                if self.consecutive_ok >= needed {
                    self.state = HealthState::Up;
                }
            }
            Err(e) => {
                self.total_failed += 1;
                self.consecutive_failed += 1;
                self.consecutive_ok = 0;
                self.last_error = Some(e.to_string());
                // A backend never checked before is decided by its first probe: one
                // that is down from the start must not take connections meanwhile.
                let fell =
                    self.consecutive_failed >= spec.fall || self.state == HealthState::Unknown;
                if fell && self.state != HealthState::Down {
                    self.state = HealthState::Down;
                    let window = spec.interval * FLAP_WINDOW_INTERVALS;
                    self.down_transitions.push_back(now);
                    while self
                        .down_transitions
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > window)
                    {
                        self.down_transitions.pop_front();
                    }
                    let flaps = self.down_transitions.len();
                    let factor = if flaps >= FLAP_LIMIT {
                        1u32 << (flaps - FLAP_LIMIT + 1).min(3)
                    } else {
                        1
                    };
                    self.rise_needed = spec.rise * factor;
                }
            }
        }
        self.state != before
    }
}

/// Backend identity in the checker: (tenant, service).
pub type BackendKey = (String, String);

/// Runs the checks of every backend that has a `health:` block.
pub struct HealthChecker {
    states: Arc<Mutex<HashMap<BackendKey, BackendHealth>>>,
    tasks: Mutex<HashMap<BackendKey, (CheckSpec, JoinHandle<()>)>>,
    /// Bumped on every state change, so the agent can reconcile.
    changed: watch::Sender<u64>,
    /// States saved by a previous agent, by backend and address: a check started for
    /// one of them starts there instead of unknown.
    saved: Mutex<HashMap<(BackendKey, SocketAddr), HealthState>>,
    /// Checks that could not run on this host, by tenant and backend.
    local_errors: IntCounterVec,
}

impl Default for HealthChecker {
    fn default() -> Self {
        HealthChecker {
            states: Arc::default(),
            tasks: Mutex::default(),
            changed: watch::channel(0).0,
            saved: Mutex::default(),
            local_errors: IntCounterVec::new(
                Opts::new(
                    "keystone_health_check_local_errors_total",
                    "Health checks that could not run on this host (out of descriptors, \
                     buffers or ports); they count neither for nor against the backend.",
                ),
                &["tenant", "backend"],
            )
            .expect("metric definitions are static and valid"),
        }
    }
}

impl HealthChecker {
    /// The checker's own metrics, for the agent's registry.
    pub fn local_error_metric(&self) -> IntCounterVec {
        self.local_errors.clone()
    }

    /// Fires whenever a backend changes state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Starts, restarts or stops checks to match `config`. Unchanged checks keep
    /// running with their history.
    pub fn sync(&self, config: &LoadedConfig) {
        let mut wanted: HashMap<BackendKey, CheckSpec> = HashMap::new();
        for tenant in &config.tenants {
            for service in &tenant.services {
                if let Some(health) = &service.health {
                    wanted.insert(
                        (tenant.name.clone(), service.name.clone()),
                        CheckSpec::from_config(service.address, health),
                    );
                }
            }
        }
        let mut tasks = self.tasks.lock().expect("health tasks lock poisoned");
        tasks.retain(|key, (spec, handle)| {
            let keep = wanted.get(key) == Some(spec);
            if !keep {
                handle.abort();
                self.states
                    .lock()
                    .expect("health lock poisoned")
                    .remove(key);
            }
            keep
        });
        for (key, spec) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let mut health = BackendHealth::new(spec.rise);
            if let Some(state) = self
                .saved
                .lock()
                .expect("saved health lock poisoned")
                .remove(&(key.clone(), spec.address))
            {
                health.state = state;
            }
            self.states
                .lock()
                .expect("health lock poisoned")
                .insert(key.clone(), health);
            let handle = tokio::spawn(run_check(
                key.clone(),
                spec.clone(),
                self.states.clone(),
                self.changed.clone(),
                self.local_errors.with_label_values(&[&key.0, &key.1]),
            ));
            tasks.insert(key, (spec, handle));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Starts the checks `sync` starts next for these backends (at these addresses)
    /// in these states: what a previous agent knew.
    pub fn restore(&self, saved: impl IntoIterator<Item = (BackendKey, SocketAddr, HealthState)>) {
        let mut map = self.saved.lock().expect("saved health lock poisoned");
        map.extend(
            saved
                .into_iter()
                .map(|(key, address, state)| ((key, address), state)),
        );
    }

    /// Every checked backend that is up or down, with its address: what to save.
    pub fn known(&self) -> Vec<(BackendKey, SocketAddr, HealthState)> {
        let tasks = self.tasks.lock().expect("health tasks lock poisoned");
        let states = self.states.lock().expect("health lock poisoned");
        let mut known: Vec<_> = tasks
            .iter()
            .filter_map(|(key, (spec, _))| {
                let state = states.get(key)?.state;
                (state != HealthState::Unknown).then(|| (key.clone(), spec.address, state))
            })
            .collect();
        known.sort_by(|a, b| a.0.cmp(&b.0));
        known
    }

    /// Health of one backend; `None` when it has no check.
    pub fn get(&self, tenant: &str, service: &str) -> Option<BackendHealth> {
        self.states
            .lock()
            .expect("health lock poisoned")
            .get(&(tenant.to_owned(), service.to_owned()))
            .cloned()
    }

    /// Why the backend's last check could not run on this host, if it could not.
    pub fn local_error(&self, tenant: &str, service: &str) -> Option<String> {
        self.get(tenant, service)?.local_error
    }

    pub fn is_up(&self, tenant: &str, service: &str) -> bool {
        // Without `get`'s clone: called for every backend on every reconcile.
        self.states
            .lock()
            .expect("health lock poisoned")
            .get(&(tenant.to_owned(), service.to_owned()))
            .is_none_or(BackendHealth::is_up)
    }
}

async fn run_check(
    key: BackendKey,
    spec: CheckSpec,
    states: Arc<Mutex<HashMap<BackendKey, BackendHealth>>>,
    changed: watch::Sender<u64>,
    local_errors: IntCounter,
) {
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&spec).await;
        let mut states = states.lock().expect("health lock poisoned");
        let Some(health) = states.get_mut(&key) else {
            return;
        };
        let local_before = health.local_error.is_some();
        let local = matches!(result, Err(ProbeError::Local(_)));
        if local {
            local_errors.inc();
        }
        let changed_state = health.record(&spec, result, Instant::now());
        if local && !local_before {
            tracing::error!(
                tenant = %key.0, service = %key.1, state = ?health.state,
                error = health.local_error.as_deref().unwrap_or(""),
                "health check cannot run on this host; the backend keeps its state"
            );
        } else if local_before && !local {
            tracing::info!(tenant = %key.0, service = %key.1, "health check runs again");
        }
        if changed_state {
            tracing::info!(
                tenant = %key.0, service = %key.1, state = ?health.state,
                error = health.last_error.as_deref().unwrap_or(""),
                "backend health changed"
            );
            drop(states);
            changed.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(probe: ProbeKind, address: SocketAddr) -> CheckSpec {
        CheckSpec {
            address,
            probe,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }

    #[test]
    fn rise_and_fall_thresholds_and_flap_damping() {
        let s = spec(ProbeKind::Tcp, "127.0.0.1:1".parse().unwrap());
        let mut h = BackendHealth::new(s.rise);
        let now = Instant::now();
        assert!(
            h.record(&s, Ok(()), now),
            "unknown → up on the first success"
        );
        assert!(!h.record(&s, Err(ProbeError::Backend("x".into())), now));
        assert!(!h.record(&s, Err(ProbeError::Backend("x".into())), now));
        assert!(
            h.record(&s, Err(ProbeError::Backend("x".into())), now),
            "down after fall=3 failures"
        );
        assert_eq!(h.state, HealthState::Down);
        assert!(!h.record(&s, Ok(()), now));
        assert!(h.record(&s, Ok(()), now), "up after rise=2 successes");
        // Flap twice more: the third down-transition within the window doubles rise.
        for _ in 0..2 {
            for _ in 0..3 {
                h.record(&s, Err(ProbeError::Backend("x".into())), now);
            }
            for _ in 0..h.rise_needed {
                h.record(&s, Ok(()), now);
            }
        }
        assert_eq!(h.state, HealthState::Up);
        assert_eq!(h.rise_needed, 4, "damped: rise doubled after 3 flaps");
    }

    #[test]
    fn the_first_probe_decides_an_unchecked_backend() {
        let s = spec(ProbeKind::Tcp, "127.0.0.1:1".parse().unwrap());
        let mut h = BackendHealth::new(s.rise);
        assert!(
            h.record(
                &s,
                Err(ProbeError::Backend("refused".into())),
                Instant::now()
            ),
            "unknown → down on the first failure, not after fall=3"
        );
        assert_eq!(h.state, HealthState::Down);
        assert!(!h.record(&s, Ok(()), Instant::now()));
        assert!(h.record(&s, Ok(()), Instant::now()), "then up after rise=2");
    }

    #[test]
    fn a_local_error_is_not_a_backend_failure() {
        let s = spec(ProbeKind::Tcp, "198.18.11.2:8080".parse().unwrap());
        let emfile = ProbeError::io(
            "connect 198.18.11.2:8080",
            std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32),
        );
        assert!(matches!(emfile, ProbeError::Local(_)), "{emfile:?}");
        let mut h = BackendHealth::new(s.rise);
        let now = Instant::now();
        h.record(&s, Ok(()), now);
        for _ in 0..10 {
            assert!(!h.record(&s, Err(emfile.clone()), now));
        }
        assert_eq!(
            (h.state, h.consecutive_failed, h.total_failed),
            (HealthState::Up, 0, 0),
            "an up backend stays up"
        );
        assert_eq!(h.total_local_errors, 10);
        let shown = h.local_error.clone().unwrap_or_default();
        assert!(shown.contains("Too many open files"), "{shown}");
        for _ in 0..s.fall {
            h.record(
                &s,
                Err(ProbeError::Backend("connection refused".into())),
                now,
            );
        }
        assert_eq!(h.state, HealthState::Down);
        for _ in 0..10 {
            assert!(!h.record(&s, Err(emfile.clone()), now));
        }
        assert_eq!(h.state, HealthState::Down, "a down backend stays down");
        h.record(&s, Ok(()), now);
        assert_eq!(h.local_error, None, "cleared once a check runs again");
    }

    #[test]
    fn http_responses_are_checked_for_status_and_body() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        assert!(check_response(ok, 200, Some("ok")).is_ok());
        assert_eq!(
            check_response(ok, 204, None),
            Err("HTTP status 200, expected 204".into())
        );
        assert_eq!(
            check_response(ok, 200, Some("ready")),
            Err("body does not contain 'ready'".into())
        );
        assert!(
            check_response("SSH-2.0", 200, None)
                .unwrap_err()
                .contains("not an HTTP response")
        );
        assert!(http_complete(ok));
        assert!(!http_complete(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"
        ));
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nblue\r\n")
                    .await;
            }
        });
        assert_eq!(probe(&spec(ProbeKind::Tcp, addr)).await, Ok(()));
        let http = |status, body: Option<&str>| {
            spec(
                ProbeKind::Http {
                    path: "/health".into(),
                    expected_status: status,
                    expected_body: body.map(Into::into),
                },
                addr,
            )
        };
        assert_eq!(probe(&http(200, Some("blue"))).await, Ok(()));
        assert!(probe(&http(200, Some("green"))).await.is_err());
        // A closed port fails fast with the reason.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(&spec(ProbeKind::Tcp, closed)).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Backend(e) if e.contains("connect")),
            "{err:?}"
        );
    }
}
