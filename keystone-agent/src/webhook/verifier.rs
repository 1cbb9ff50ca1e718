//! [`WebhookVerifier`]: one secret and tolerance, checking each signed request's
//! headers, timestamp and signature, then its replay cache.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use axum::http::HeaderMap;

use super::{DEFAULT_TOLERANCE, WebhookError, replay::ReplayCache};
use crate::{
    config::WebhookConfig,
    fleet::Fleet,
    signing::{self, Mac, SIGNATURE_HEADER, Skew, TIMESTAMP_HEADER, unix_secs},
};

/// Checks signed webhook requests against one secret and remembers accepted ones.
pub struct WebhookVerifier {
    secret: Vec<u8>,
    tolerance: Duration,
    /// Accepted requests, for replay refusal.
    replay: Mutex<ReplayCache>,
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
            replay: Mutex::default(),
        }
    }

    /// Keeps accepted pairs in `path` across restarts: loads what is there and saves
    /// every newly accepted pair before `verify` accepts it. An unreadable file is
    /// logged and makes every timestamp older than now refused.
    pub fn with_replay_file(mut self, path: PathBuf) -> WebhookVerifier {
        self.replay.get_mut().expect("fresh lock").load(path);
        self
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
        self.verify_in(headers, body, now, None)
    }

    /// [`WebhookVerifier::verify`] for a member of `fleet`: a verified request is
    /// first claimed for the whole fleet (the same delivery sent to another gateway
    /// is a replay too), then accepted here. If etcd cannot say, it is refused (503).
    pub fn verify_in(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
        fleet: Option<&Fleet>,
    ) -> Result<(), WebhookError> {
        let (timestamp, expected) = self.check(headers, body, now)?;
        let now_secs = unix_secs(now);
        let tolerance_secs = self.tolerance.as_secs();
        if let Some(fleet) = fleet {
            // Kept until the timestamp has left the window on either side of now.
            let keep = 2 * self.tolerance;
            let claimed = fleet
                .claim_delivery(timestamp, &hex::encode(expected), keep)
                .map_err(WebhookError::Fleet)?;
            if !claimed {
                return Err(WebhookError::Replayed { timestamp });
            }
        }
        self.replay
            .lock()
            .expect("replay cache lock poisoned")
            .accept(timestamp, expected, now_secs, tolerance_secs)
    }

    /// A request's timestamp and MAC, if its headers are well formed, its timestamp
    /// within ±tolerance of `now` and its signature matching.
    fn check(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(u64, Mac), WebhookError> {
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
        let presented = signing::parse_signature(&signature_text).ok_or_else(|| {
            WebhookError::BadSignatureFormat {
                value: signature_text.clone(),
            }
        })?;

        let now_secs = unix_secs(now);
        let tolerance_secs = self.tolerance.as_secs();
        signing::check_timestamp(timestamp, now_secs, tolerance_secs).map_err(
            |skew| match skew {
                Skew::Behind(age_secs) => WebhookError::Stale {
                    timestamp,
                    age_secs,
                    tolerance_secs,
                },
                Skew::Ahead(ahead_secs) => WebhookError::Future {
                    timestamp,
                    ahead_secs,
                    tolerance_secs,
                },
            },
        )?;

        let expected = signing::verify(&self.secret, timestamp, body, &presented)
            .ok_or(WebhookError::SignatureMismatch)?;
        Ok((timestamp, expected))
    }

    /// Accepted requests still remembered for replay refusal.
    pub fn remembered(&self) -> usize {
        self.replay
            .lock()
            .expect("replay cache lock poisoned")
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use axum::http::{HeaderValue, StatusCode};

    use super::*;
    use crate::webhook::{MAX_REMEMBERED, sign};

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
}
