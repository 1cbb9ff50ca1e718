//! The signed deployment webhook (`POST /webhooks/deployment`): signature and
//! timestamp checks, replay refusal, and parsing of the `DeploymentWebhook` body.
//!
//! # Signing scheme
//!
//! A sender shares a secret with the agent (`webhook.secret` or `webhook.secret_file`)
//! and sends two headers with the raw JSON body:
//!
//! ```text
//! X-Keystone-Timestamp: <unix time in seconds>
//! X-Keystone-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<raw body>")>
//! ```
//!
//! The timestamp is part of the signed message, so it cannot be swapped for a fresh
//! one. The agent refuses a request when:
//!
//! - a header is missing or not of that form;
//! - the timestamp is more than `webhook.tolerance` (default 5 minutes) behind or
//!   ahead of the agent's clock;
//! - the signature does not match (compared in constant time);
//! - the same (timestamp, signature) pair was already accepted: within the tolerance
//!   window a signed request is accepted once (accepted pairs are remembered until
//!   their timestamp leaves the window, at most [`MAX_REMEMBERED`] of them). The
//!   agent saves them in its state directory before it answers, so a restart —
//!   clean or a crash — does not reopen the window; a request whose pair cannot be
//!   saved is refused (503), and if the saved pairs cannot be read at start, every
//!   timestamp from before that start is refused. A member of a fleet also claims
//!   the pair in etcd first (`fleet/replay.rs`), so a delivery accepted by one
//!   gateway is a replay on every other; if etcd cannot answer it is refused (503).
//!
//! The scheme itself (headers, HMAC, tolerance, compare) is [`crate::signing`]; the
//! same scheme signs the agent's outbound notifications (see [`crate::notify`]).
//!
//! Here: the error a refusal answers with; [`WebhookVerifier`] (`verifier.rs`) checks
//! a request, its replay cache (`replay.rs`) remembers accepted ones across restarts,
//! and `body.rs` parses the seed's [`DeploymentWebhook`] body. The route handler is
//! `api.rs`'s `webhook`.

mod body;
#[cfg(test)]
mod openapi_tests;
mod replay;
mod verifier;

use std::{path::PathBuf, time::Duration};

use axum::http::StatusCode;

pub use self::{
    body::{DeploymentWebhook, parse_webhook},
    verifier::WebhookVerifier,
};
pub use crate::signing::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use crate::{fleet::FleetError, requests::RequestError, store::StoreError};

/// How far a timestamp may be from the agent's clock unless `webhook.tolerance` says otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// Accepted signatures remembered for replay refusal; beyond this, requests are refused
/// until old ones leave the tolerance window (a legitimate sender never gets close).
pub const MAX_REMEMBERED: usize = 10_000;

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read webhook.secret_file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook secret is empty; set webhook.secret or webhook.secret_file")]
    EmptySecret,
    #[error("missing header {header}; sign requests as described in the API docs")]
    MissingHeader { header: &'static str },
    #[error("{TIMESTAMP_HEADER} '{value}' is not a Unix time in seconds")]
    BadTimestamp { value: String },
    #[error("{SIGNATURE_HEADER} '{value}' is not of the form sha256=<64 hex digits>")]
    BadSignatureFormat { value: String },
    #[error(
        "{TIMESTAMP_HEADER} {timestamp} is {age_secs} s behind the agent's clock; allowed ±{tolerance_secs} s"
    )]
    Stale {
        timestamp: u64,
        age_secs: u64,
        tolerance_secs: u64,
    },
    #[error(
        "{TIMESTAMP_HEADER} {timestamp} is {ahead_secs} s ahead of the agent's clock; allowed ±{tolerance_secs} s"
    )]
    Future {
        timestamp: u64,
        ahead_secs: u64,
        tolerance_secs: u64,
    },
    #[error(
        "{SIGNATURE_HEADER} does not match HMAC-SHA256 of \"<timestamp>.<body>\": wrong secret, or the body or timestamp changed in transit"
    )]
    SignatureMismatch,
    #[error(
        "this request (timestamp {timestamp}) was already accepted; sign each delivery with a new timestamp"
    )]
    Replayed { timestamp: u64 },
    #[error(
        "{remembered} signed requests accepted within the last {tolerance_secs} s; refusing more until older ones expire"
    )]
    TooManyRequests {
        remembered: usize,
        tolerance_secs: u64,
    },
    #[error("malformed JSON at line {line} column {column}: {reason}")]
    MalformedJson {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("missing field '{field}'")]
    MissingField { field: String },
    #[error("field '{field}': {reason}")]
    InvalidField { field: String, reason: String },
    #[error("unknown field `{field}`; expected one of {known}")]
    UnknownField { field: String, known: String },
    #[error("unknown strategy '{strategy}'; expected canary, blue_green or rolling")]
    UnknownStrategy { strategy: String },
    /// A step parameter in `config` (named `config.…`), refused as in a request.
    #[error(transparent)]
    Config(RequestError),
    #[error(
        "cannot save the accepted signature, so the request was refused (it could be replayed after a restart): {0}"
    )]
    ReplayNotSaved(#[source] StoreError),
    #[error(
        "{TIMESTAMP_HEADER} {timestamp} is older than this agent's start, and the signatures accepted before it could not be read; sign again"
    )]
    BeforeStart { timestamp: u64 },
    /// A member of a fleet cannot tell whether another gateway accepted the delivery.
    #[error(
        "cannot check this delivery against the ones the fleet accepted, so it was refused: {0}"
    )]
    Fleet(#[source] FleetError),
}

impl WebhookError {
    /// The HTTP status the API answers with: 400 for a bad body, 401 for a bad,
    /// missing, stale or replayed signature, 429 when too many were accepted, 500 for
    /// the agent's own secret.
    pub fn status(&self) -> StatusCode {
        use WebhookError::*;
        match self {
            SecretFile { .. } | EmptySecret => StatusCode::INTERNAL_SERVER_ERROR,
            MissingHeader { .. }
            | BadTimestamp { .. }
            | BadSignatureFormat { .. }
            | Stale { .. }
            | Future { .. }
            | SignatureMismatch
            | Replayed { .. }
            | BeforeStart { .. } => StatusCode::UNAUTHORIZED,
            ReplayNotSaved(_) | Fleet(_) => StatusCode::SERVICE_UNAVAILABLE,
            TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            MalformedJson { .. }
            | MissingField { .. }
            | InvalidField { .. }
            | UnknownField { .. }
            | UnknownStrategy { .. }
            | Config(RequestError::Body(_)) => StatusCode::BAD_REQUEST,
            Config(RequestError::Param(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}
