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
//!   timestamp from before that start is refused.
//!
//! The same scheme signs the agent's outbound notifications (see [`crate::notify`]),
//! with [`sign`].

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{
    config::{Strategy, WebhookConfig},
    store::StoreError,
};

/// Header carrying the request's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "X-Keystone-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Keystone-Signature";
/// How far a timestamp may be from the agent's clock unless `webhook.tolerance` says otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// Accepted signatures remembered for replay refusal; beyond this, requests are refused
/// until old ones leave the tolerance window (a legitimate sender never gets close).
pub const MAX_REMEMBERED: usize = 10_000;

const SIGNATURE_PREFIX: &str = "sha256=";

/// The header value for `body` sent at `timestamp`: `sha256=<lowercase hex>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

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
    #[error("unknown strategy '{strategy}'; expected canary, blue_green or rolling")]
    UnknownStrategy { strategy: String },
    #[error(
        "cannot save the accepted signature, so the request was refused (it could be replayed after a restart): {0}"
    )]
    ReplayNotSaved(#[source] StoreError),
    #[error(
        "{TIMESTAMP_HEADER} {timestamp} is older than this agent's start, and the signatures accepted before it could not be read; sign again"
    )]
    BeforeStart { timestamp: u64 },
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
            ReplayNotSaved(_) => StatusCode::SERVICE_UNAVAILABLE,
            TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            MalformedJson { .. }
            | MissingField { .. }
            | InvalidField { .. }
            | UnknownStrategy { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks signed webhook requests against one secret and remembers accepted ones.
pub struct WebhookVerifier {
    secret: Vec<u8>,
    tolerance: Duration,
    /// Accepted (timestamp, MAC) pairs, ordered by timestamp so expiry is a prefix.
    accepted: Mutex<BTreeSet<(u64, [u8; 32])>>,
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

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secret", &"<redacted>")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    pub fn new(secret: impl Into<Vec<u8>>, tolerance: Duration) -> WebhookVerifier {
        WebhookVerifier {
            secret: secret.into(),
            tolerance,
            accepted: Mutex::new(BTreeSet::new()),
            replay_file: None,
            not_before: 0,
        }
    }

    /// Keeps accepted pairs in `path` across restarts: loads what is there and saves
    /// every newly accepted pair before `verify` accepts it. An unreadable file is
    /// logged and makes every timestamp older than now refused.
    pub fn with_replay_file(mut self, path: PathBuf) -> WebhookVerifier {
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ReplayFile>(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplayFile::default()),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(file) => {
                let pairs = file.accepted.into_iter().filter_map(|(ts, mac)| {
                    let mac: [u8; 32] = hex::decode(mac).ok()?.try_into().ok()?;
                    Some((ts, mac))
                });
                self.accepted.get_mut().expect("fresh lock").extend(pairs);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "accepted webhook signatures unreadable; refusing timestamps from before this start");
                self.not_before = unix_secs(SystemTime::now());
            }
        }
        self.replay_file = Some(path);
        self
    }

    fn save_replays(&self, accepted: &BTreeSet<(u64, [u8; 32])>) -> Result<(), StoreError> {
        let Some(path) = &self.replay_file else {
            return Ok(());
        };
        let file = ReplayFile {
            accepted: accepted
                .iter()
                .map(|(ts, mac)| (*ts, hex::encode(mac)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("the replay file serialises");
        crate::store::write_atomically(path, &bytes)
    }

    /// From the config: `secret`, or `secret_file` (surrounding whitespace, such as a
    /// trailing newline, is not part of the secret); `tolerance` defaults to 5 minutes.
    /// Reads the file, so call it off the async threads or accept a short block.
    pub fn from_config(config: &WebhookConfig) -> Result<WebhookVerifier, WebhookError> {
        let secret = match (&config.secret, &config.secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| WebhookError::SecretFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret);
        }
        let tolerance = config
            .tolerance
            .as_ref()
            .map(|t| t.get())
            .unwrap_or(DEFAULT_TOLERANCE);
        Ok(WebhookVerifier::new(secret, tolerance))
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Accepts a request once: headers present and well formed, timestamp within
    /// ±tolerance of `now`, signature matching, and not accepted before.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), WebhookError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
                .ok_or(WebhookError::MissingHeader { header: name })
        };
        let timestamp_text = header(TIMESTAMP_HEADER)?;
        let signature_text = header(SIGNATURE_HEADER)?;
        let timestamp: u64 = timestamp_text
            .parse()
            .map_err(|_| WebhookError::BadTimestamp {
                value: timestamp_text.clone(),
            })?;
        let presented = signature_text
            .strip_prefix(SIGNATURE_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| WebhookError::BadSignatureFormat {
                value: signature_text.clone(),
            })?;

        let now_secs = unix_secs(now);
        let tolerance_secs = self.tolerance.as_secs();
        if now_secs > timestamp && now_secs - timestamp > tolerance_secs {
            return Err(WebhookError::Stale {
                timestamp,
                age_secs: now_secs - timestamp,
                tolerance_secs,
            });
        }
        if timestamp > now_secs && timestamp - now_secs > tolerance_secs {
            return Err(WebhookError::Future {
                timestamp,
                ahead_secs: timestamp - now_secs,
                tolerance_secs,
            });
        }

        let expected = mac(&self.secret, timestamp, body);
        if !crate::api::constant_time_eq(&expected, &presented) {
            return Err(WebhookError::SignatureMismatch);
        }

        let mut accepted = self.accepted.lock().expect("replay cache lock poisoned");
        // Forget pairs whose timestamp has left the window: they are refused as stale.
        while let Some(&(oldest, _)) = accepted.first()
            && oldest.saturating_add(tolerance_secs) < now_secs
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
        if let Err(e) = self.save_replays(&accepted) {
            accepted.remove(&(timestamp, expected));
            return Err(WebhookError::ReplayNotSaved(e));
        }
        Ok(())
    }

    /// Accepted requests still remembered for replay refusal.
    pub fn remembered(&self) -> usize {
        self.accepted
            .lock()
            .expect("replay cache lock poisoned")
            .len()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The webhook body a CI pipeline sends to start a deployment.
/// An unknown field is refused by name: a misspelt `config` or `environment` must not
/// silently start a deployment with defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentWebhook {
    /// The tenant's name.
    pub service: String,
    /// `labels.version` of the backends to roll out.
    pub version: String,
    /// `canary`, `blue_green` or `rolling`.
    pub strategy: String,
    /// Target environment, e.g. `green` for a blue/green switch.
    #[serde(default)]
    pub environment: Option<String>,
    /// Pipeline metadata (e.g. `{id, url, commit, triggered_by}`), kept verbatim.
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
    /// Strategy overrides: `initial_traffic`, `increment`, `interval`, `max_traffic`,
    /// `health_threshold`, `rollback_threshold`, `min_samples`, `strategy` (switch) ...
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl DeploymentWebhook {
    /// The strategy as the config's enum (`parse_webhook` has checked it).
    pub fn strategy(&self) -> Strategy {
        parse_strategy(&self.strategy).unwrap_or_default()
    }
}

fn parse_strategy(text: &str) -> Option<Strategy> {
    match text {
        "canary" => Some(Strategy::Canary),
        "blue_green" => Some(Strategy::BlueGreen),
        "rolling" => Some(Strategy::Rolling),
        _ => None,
    }
}

/// Parses and checks a webhook body; every error is a 400 naming what is wrong.
/// Unknown fields are ignored (pipelines may send more than Keystone reads).
pub fn parse_webhook(body: &[u8]) -> Result<DeploymentWebhook, WebhookError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let webhook: DeploymentWebhook = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| json_error(&e))
        .and_then(|w| {
            deserializer
                .end()
                .map_err(|e| WebhookError::MalformedJson {
                    line: e.line(),
                    column: e.column(),
                    reason: strip_position(&e.to_string()),
                })?;
            Ok(w)
        })?;
    for (field, value) in [("service", &webhook.service), ("version", &webhook.version)] {
        if value.trim().is_empty() {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
    }
    if parse_strategy(&webhook.strategy).is_none() {
        return Err(WebhookError::UnknownStrategy {
            strategy: webhook.strategy.clone(),
        });
    }
    for (field, value) in [("pipeline", &webhook.pipeline), ("config", &webhook.config)] {
        if let Some(value) = value
            && !value.is_object()
            && !value.is_null()
        {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: format!("expected a JSON object, got {value}"),
            });
        }
    }
    Ok(webhook)
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> WebhookError {
    let inner = e.inner();
    let reason = strip_position(&inner.to_string());
    let path = e.path().to_string();
    match inner.classify() {
        serde_json::error::Category::Data => {
            if let Some(field) = reason
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                let field = if path == "." {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                WebhookError::MissingField { field }
            } else if path == "." {
                WebhookError::InvalidField {
                    field: "(body)".to_owned(),
                    reason: format!("{reason} (the body must be a JSON object)"),
                }
            } else {
                WebhookError::InvalidField {
                    field: path,
                    reason,
                }
            }
        }
        _ => WebhookError::MalformedJson {
            line: inner.line(),
            column: inner.column(),
            reason,
        },
    }
}

/// serde_json appends " at line L column C"; the error carries those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";
    const T: u64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"service":"api","version":"1.24.0","strategy":"canary"}"#;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(timestamp: &str, signature: &str) -> HeaderMap {
        // As hyper hands them over: lowercase names.
        let mut h = HeaderMap::new();
        h.insert(
            "x-keystone-timestamp",
            HeaderValue::from_str(timestamp).unwrap(),
        );
        h.insert(
            "x-keystone-signature",
            HeaderValue::from_str(signature).unwrap(),
        );
        h
    }

    fn signed(secret: &[u8], timestamp: u64, body: &[u8]) -> HeaderMap {
        headers(&timestamp.to_string(), &sign(secret, timestamp, body))
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(SECRET, DEFAULT_TOLERANCE)
    }

    #[test]
    fn sign_matches_openssl() {
        // printf '%s' '1700000000.{}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", T, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn valid_signature_passes_within_tolerance() {
        let v = verifier();
        v.verify(&signed(SECRET, T, BODY), BODY, at(T)).unwrap();
        v.verify(&signed(SECRET, T - 300, BODY), BODY, at(T))
            .unwrap();
        v.verify(&signed(SECRET, T + 300, BODY), BODY, at(T))
            .unwrap();
        assert_eq!(v.remembered(), 3);
    }

    #[test]
    fn wrong_secret_tampered_body_and_timestamp_are_refused() {
        let v = verifier();
        let wrong = v.verify(&signed(b"another-secret-entirely", T, BODY), BODY, at(T));
        assert!(
            matches!(wrong, Err(WebhookError::SignatureMismatch)),
            "{wrong:?}"
        );

        let tampered = br#"{"service":"api","version":"6.6.6","strategy":"canary"}"#;
        let body = v.verify(&signed(SECRET, T, BODY), tampered, at(T));
        assert!(
            matches!(body, Err(WebhookError::SignatureMismatch)),
            "{body:?}"
        );

        let swapped = headers(&(T + 1).to_string(), &sign(SECRET, T, BODY));
        let ts = v.verify(&swapped, BODY, at(T));
        assert!(matches!(ts, Err(WebhookError::SignatureMismatch)), "{ts:?}");
        assert_eq!(v.remembered(), 0);
    }

    #[test]
    fn missing_and_garbled_headers_are_named() {
        let v = verifier();
        let mut only_sig = HeaderMap::new();
        only_sig.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sign(SECRET, T, BODY)).unwrap(),
        );
        let e = v.verify(&only_sig, BODY, at(T)).unwrap_err();
        assert!(
            matches!(
                e,
                WebhookError::MissingHeader {
                    header: TIMESTAMP_HEADER
                }
            ),
            "{e:?}"
        );
        let mut only_ts = HeaderMap::new();
        only_ts.insert(TIMESTAMP_HEADER, HeaderValue::from(T));
        let e = v.verify(&only_ts, BODY, at(T)).unwrap_err();
        assert!(
            matches!(
                e,
                WebhookError::MissingHeader {
                    header: SIGNATURE_HEADER
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "missing header X-Keystone-Signature; sign requests as described in the API docs"
        );

        let e = v
            .verify(&headers("yesterday", &sign(SECRET, T, BODY)), BODY, at(T))
            .unwrap_err();
        assert!(matches!(e, WebhookError::BadTimestamp { .. }), "{e:?}");
        for bad in ["deadbeef", "sha1=00", "sha256=xyz", "sha256=abcd"] {
            let e = v
                .verify(&headers(&T.to_string(), bad), BODY, at(T))
                .unwrap_err();
            assert!(
                matches!(e, WebhookError::BadSignatureFormat { .. }),
                "{bad}: {e:?}"
            );
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_with_the_skew() {
        let v = verifier();
        let e = v
            .verify(&signed(SECRET, T, BODY), BODY, at(T + 3605))
            .unwrap_err();
        assert!(
            matches!(e, WebhookError::Stale { age_secs: 3605, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "X-Keystone-Timestamp 1700000000 is 3605 s behind the agent's clock; allowed ±300 s"
        );
        let e = v
            .verify(&signed(SECRET, T + 301, BODY), BODY, at(T))
            .unwrap_err();
        assert!(
            matches!(
                e,
                WebhookError::Future {
                    ahead_secs: 301,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("301 s ahead"), "{e}");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn replay_is_refused_until_the_window_passes() {
        let v = verifier();
        let h = signed(SECRET, T, BODY);
        v.verify(&h, BODY, at(T)).unwrap();
        let e = v.verify(&h, BODY, at(T + 10)).unwrap_err();
        assert!(
            matches!(e, WebhookError::Replayed { timestamp: T }),
            "{e:?}"
        );
        // A new delivery of the same body with a new timestamp is a new request.
        v.verify(&signed(SECRET, T + 1, BODY), BODY, at(T + 10))
            .unwrap();
        // After the window the old pair is forgotten, and refused as stale instead.
        let e = v.verify(&h, BODY, at(T + 301)).unwrap_err();
        assert!(matches!(e, WebhookError::Stale { .. }), "{e:?}");
        v.verify(&signed(SECRET, T + 400, BODY), BODY, at(T + 400))
            .unwrap();
        assert_eq!(v.remembered(), 1, "expired entries are dropped");
    }

    #[test]
    fn replay_cache_is_bounded() {
        let v = WebhookVerifier::new(SECRET, DEFAULT_TOLERANCE);
        for i in 0..MAX_REMEMBERED {
            let body = format!("{{\"n\":{i}}}");
            v.verify(&signed(SECRET, T, body.as_bytes()), body.as_bytes(), at(T))
                .unwrap();
        }
        let e = v.verify(&signed(SECRET, T, BODY), BODY, at(T)).unwrap_err();
        assert!(matches!(e, WebhookError::TooManyRequests { .. }), "{e:?}");
        v.verify(&signed(SECRET, T + 301, BODY), BODY, at(T + 301))
            .unwrap();
        assert_eq!(v.remembered(), 1);
    }

    #[test]
    fn from_config_reads_a_secret_file_and_tolerance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "file-secret-0123456789\n").unwrap();
        let v = WebhookVerifier::from_config(&WebhookConfig {
            secret: None,
            secret_file: Some(path),
            tolerance: Some(crate::config::DurationSpec::Text("1m".into())),
        })
        .unwrap();
        assert_eq!(v.tolerance(), Duration::from_secs(60));
        v.verify(&signed(b"file-secret-0123456789", T, BODY), BODY, at(T))
            .unwrap();
        let e = WebhookVerifier::from_config(&WebhookConfig {
            secret: None,
            secret_file: Some(dir.path().join("absent")),
            tolerance: None,
        })
        .unwrap_err();
        assert!(matches!(e, WebhookError::SecretFile { .. }), "{e:?}");
        let v = WebhookVerifier::from_config(&WebhookConfig {
            secret: Some("inline-secret-0123456789".into()),
            ..WebhookConfig::default()
        })
        .unwrap();
        assert_eq!(v.tolerance(), DEFAULT_TOLERANCE);
    }

    #[test]
    fn parses_a_full_webhook() {
        let body = br#"{
            "service": "api", "version": "1.24.0", "strategy": "blue_green",
            "environment": "green",
            "pipeline": {"id": "4711", "url": "https://ci/4711", "commit": "abc123", "triggered_by": "alice"},
            "config": {"strategy": "gradual", "interval": "30s"}
        }"#;
        let w = parse_webhook(body).unwrap();
        assert_eq!(w.service, "api");
        assert_eq!(w.strategy(), Strategy::BlueGreen);
        assert_eq!(w.environment.as_deref(), Some("green"));
        assert_eq!(w.pipeline.as_ref().unwrap()["commit"], "abc123");
        assert_eq!(w.config.as_ref().unwrap()["interval"], "30s");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = parse_webhook(
            br#"{"service": "api", "version": "1", "strategy": "canary", "confg": {}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `confg`"), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parse_errors_are_named() {
        let e = parse_webhook(b"{\"service\": \"api\",\n \"version\": }").unwrap_err();
        match &e {
            WebhookError::MalformedJson { line, column, .. } => {
                assert_eq!((*line, *column), (2, 13), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let e = parse_webhook(br#"{"service":"api","strategy":"canary"}"#).unwrap_err();
        assert!(
            matches!(&e, WebhookError::MissingField { field } if field == "version"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "missing field 'version'");

        let e =
            parse_webhook(br#"{"service":"api","version":124,"strategy":"canary"}"#).unwrap_err();
        assert!(
            matches!(&e, WebhookError::InvalidField { field, reason } if field == "version" && reason.contains("invalid type: integer")),
            "{e:?}"
        );

        let e = parse_webhook(br#"{"service":"api","version":"1","strategy":"foo"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown strategy 'foo'; expected canary, blue_green or rolling"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let e = parse_webhook(br#"{"service":"","version":"1","strategy":"canary"}"#).unwrap_err();
        assert_eq!(e.to_string(), "field 'service': must not be empty");

        let e = parse_webhook(br#"[1,2]"#).unwrap_err();
        assert!(matches!(e, WebhookError::InvalidField { .. }), "{e:?}");

        let e =
            parse_webhook(br#"{"service":"a","version":"1","strategy":"canary"} x"#).unwrap_err();
        assert!(matches!(e, WebhookError::MalformedJson { .. }), "{e:?}");

        let e = parse_webhook(br#"{"service":"a","version":"1","strategy":"canary","config":5}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field 'config': expected a JSON object, got 5"
        );
    }
}

/// `openapi.yaml` (served at `GET /openapi.yaml`) documents every admin route.
#[cfg(test)]
mod openapi_tests {
    use serde_yaml::Value;

    const SPEC: &str = include_str!("../openapi.yaml");

    const ROUTES: &[(&str, &str)] = &[
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.yaml"),
        ("get", "/status"),
        ("post", "/admin/reload"),
        ("get", "/tenants"),
        ("post", "/tenants/{name}/weights"),
        ("post", "/deployments/canary"),
        ("post", "/deployments/blue-green/switch"),
        ("get", "/deployments"),
        ("get", "/deployments/{id}"),
        ("post", "/deployments/{id}/promote"),
        ("post", "/deployments/{id}/abort"),
        ("post", "/deployments/{id}/rollback"),
        ("post", "/deployments/{id}/pause"),
        ("post", "/deployments/{id}/resume"),
        ("post", "/webhooks/deployment"),
    ];

    fn spec() -> Value {
        serde_yaml::from_str(SPEC).expect("openapi.yaml is not valid YAML")
    }

    #[test]
    fn lists_every_route_and_no_other() {
        let spec = spec();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3.0."));
        let paths = spec["paths"].as_mapping().unwrap();
        for (method, path) in ROUTES {
            let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[*method];
            assert!(op.is_mapping(), "{method} {path} missing");
            assert!(
                op["responses"].is_mapping(),
                "{method} {path}: no responses"
            );
        }
        let documented: usize = paths.values().map(|p| p.as_mapping().unwrap().len()).sum();
        assert_eq!(documented, ROUTES.len(), "undocumented extra operations");
    }

    #[test]
    fn open_and_signed_routes_need_no_bearer_token() {
        let spec = spec();
        assert_eq!(spec["security"][0]["bearer"], Value::Sequence(vec![]));
        for path in ["/health", "/metrics", "/openapi.yaml"] {
            assert_eq!(
                spec["paths"][path]["get"]["security"],
                Value::Sequence(vec![]),
                "{path}"
            );
        }
        let webhook = &spec["paths"]["/webhooks/deployment"]["post"];
        assert!(webhook["security"][0]["webhookSignature"].is_sequence());
        for status in ["202", "400", "401", "404", "409", "429"] {
            assert!(webhook["responses"][status].is_mapping(), "{status}");
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Mapping(m) => {
                    for (k, v) in m {
                        if k.as_str() == Some("$ref") {
                            refs.push(v.as_str().unwrap().to_owned());
                        } else {
                            walk(v, refs);
                        }
                    }
                }
                Value::Sequence(s) => s.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        let spec = spec();
        let mut refs = Vec::new();
        walk(&spec, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let mut node = &spec;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            assert!(node.is_mapping(), "{r} does not resolve");
        }
    }

    #[test]
    fn deployment_states_match_the_engine() {
        let spec = spec();
        let states: Vec<&str> = spec["components"]["schemas"]["DeploymentState"]["enum"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "progressing",
                "paused",
                "awaiting_approval",
                "completed",
                "rolled_back",
                "aborted",
                "failed"
            ]
        );
        let events: Vec<&str> =
            spec["components"]["schemas"]["Notification"]["properties"]["event"]["enum"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        assert_eq!(events, crate::config::DEPLOYMENT_EVENTS);
    }
}
