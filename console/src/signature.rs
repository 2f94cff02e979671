//! Slack's `v0` request signatures: `v0=` and the hex HMAC-SHA256 of `v0:TIMESTAMP:BODY`.
//! keyturn's webhooks are signed so, and Slack's requests to the console checked so.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// How far a request's timestamp may be from now, either way.
pub const WINDOW_SECS: u64 = 300;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The signature of `body` sent at `timestamp` (Unix seconds) under `secret`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("v0={}", hex::encode(mac(secret, &timestamp.to_string(), body).finalize().into_bytes()))
}

/// Whether `signature` signs `body` sent at `timestamp` under `secret`, and `timestamp` is
/// within [`WINDOW_SECS`] of `now`: compared in constant time, or why not.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let sent: u64 = timestamp.parse().map_err(|_| "the timestamp is not Unix seconds")?;
    if sent.abs_diff(now) > WINDOW_SECS {
        return Err("the timestamp is over 5 minutes off: a replay, or a clock astray");
    }
    let digest = signature
        .strip_prefix("v0=")
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or("the signature is not v0=HEX")?;
    mac(secret, timestamp, body).verify_slice(&digest).map_err(|_| "the signature does not match")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's published example (api.slack.com/authentication/verifying-requests-from-slack).
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const STAMP: u64 = 1_531_420_618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slack_s_published_example_signs_and_verifies() {
        assert_eq!(sign(SECRET, STAMP, BODY.as_bytes()), SIGNATURE);
        assert_eq!(verify(SECRET, "1531420618", SIGNATURE, BODY.as_bytes(), STAMP + 299), Ok(()));
    }

    #[test]
    fn tampered_stale_or_malformed_requests_are_refused() {
        let verify_at = |stamp: &str, signature: &str, body: &str, now| {
            verify(SECRET, stamp, signature, body.as_bytes(), now)
        };
        let tampered = BODY.replacen("roadrunner", "wile_e", 1);
        assert_eq!(verify_at("1531420618", SIGNATURE, &tampered, STAMP), Err("the signature does not match"));
        assert!(verify_at("1531420618", SIGNATURE, BODY, STAMP + 301).unwrap_err().contains("5 minutes"));
        assert!(verify_at("1531420618", SIGNATURE, BODY, STAMP - 301).unwrap_err().contains("5 minutes"));
        assert!(verify_at("1531420619", SIGNATURE, BODY, STAMP).is_err(), "the timestamp is signed too");
        assert!(verify_at("soon", SIGNATURE, BODY, STAMP).is_err());
        assert!(verify_at("1531420618", &SIGNATURE[3..], BODY, STAMP).is_err());
        assert!(verify_at("1531420618", "v0=zz", BODY, STAMP).is_err());
        assert!(verify_at("1531420618", &SIGNATURE[..40], BODY, STAMP).is_err(), "a prefix is no match");
    }
}
