//! Webhook requests per Standard Webhooks: the signing secret, the signature, one POST and what
//! its outcome means for retrying (status classes, `Retry-After`, exponential backoff with jitter).
//! Receivers verify `webhook-signature` = `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body")).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use std::time::Duration;

/// A signing key, from `whsec_<base64>` (the prefix is optional, as in the reference libraries).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = B64
            .decode(b64)
            .map_err(|e| format!("must be whsec_ followed by base64 ({e})"))?;
        if key.len() < 16 {
            return Err("must hold at least 16 bytes of key".into());
        }
        Ok(Self(key))
    }

    /// `v1,<base64 signature>` of the message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Whether any `v1` entry of a (space separated) `webhook-signature` header is valid.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        header.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b| B64.decode(b).ok())
                .is_some_and(|raw| mac.clone().verify_slice(&raw).is_ok())
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth trying again (5xx, 408, 429, timeouts, connection errors), not before `retry_after`
    /// when the receiver said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request itself (other 4xx): retrying cannot help.
    Rejected {
        reason: String,
    },
}

/// Posts one signed request.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    secret: Secret,
}

impl Client {
    pub fn new(url: &str, secret: Secret, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        Self {
            agent,
            url: url.to_string(),
            secret,
        }
    }

    /// POSTs `body` as message `id`. The same id is used for every attempt of one batch, so it is
    /// also the `Idempotency-Key`.
    pub fn post(&self, id: &str, body: &[u8], now_unix: i64) -> Attempt {
        let signature = self.secret.sign(id, now_unix, body);
        let result = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", now_unix.to_string())
            .header("webhook-signature", signature)
            .header("idempotency-key", id)
            .send(body);
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now_unix));
                classify(status, retry_after)
            }
            Err(e) => Attempt::Retry {
                reason: format!("request failed: {}", error_kind(&e)),
                retry_after: None,
            },
        }
    }
}

/// A description of a transport error without the URL (it may carry credentials).
fn error_kind(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::Io(_) => "i/o error",
        ureq::Error::ConnectionFailed => "connection failed",
        ureq::Error::HostNotFound => "host not found",
        ureq::Error::Tls(_) => "tls error",
        _ => "transport error",
    }
}

pub fn classify(status: u16, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        408 | 425 | 429 | 500..=599 => Attempt::Retry {
            reason: format!("HTTP {status}"),
            retry_after,
        },
        _ => Attempt::Rejected {
            reason: format!("HTTP {status}"),
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110).
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(Duration::from_secs(
        (at.timestamp() - now_unix).max(0) as u64
    ))
}

/// The longest `Retry-After` obeyed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delay before retry `attempt` (1 = first retry): exponential from `initial`, capped at `max`,
/// with "equal jitter" (half fixed, half random) so a fleet of workers does not retry in step.
/// A receiver's `Retry-After` is a floor, capped at [`MAX_RETRY_AFTER`] so a hostile value cannot
/// park the queue for days.
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
    let delay = half + Duration::from_millis(jitter);
    match retry_after {
        Some(r) => delay.max(r.min(MAX_RETRY_AFTER)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signature_matches_the_specification_example() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(s.sign(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()), SPEC_SIG);
        assert!(s.verify(
            SPEC_ID,
            SPEC_TS,
            SPEC_BODY.as_bytes(),
            &format!("v1,bogus {SPEC_SIG}")
        ));
        assert!(!s.verify(SPEC_ID, SPEC_TS + 1, SPEC_BODY.as_bytes(), SPEC_SIG));
        assert!(!s.verify(SPEC_ID, SPEC_TS, b"{}", SPEC_SIG));
    }

    #[test]
    fn secrets_must_be_base64_keys() {
        assert!(Secret::parse("whsec_%%%").is_err());
        assert!(
            Secret::parse("whsec_c2hvcnQ=").is_err(),
            "5 bytes is too short"
        );
        assert!(format!("{:?}", Secret::parse(SPEC_SECRET).unwrap()) == "Secret(..)");
    }

    #[test]
    fn statuses_are_classified_for_retrying() {
        assert_eq!(classify(204, None), Attempt::Delivered);
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(classify(s, None), Attempt::Retry { .. }), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 413, 422, 301] {
            assert!(matches!(classify(s, None), Attempt::Rejected { .. }), "{s}");
        }
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_retry_after() {
        let ms = Duration::from_millis;
        for attempt in 1..12 {
            let d = backoff(attempt, ms(100), ms(5000), None);
            let nominal = ms(100 * (1 << (attempt - 1))).min(ms(5000));
            assert!(d >= nominal / 2 && d <= nominal, "{attempt}: {d:?}");
        }
        assert_eq!(
            backoff(1, ms(100), ms(1000), Some(ms(3000))),
            ms(3000),
            "Retry-After above the backoff wins, even above max"
        );
        assert_eq!(
            backoff(1, ms(100), ms(5000), Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER,
            "but is capped"
        );
    }
}
