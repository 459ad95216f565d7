//! Identifier normalisation: the one place raw identifier text becomes a stored value.
//!
//! Emails are trimmed, lower-cased and SHA-256 hashed; phones are parsed to E.164 and hashed;
//! values that already are SHA-256 hex are kept (lower-cased). Placeholder values (`null`,
//! `anonymous`, `0`, all-zero advertising ids, test emails) are rejected, because joining on them
//! would merge strangers. Raw emails and phones never leave this function.

use crate::identifier::{Identifier, IdentifierKind};
use sha2::{Digest, Sha256};

/// Options that vary per tenant.
#[derive(Debug, Clone)]
pub struct NormalizeOptions {
    /// Region used to read phone numbers written without a country code (ISO 3166 alpha-2).
    pub default_region: phonenumber::country::Id,
}

impl Default for NormalizeOptions {
    fn default() -> Self {
        Self {
            default_region: phonenumber::country::Id::US,
        }
    }
}

impl NormalizeOptions {
    /// Options with a default region given as an ISO code such as `"GB"`.
    pub fn with_region(region: &str) -> Result<Self, NormalizeError> {
        let default_region = region
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| NormalizeError::UnknownRegion)?;
        Ok(Self { default_region })
    }
}

/// Why a raw value cannot be an identifier. `code()` is stable and safe for logs and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("value is empty")]
    Empty,
    #[error("value is a placeholder that must never link profiles")]
    Blocked,
    #[error("not an email address")]
    InvalidEmail,
    #[error("not a valid phone number")]
    InvalidPhone,
    #[error("all-zero advertising id")]
    ZeroAdvertisingId,
    #[error("value longer than 512 bytes")]
    TooLong,
    #[error("unknown default phone region")]
    UnknownRegion,
}

impl NormalizeError {
    pub fn code(&self) -> &'static str {
        match self {
            NormalizeError::Empty => "empty",
            NormalizeError::Blocked => "blocked",
            NormalizeError::InvalidEmail => "invalid_email",
            NormalizeError::InvalidPhone => "invalid_phone",
            NormalizeError::ZeroAdvertisingId => "zero_advertising_id",
            NormalizeError::TooLong => "too_long",
            NormalizeError::UnknownRegion => "unknown_region",
        }
    }
}

const MAX_LEN: usize = 512;

/// Placeholder values sources send when they have no real id. Compared case-insensitively.
const BLOCKED_VALUES: &[&str] = &[
    "null",
    "nil",
    "none",
    "undefined",
    "anonymous",
    "unknown",
    "n/a",
    "na",
    "test",
    "guest",
    "[object object]",
];

/// Addresses typed into forms to get past them; they belong to no one.
const BLOCKED_EMAILS: &[&str] = &[
    "test@test.com",
    "test@example.com",
    "user@example.com",
    "email@example.com",
    "noreply@example.com",
    "no-reply@example.com",
    "none@none.com",
    "a@a.com",
    "asdf@asdf.com",
];

/// Normalises a raw value of `kind` into an [`Identifier`].
pub fn normalize(
    kind: IdentifierKind,
    raw: &str,
    opts: &NormalizeOptions,
) -> Result<Identifier, NormalizeError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(NormalizeError::Empty);
    }
    if trimmed.len() > MAX_LEN {
        return Err(NormalizeError::TooLong);
    }
    let value = match &kind {
        IdentifierKind::EmailSha256 => email_sha256(trimmed)?,
        IdentifierKind::PhoneSha256 => phone_sha256(trimmed, opts)?,
        IdentifierKind::DeviceId => device_id(trimmed)?,
        // Click ids are opaque tokens issued by ad platforms: case matters.
        IdentifierKind::ClickId => {
            reject_placeholder(trimmed)?;
            trimmed.to_string()
        }
        _ => {
            reject_placeholder(trimmed)?;
            trimmed.to_string()
        }
    };
    Ok(Identifier { kind, value })
}

/// `true` for exactly 64 hex digits: a value hashed upstream with SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 of `input`, lowercase hex.
pub fn sha256_hex(input: &str) -> String {
    hex::encode(Sha256::digest(input.as_bytes()))
}

fn reject_placeholder(v: &str) -> Result<(), NormalizeError> {
    // `0`, `-1`, `0000-0000`, `---`: any run made only of zeros and dashes.
    let zeros_and_dashes = v.bytes().all(|b| b == b'0' || b == b'-');
    if zeros_and_dashes || v == "-1" || BLOCKED_VALUES.iter().any(|b| v.eq_ignore_ascii_case(b)) {
        return Err(NormalizeError::Blocked);
    }
    Ok(())
}

fn email_sha256(v: &str) -> Result<String, NormalizeError> {
    if is_sha256_hex(v) {
        return Ok(v.to_ascii_lowercase());
    }
    let email = v.to_lowercase();
    let (local, domain) = email.split_once('@').ok_or(NormalizeError::InvalidEmail)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@');
    if local.is_empty() || !domain_ok || email.chars().any(char::is_whitespace) {
        return Err(NormalizeError::InvalidEmail);
    }
    if BLOCKED_EMAILS.contains(&email.as_str()) {
        return Err(NormalizeError::Blocked);
    }
    Ok(sha256_hex(&email))
}

fn phone_sha256(v: &str, opts: &NormalizeOptions) -> Result<String, NormalizeError> {
    if is_sha256_hex(v) {
        return Ok(v.to_ascii_lowercase());
    }
    // International prefix written as 00 (common in Europe) means the same as '+'.
    let text = match v.strip_prefix("00") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit() && c != '0') => {
            format!("+{rest}")
        }
        _ => v.to_string(),
    };
    let number = phonenumber::parse(Some(opts.default_region), &text)
        .map_err(|_| NormalizeError::InvalidPhone)?;
    if !phonenumber::is_valid(&number) {
        return Err(NormalizeError::InvalidPhone);
    }
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    Ok(sha256_hex(&e164))
}

fn device_id(v: &str) -> Result<String, NormalizeError> {
    // IDFA/GAID are UUIDs; Apple returns all zeros when tracking is limited.
    let hexish = v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if hexish && v.bytes().all(|b| b == b'0' || b == b'-') {
        return Err(NormalizeError::ZeroAdvertisingId);
    }
    reject_placeholder(v)?;
    if hexish {
        Ok(v.to_ascii_lowercase())
    } else {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: IdentifierKind, raw: &str) -> Result<String, NormalizeError> {
        normalize(kind, raw, &NormalizeOptions::default()).map(|id| id.value)
    }

    #[test]
    fn email_vector() {
        assert_eq!(
            norm(IdentifierKind::EmailSha256, " Person@Example.COM ").unwrap(),
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345"
        );
    }

    #[test]
    fn email_prehashed_kept_lowercase() {
        let h = "542D240129883C019E106E3B1B2D3F3CB3537C43C425364DE8E951D5A3083345";
        assert_eq!(
            norm(IdentifierKind::EmailSha256, h).unwrap(),
            h.to_ascii_lowercase()
        );
    }

    #[test]
    fn email_rejections() {
        assert_eq!(
            norm(IdentifierKind::EmailSha256, "not-an-email"),
            Err(NormalizeError::InvalidEmail)
        );
        assert_eq!(
            norm(IdentifierKind::EmailSha256, "a@b"),
            Err(NormalizeError::InvalidEmail)
        );
        assert_eq!(
            norm(IdentifierKind::EmailSha256, " TEST@test.com"),
            Err(NormalizeError::Blocked)
        );
        assert_eq!(
            norm(IdentifierKind::EmailSha256, "   "),
            Err(NormalizeError::Empty)
        );
    }

    #[test]
    fn phone_formats_agree_on_e164() {
        let expected = sha256_hex("+14155552671");
        for raw in [
            "+1 415 555 2671",
            "(415) 555-2671",
            "415.555.2671",
            "001 415 555 2671",
            "+14155552671",
        ] {
            assert_eq!(
                norm(IdentifierKind::PhoneSha256, raw).unwrap(),
                expected,
                "{raw}"
            );
        }
    }

    #[test]
    fn phone_default_region_is_configurable() {
        let gb = NormalizeOptions::with_region("gb").unwrap();
        let id = normalize(IdentifierKind::PhoneSha256, "020 7946 0018", &gb).unwrap();
        assert_eq!(id.value, sha256_hex("+442079460018"));
        assert_eq!(
            NormalizeOptions::with_region("zz").unwrap_err(),
            NormalizeError::UnknownRegion
        );
    }

    #[test]
    fn phone_rejections() {
        assert_eq!(
            norm(IdentifierKind::PhoneSha256, "12"),
            Err(NormalizeError::InvalidPhone)
        );
        assert_eq!(
            norm(IdentifierKind::PhoneSha256, "call me"),
            Err(NormalizeError::InvalidPhone)
        );
    }

    #[test]
    fn zero_advertising_ids_are_dropped() {
        assert_eq!(
            norm(
                IdentifierKind::DeviceId,
                "00000000-0000-0000-0000-000000000000"
            ),
            Err(NormalizeError::ZeroAdvertisingId)
        );
        assert_eq!(
            norm(
                IdentifierKind::DeviceId,
                "6D92078A-8246-4BA4-AE5B-76104861E7DC"
            )
            .unwrap(),
            "6d92078a-8246-4ba4-ae5b-76104861e7dc"
        );
    }

    #[test]
    fn placeholders_are_blocked() {
        for raw in [
            "null",
            "NULL",
            "undefined",
            "anonymous",
            "0",
            "-1",
            "000-000",
            "---",
        ] {
            assert_eq!(
                norm(IdentifierKind::UserId, raw),
                Err(NormalizeError::Blocked),
                "{raw}"
            );
        }
        assert_eq!(norm(IdentifierKind::UserId, " u-42 ").unwrap(), "u-42");
    }

    #[test]
    fn click_ids_keep_case() {
        assert_eq!(
            norm(IdentifierKind::ClickId, "Cj0KCQiA-AbC").unwrap(),
            "Cj0KCQiA-AbC"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_hashes_are_hex(raw in ".{0,80}") {
            for kind in IdentifierKind::BUILT_IN {
                if let Ok(id) = normalize(kind.clone(), &raw, &NormalizeOptions::default()) {
                    proptest::prop_assert!(!id.value.is_empty());
                    if matches!(kind, IdentifierKind::EmailSha256 | IdentifierKind::PhoneSha256) {
                        proptest::prop_assert!(is_sha256_hex(&id.value));
                        proptest::prop_assert_eq!(id.value.to_ascii_lowercase(), id.value.clone());
                    }
                }
            }
        }

        #[test]
        fn email_normalisation_ignores_case_and_padding(local in "[a-z0-9.]{1,12}", domain in "[a-z]{2,10}\\.(com|org|de)") {
            let email = format!("{local}@{domain}");
            let padded = format!("  {}\t", email.to_uppercase());
            proptest::prop_assert_eq!(
                norm(IdentifierKind::EmailSha256, &email),
                norm(IdentifierKind::EmailSha256, &padded)
            );
        }
    }
}
