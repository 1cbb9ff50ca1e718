//! The one signing scheme of the agent: HMAC-SHA256 over `"<timestamp>.<raw body>"`,
//! sent as two headers, with the timestamp held to a tolerance of the receiver's
//! clock. The inbound webhook ([`crate::webhook`]) verifies it, outbound
//! notifications ([`crate::notify`]) send it, and the admin token check
//! ([`crate::admin_token`]) shares its constant-time compare.
//!
//! ```text
//! X-Keystone-Timestamp: <unix time in seconds>
//! X-Keystone-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<raw body>")>
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Header carrying the request's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "X-Keystone-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Keystone-Signature";

const SIGNATURE_PREFIX: &str = "sha256=";

/// An HMAC-SHA256 tag.
pub type Mac = [u8; 32];

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Mac {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The MAC of `body` sent at `timestamp`: HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Mac {
    hmac_sha256(secret, &[timestamp.to_string().as_bytes(), b".", body])
}

/// The header value for `body` sent at `timestamp`: `sha256=<lowercase hex>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Both headers for `body` sent at `now`, as (name, value).
pub fn signed_headers(secret: &[u8], now: SystemTime, body: &[u8]) -> [(&'static str, String); 2] {
    let timestamp = unix_secs(now);
    [
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, sign(secret, timestamp, body)),
    ]
}

/// The MAC a [`SIGNATURE_HEADER`] value carries, if it is `sha256=<64 hex digits>`.
pub fn parse_signature(value: &str) -> Option<Mac> {
    hex::decode(value.strip_prefix(SIGNATURE_PREFIX)?)
        .ok()?
        .try_into()
        .ok()
}

/// The MAC of `body` at `timestamp` if `presented` is it (compared in constant time).
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], presented: &Mac) -> Option<Mac> {
    let expected = mac(secret, timestamp, body);
    constant_time_eq(&expected, presented).then_some(expected)
}

/// How far a timestamp is from the receiver's clock, beyond the tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// This many seconds behind (older than allowed).
    Behind(u64),
    /// This many seconds ahead (further in the future than allowed).
    Ahead(u64),
}

/// Whether `timestamp` is within ±`tolerance_secs` of `now_secs`.
pub fn check_timestamp(timestamp: u64, now_secs: u64, tolerance_secs: u64) -> Result<(), Skew> {
    if expired(timestamp, now_secs, tolerance_secs) {
        return Err(Skew::Behind(now_secs - timestamp));
    }
    if timestamp > now_secs && timestamp - now_secs > tolerance_secs {
        return Err(Skew::Ahead(timestamp - now_secs));
    }
    Ok(())
}

/// Whether `timestamp` has left the tolerance window behind `now_secs`.
pub fn expired(timestamp: u64, now_secs: u64, tolerance_secs: u64) -> bool {
    timestamp.saturating_add(tolerance_secs) < now_secs
}

/// `t` as Unix seconds (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compares without an early exit, so response time does not leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: u64 = 1_700_000_000;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 1 and 2 (HMAC-SHA-256).
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya ", b"want for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
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
    fn a_signature_verifies_only_with_its_secret_body_and_timestamp() {
        let presented = parse_signature(&sign(b"secret", T, b"{}")).unwrap();
        assert_eq!(verify(b"secret", T, b"{}", &presented), Some(presented));
        assert_eq!(verify(b"other", T, b"{}", &presented), None);
        assert_eq!(verify(b"secret", T, b"{ }", &presented), None);
        assert_eq!(verify(b"secret", T + 1, b"{}", &presented), None);
        for bad in ["deadbeef", "sha1=00", "sha256=xyz", "sha256=abcd"] {
            assert_eq!(parse_signature(bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        assert_eq!(check_timestamp(T, T, 300), Ok(()));
        assert_eq!(check_timestamp(T - 300, T, 300), Ok(()));
        assert_eq!(check_timestamp(T + 300, T, 300), Ok(()));
        assert_eq!(check_timestamp(T - 301, T, 300), Err(Skew::Behind(301)));
        assert_eq!(check_timestamp(T + 301, T, 300), Err(Skew::Ahead(301)));
        assert!(expired(T - 301, T, 300) && !expired(T - 300, T, 300));
    }

    #[test]
    fn signed_headers_carry_the_timestamp_they_sign() {
        let now = UNIX_EPOCH + Duration::from_secs(T);
        let [(ts_name, ts), (sig_name, sig)] = signed_headers(b"secret", now, b"{}");
        assert_eq!((ts_name, ts.as_str()), (TIMESTAMP_HEADER, "1700000000"));
        assert_eq!(
            (sig_name, sig),
            (SIGNATURE_HEADER, sign(b"secret", T, b"{}"))
        );
    }

    #[test]
    fn constant_time_eq_compares_length_and_bytes() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
    }
}
