//! BGP announcements through BIRD: which VIP addresses this gateway announces
//! ([`decide`]), the routes file BIRD includes ([`routes`]), `birdc configure` and the
//! sessions ([`birdc`]), drain and undrain, and the status and metrics of all that.
//!
//! The agent calls [`Announcer::update`] every half second (and at once after a
//! drain, an undrain or at stop); the routes file is rewritten and BIRD reconfigured
//! only when the decision changed, or again after a failure (with backoff). A routes
//! file that is no longer the config's (`bgp:` removed or pointed elsewhere by a
//! reload) is emptied first, so the BIRD it feeds stops announcing. A drain is saved
//! in the state dir ([`SavedDrain`]): a restarted draining gateway stays withdrawn.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use keystone_api::{AnnounceReason, AnnounceStatus, ConfigureResult, DrainState, VipAnnounce};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::config::BgpConfig;

mod birdc;
pub mod decide;
pub mod inputs;
mod metrics;
pub mod routes;

pub use birdc::{Birdc, BirdcError};
pub use decide::{Health, Table, TenantInput};
pub use metrics::AnnounceCollector;

/// No new connection for this long after a drain's withdrawal: drained.
pub const DRAIN_QUIET: Duration = Duration::from_secs(2);
/// Retries of a failed configure start after this and double up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one update is given about the agent.
pub struct Inputs {
    pub tenants: Vec<TenantInput>,
    /// New connections so far, summed over the tenants' VIPs (a drain watches it).
    pub new_connections: u64,
}

pub struct Announcer {
    state: Mutex<State>,
    /// Serialises updates (birdc runs under it), so `state` is only held briefly.
    turn: Mutex<()>,
    configure_errors: IntCounter,
}

#[derive(Default)]
struct State {
    drain: Drain,
    /// The drain as last saved in the state dir.
    saved_drain: SavedDrain,
    stopping: bool,
    /// Where routes were last written: emptied when the config stops naming it.
    target: Option<Target>,
    /// The routes file text BIRD last accepted, and the addresses in it.
    configured: Option<(String, BTreeSet<IpAddr>)>,
    /// What the routes file announced when this agent first looked (a previous
    /// agent's routes, kept while their health is unknown); `None` before that look.
    kept: Option<BTreeSet<IpAddr>>,
    last_configure: Option<ConfigureResult>,
    retry: Option<(Instant, Duration)>,
    vips: Vec<VipAnnounce>,
    sessions: Vec<keystone_api::BgpSession>,
}

/// A routes file and the BIRD that includes it.
#[derive(Clone, Debug)]
struct Target {
    routes_file: PathBuf,
    control_socket: PathBuf,
    birdc: PathBuf,
}

impl Target {
    fn of(bgp: &BgpConfig) -> Target {
        Target {
            routes_file: bgp.routes_file.clone(),
            control_socket: bgp.control_socket.clone(),
            birdc: bgp.birdc(),
        }
    }

    /// Whether `bgp` still names this file and BIRD (another `birdc` program is
    /// only another way to reach the same BIRD).
    fn named_by(&self, bgp: Option<&BgpConfig>) -> bool {
        bgp.is_some_and(|b| {
            b.routes_file == self.routes_file && b.control_socket == self.control_socket
        })
    }

    /// Writes `text` as the routes file and has BIRD read it.
    fn configure(&self, text: &str) -> Result<(), String> {
        routes::write(&self.routes_file, text).map_err(|e| e.to_string())?;
        self.birdc().configure().map_err(|e| e.to_string())
    }

    fn birdc(&self) -> Birdc<'_> {
        Birdc {
            program: &self.birdc,
            socket: &self.control_socket,
        }
    }
}

/// The drain as saved in the state dir (`drain.json`), so that a gateway drained
/// for maintenance and restarted stays withdrawn until `undrain`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedDrain {
    pub state: DrainState,
    /// The drain's bound: a restarted drain waits for quiet again, this long at most.
    pub timeout_seconds: f64,
}

impl Default for SavedDrain {
    fn default() -> SavedDrain {
        SavedDrain {
            state: DrainState::Serving,
            timeout_seconds: 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
enum Drain {
    #[default]
    Serving,
    Draining {
        timeout: Duration,
        deadline: Instant,
        quiet_since: Instant,
        /// `new_connections` when last seen.
        seen: u64,
    },
    Drained,
    TimedOut,
}

impl Drain {
    fn state(self) -> DrainState {
        match self {
            Drain::Serving => DrainState::Serving,
            Drain::Draining { .. } => DrainState::Draining,
            Drain::Drained => DrainState::Drained,
            Drain::TimedOut => DrainState::DrainTimeout,
        }
    }

    /// A drain's progress given the new-connection count now.
    fn advance(self, new_connections: u64, now: Instant) -> Drain {
        let Drain::Draining {
            timeout,
            deadline,
            mut quiet_since,
            seen,
        } = self
        else {
            return self;
        };
        if seen != new_connections {
            quiet_since = now;
        }
        if now.duration_since(quiet_since) >= DRAIN_QUIET {
            Drain::Drained
        } else if now >= deadline {
            Drain::TimedOut
        } else {
            Drain::Draining {
                timeout,
                deadline,
                quiet_since,
                seen: new_connections,
            }
        }
    }

    /// A drain started now: `new_connections` is the count now.
    fn start(timeout: Duration, new_connections: u64, now: Instant) -> Drain {
        Drain::Draining {
            timeout,
            deadline: now + timeout,
            quiet_since: now,
            seen: new_connections,
        }
    }

    fn saved(self) -> SavedDrain {
        let timeout = match self {
            Drain::Draining { timeout, .. } => timeout,
            _ => Duration::ZERO,
        };
        SavedDrain {
            state: self.state(),
            timeout_seconds: timeout.as_secs_f64(),
        }
    }

    /// The drain a previous agent saved; a drain in progress starts its wait again.
    fn restored(saved: SavedDrain, now: Instant) -> Drain {
        match saved.state {
            DrainState::Draining => Drain::start(
                Duration::try_from_secs_f64(saved.timeout_seconds).unwrap_or_default(),
                0,
                now,
            ),
            DrainState::Drained => Drain::Drained,
            DrainState::DrainTimeout => Drain::TimedOut,
            _ => Drain::Serving,
        }
    }
}

impl Default for Announcer {
    fn default() -> Announcer {
        Announcer::new()
    }
}

impl Announcer {
    pub fn new() -> Announcer {
        Announcer {
            configure_errors: IntCounter::new(
                "keystone_bgp_configure_errors_total",
                "`birdc configure` calls that failed or that BIRD refused (retried with backoff).",
            )
            .expect("metric definitions are static and valid"),
            state: Mutex::default(),
            turn: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("announce state lock poisoned")
    }

    /// Withdraws every VIP and watches new connections (`new_connections` now) until
    /// none arrived for [`DRAIN_QUIET`] (drained) or `timeout` passed (drain_timeout).
    pub fn start_drain(&self, timeout: Duration, new_connections: u64) {
        self.state().drain = Drain::start(timeout, new_connections, Instant::now());
    }

    /// Takes up the drain a previous agent saved (see [`SavedDrain`]).
    pub fn restore_drain(&self, saved: SavedDrain) {
        let mut s = self.state();
        s.drain = Drain::restored(saved, Instant::now());
        s.saved_drain = saved;
    }

    /// The drain to save when it changed since the last [`Announcer::drain_saved`].
    pub fn drain_to_save(&self) -> Option<SavedDrain> {
        let s = self.state();
        let now = s.drain.saved();
        (now != s.saved_drain).then_some(now)
    }

    /// `saved` is in the state dir now.
    pub fn drain_saved(&self, saved: SavedDrain) {
        self.state().saved_drain = saved;
    }

    /// Whether routes were written to a file the config no longer names and not yet
    /// emptied (the status then still shows the announcer).
    pub fn withdrawing_stale(&self, bgp: Option<&BgpConfig>) -> bool {
        let s = self.state();
        s.target.as_ref().is_some_and(|t| !t.named_by(bgp))
    }

    /// Back to serving: VIPs are announced again as they qualify.
    pub fn undrain(&self) {
        self.state().drain = Drain::Serving;
    }

    /// The agent is stopping without `--keep-forwarding`: withdraw everything.
    pub fn stop(&self) {
        self.state().stopping = true;
    }

    /// Decides, and when the decision differs from what BIRD has, writes the routes
    /// file and reconfigures BIRD; reads BIRD's sessions. `bgp` is the config's block:
    /// without it (or when it names another file or BIRD) the old file is emptied.
    pub fn update(&self, bgp: Option<&BgpConfig>, inputs: Inputs) {
        let _turn = self.turn.lock().expect("announce turn lock poisoned");
        let now = Instant::now();
        if !self.empty_stale_target(bgp, now) {
            return;
        }
        let Some(bgp) = bgp else {
            return;
        };
        let withdraw = {
            let mut s = self.state();
            s.drain = s.drain.advance(inputs.new_connections, now);
            if s.stopping {
                Some(AnnounceReason::Stopping)
            } else if matches!(s.drain, Drain::Serving) {
                None
            } else {
                Some(AnnounceReason::Draining)
            }
        };
        let decisions = {
            let mut s = self.state();
            let kept = s.kept.get_or_insert_with(|| {
                let text = std::fs::read_to_string(&bgp.routes_file).unwrap_or_default();
                routes::announced_in(&text).into_iter().collect()
            });
            let decisions = decide::decide(&inputs.tenants, bgp.vips.as_deref(), withdraw, kept);
            // Kept only until its health is known.
            kept.retain(|a| {
                decisions.iter().any(|(d, r)| {
                    d == a
                        && matches!(
                            r,
                            AnnounceReason::KeptUntilHealthKnown | AnnounceReason::HealthUnknown
                        )
                })
            });
            decisions
        };
        let wanted: BTreeSet<IpAddr> = decisions
            .iter()
            .filter(|(_, r)| r.announces())
            .map(|(a, _)| *a)
            .collect();
        let text = routes::render(&wanted.iter().copied().collect::<Vec<_>>());
        let target = Target::of(bgp);
        // The decisions are published before BIRD is asked, so that no status shows a
        // configure result without the VIPs it was for.
        {
            let mut s = self.state();
            let announced = s
                .configured
                .as_ref()
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            s.vips = decisions
                .into_iter()
                .map(|(address, reason)| VipAnnounce {
                    address: address.to_string(),
                    announced: announced.contains(&address),
                    reason,
                })
                .collect();
        }
        if self.due(now, |configured| configured != Some(&text)) {
            let result = target.configure(&text);
            self.record_configure(result, &target, text, wanted, now);
        }
        let sessions = target.birdc().sessions();
        let mut s = self.state();
        match sessions {
            Ok(sessions) => s.sessions = sessions,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read BIRD's protocols");
                s.sessions.clear();
            }
        }
    }

    /// Empties the routes file last written when `bgp` no longer names it (or its
    /// BIRD), so that BIRD stops announcing; false while that has not succeeded.
    fn empty_stale_target(&self, bgp: Option<&BgpConfig>, now: Instant) -> bool {
        let stale = {
            let s = self.state();
            s.target.clone().filter(|t| !t.named_by(bgp))
        };
        let Some(stale) = stale else {
            return true;
        };
        if !self.due(now, |_| true) {
            return false;
        }
        tracing::info!(
            routes_file = %stale.routes_file.display(),
            control_socket = %stale.control_socket.display(),
            "{}: emptying the routes file it last wrote",
            if bgp.is_some() {
                "the `bgp:` block names another routes file or control socket"
            } else {
                "the `bgp:` block is gone"
            }
        );
        let text = routes::render(&[]);
        let result = stale.configure(&text);
        let ok = result.is_ok();
        self.record_configure(result, &stale, text, BTreeSet::new(), now);
        if ok {
            let mut s = self.state();
            s.target = None;
            s.configured = None;
            s.vips.clear();
            s.sessions.clear();
        }
        ok
    }

    /// Whether to configure now: `differs` says whether BIRD's accepted text differs
    /// from the wanted one; a failure waits out its backoff.
    fn due(&self, now: Instant, differs: impl FnOnce(Option<&String>) -> bool) -> bool {
        let s = self.state();
        differs(s.configured.as_ref().map(|(t, _)| t)) && s.retry.is_none_or(|(at, _)| now >= at)
    }

    fn record_configure(
        &self,
        result: Result<(), String>,
        target: &Target,
        text: String,
        wanted: BTreeSet<IpAddr>,
        now: Instant,
    ) {
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut s = self.state();
        // Also after a failure: the file may have been written.
        s.target = Some(target.clone());
        match result {
            Ok(()) => {
                let addresses: Vec<String> = wanted.iter().map(IpAddr::to_string).collect();
                tracing::info!(announced = ?addresses, "BIRD reconfigured with the VIP routes");
                for vip in &mut s.vips {
                    vip.announced = wanted.iter().any(|a| a.to_string() == vip.address);
                }
                s.configured = Some((text, wanted));
                s.retry = None;
                s.last_configure = Some(ConfigureResult {
                    ok: true,
                    at,
                    error: None,
                });
            }
            Err(error) => {
                self.configure_errors.inc();
                let backoff = s
                    .retry
                    .map_or(FIRST_BACKOFF, |(_, b)| (b * 2).min(MAX_BACKOFF));
                tracing::warn!(%error, retry_in = ?backoff, "birdc configure failed; the VIP routes BIRD has may be stale");
                s.retry = Some((now + backoff, backoff));
                s.last_configure = Some(ConfigureResult {
                    ok: false,
                    at,
                    error: Some(error),
                });
            }
        }
    }

    pub fn status(&self) -> AnnounceStatus {
        let s = self.state();
        AnnounceStatus {
            drain: s.drain.state(),
            last_configure: s.last_configure.clone(),
            sessions: s.sessions.clone(),
            vips: s.vips.clone(),
        }
    }

    pub fn configure_errors(&self) -> &IntCounter {
        &self.configure_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_ends_after_quiet_or_at_its_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let start = |timeout| Drain::start(timeout, 10, t0);
        // New connections until 3 s, then quiet: drained 2 s later.
        let mut d = start(s(30));
        for (at, count) in [(0, 10), (1, 12), (3, 15), (4, 15)] {
            d = d.advance(count, t0 + s(at));
            assert_eq!(d.state(), DrainState::Draining, "at {at} s");
        }
        assert_eq!(d.advance(15, t0 + s(5)).state(), DrainState::Drained);
        // Never quiet: the deadline ends it.
        let mut d = start(s(3));
        for at in 0..3 {
            d = d.advance(at, t0 + s(at));
        }
        assert_eq!(d.advance(99, t0 + s(3)).state(), DrainState::DrainTimeout);
    }
}
