//! `status.announce`: which VIPs the agent announces to BGP (through BIRD) and why,
//! the drain state, the last `birdc configure` and BIRD's BGP sessions.

use serde::{Deserialize, Serialize};

wire_enum! {
    /// Where a `drain` is.
    pub enum DrainState {
        /// Announcing every VIP that is ready.
        Serving = "serving",
        /// Routes withdrawn; waiting for new connections to stop.
        Draining = "draining",
        /// No new connection for 2 s after the withdrawal.
        Drained = "drained",
        /// New connections still arrived when `drain_timeout` ran out.
        DrainTimeout = "drain_timeout",
    }
}

wire_enum! {
    /// Why a VIP is announced or not.
    pub enum AnnounceReason {
        /// Programmed, and at least one backend is up: announced.
        Ready = "ready",
        /// A backend's health check has not finished yet (and none is up).
        HealthUnknown = "health unknown",
        /// Every backend's health check says down.
        AllBackendsDown = "all backends down",
        /// `drain` withdrew it.
        Draining = "draining",
        /// The data plane holds no table for it (yet).
        NotProgrammed = "not programmed",
        /// Its table sends new flows nowhere (every backend at weight 0).
        EmptyTable = "empty table",
        /// The agent is stopping (without `--keep-forwarding`).
        Stopping = "stopping",
        /// Announced: a restarted agent found it in the routes file, its pinned table
        /// forwards, and no health was saved; kept until the first check results.
        KeptUntilHealthKnown = "kept until health is known",
    }
}

impl AnnounceReason {
    /// Whether a VIP with this reason is announced.
    pub fn announces(self) -> bool {
        matches!(
            self,
            AnnounceReason::Ready | AnnounceReason::KeptUntilHealthKnown
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnnounceStatus {
    pub drain: DrainState,
    /// The last `birdc configure` (absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_configure: Option<ConfigureResult>,
    /// BIRD's BGP protocols (`birdc show protocols`).
    pub sessions: Vec<BgpSession>,
    pub vips: Vec<VipAnnounce>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigureResult {
    pub ok: bool,
    /// RFC 3339.
    pub at: String,
    /// Why it failed (BIRD's reply or birdc's error); absent when it worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BgpSession {
    pub name: String,
    /// The BGP state, e.g. `Established`, `Active`, `Connect` (BIRD's info column).
    pub state: String,
    /// The rest of BIRD's info column (e.g. `Socket: Connection refused`).
    pub info: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VipAnnounce {
    /// The VIP's IP address (the route is /32 or /128).
    pub address: String,
    /// In the routes file BIRD was last configured with.
    pub announced: bool,
    pub reason: AnnounceReason,
}

/// `POST /admin/drain`'s optional body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Bound on the wait for new connections to stop (default: `bgp.drain_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
}
