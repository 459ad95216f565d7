//! Identifier normalisation: the one place raw identifier text becomes a stored value.
//!
//! Emails are trimmed, lower-cased and SHA-256 hashed; phones are parsed to E.164 and hashed;
//! values that already are SHA-256 hex are kept (lower-cased). Placeholder values (`null`,
//! `anonymous`, `0`, all-zero advertising ids, test emails) are rejected, because joining on them
//! would merge strangers. Raw emails and phones never leave this function.
//!
//! Phones in the common shapes of the North American Numbering Plan (`+1 415 555 2671`,
//! `(415) 555-2671`, `415.555.2671`, ...) take a fast path that reads the digits directly and
//! checks validity against the `phonenumber` crate's own metadata, compiled once; every other
//! phone goes through `phonenumber::parse`. Both give the same result (a property test holds
//! them equal); the fast one costs about 1 µs with the hash, the parser about 17 µs
//! (`cargo bench -p cdp-benches --bench ingest -- ingest/phone`).

use crate::identifier::{Identifier, IdentifierKind};
use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use regex::{Regex, RegexBuilder};
use sha2::{Digest, Sha256};
use std::sync::{LazyLock, Once};

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
    let digest = Sha256::digest(input.as_bytes());
    let mut buf = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    hex::encode_to_slice(digest, &mut buf).expect("64-byte buffer");
    // Hex digits are ASCII.
    std::str::from_utf8(&buf).expect("hex is ASCII").to_owned()
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
    Ok(sha256_hex(&phone_e164(v, opts)?))
}

/// The E.164 form of a trimmed phone number: the fast path when it applies, else the crate.
fn phone_e164(v: &str, opts: &NormalizeOptions) -> Result<String, NormalizeError> {
    // International prefix written as 00 (common in Europe) means the same as '+'.
    let rewritten;
    let text = match v.strip_prefix("00") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit() && c != '0') => {
            rewritten = format!("+{rest}");
            rewritten.as_str()
        }
        _ => v,
    };
    match nanp_fast(text, opts) {
        Some(result) => result,
        None => phone_e164_parsed(text, opts),
    }
}

/// The reference path: `phonenumber`'s parser and validator.
fn phone_e164_parsed(text: &str, opts: &NormalizeOptions) -> Result<String, NormalizeError> {
    widen_regex_cache();
    let number = phonenumber::parse(Some(opts.default_region), text)
        .map_err(|_| NormalizeError::InvalidPhone)?;
    if !phonenumber::is_valid(&number) {
        return Err(NormalizeError::InvalidPhone);
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// `phonenumber` compiles its metadata's regexes on demand into an LRU cache of 100. Validating
/// one North American number touches more than that (25 regions share +1), so each parse
/// recompiled regexes: about 90 µs a number. Room for all of them makes it compile each once.
/// This changes how long parsing takes, never what it returns.
fn widen_regex_cache() {
    static WIDEN: Once = Once::new();
    WIDEN.call_once(|| {
        let cache = DATABASE.cache();
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.set_capacity(4096);
    });
}

/// The fast path for the default region's common formats when it shares +1 (US, CA, ...):
/// `Some(result)` when `text` is one of them, `None` to leave it to the parser.
///
/// Accepted shapes: an optional `+1` or `1`, then a ten-digit national number starting 2-9 as
/// `NXXNXXXXXX`, `(NXX) NXX-XXXX`, `NXX-NXX-XXXX`, `NXX.NXX.XXXX`, `NXX NXX XXXX` (one space,
/// `-` or `.` between groups; the area code may be parenthesised). For these the parser reads
/// country code 1 and exactly those ten digits: no national prefix, carrier code or extension
/// to strip. Validity is the crate's rule, applied to its own patterns (see [`Nanp`]).
fn nanp_fast(text: &str, opts: &NormalizeOptions) -> Option<Result<String, NormalizeError>> {
    let nanp = &*NANP;
    if !nanp.default_regions.contains(&opts.default_region) {
        return None;
    }
    let national = nanp_national(text.as_bytes())?;
    let national = std::str::from_utf8(&national).ok()?;
    Some(if nanp.is_valid(national) {
        let mut e164 = String::with_capacity(12);
        e164.push_str("+1");
        e164.push_str(national);
        Ok(e164)
    } else {
        Err(NormalizeError::InvalidPhone)
    })
}

/// The ten national digits of a number in one of [`nanp_fast`]'s shapes.
fn nanp_national(b: &[u8]) -> Option<[u8; 10]> {
    let mut i = 0;
    if b.starts_with(b"+1") {
        i = 2;
        // The parser reads `+1415-555-2671` as country code 1415: after a bare `+1` only the
        // compact `+1NXXNXXXXXX` is a +1 number.
        let separated = matches!(b.get(i), Some(b' ' | b'-' | b'.'));
        let compact = b.len() == 12 && b[2..].iter().all(u8::is_ascii_digit);
        if !(separated || compact) {
            return None;
        }
    } else if b.len() > 10 && b[0] == b'1' {
        i = 1;
    }
    if i > 0 && matches!(b.get(i), Some(b' ' | b'-' | b'.')) {
        i += 1;
    }
    let mut out = [0u8; 10];
    let parens = b.get(i) == Some(&b'(');
    if parens {
        i += 1;
    }
    let groups: [(usize, usize); 3] = [(0, 3), (3, 6), (6, 10)];
    for (g, (from, to)) in groups.into_iter().enumerate() {
        for slot in &mut out[from..to] {
            let d = *b.get(i)?;
            if !d.is_ascii_digit() {
                return None;
            }
            *slot = d;
            i += 1;
        }
        if g == 0 && parens {
            if b.get(i) != Some(&b')') {
                return None;
            }
            i += 1;
        }
        if g < 2 && matches!(b.get(i), Some(b' ' | b'-' | b'.')) {
            i += 1;
        }
    }
    let nxx = |d: u8| (b'2'..=b'9').contains(&d);
    (i == b.len() && nxx(out[0])).then_some(out)
}

/// Validity of +1 numbers exactly as `phonenumber::is_valid` decides it, with the same metadata
/// patterns compiled once into plain regexes instead of the crate's shared, locked LRU cache.
struct Nanp {
    /// Regions whose numbers [`nanp_fast`] may read as national +1 numbers.
    default_regions: Vec<phonenumber::country::Id>,
    /// Every +1 region, in the crate's order (the main country first).
    regions: Vec<NanpRegion>,
}

struct NanpRegion {
    leading_digits: Option<Regex>,
    general: Pattern,
    /// Every number type the crate classifies, in its order.
    types: Vec<Pattern>,
}

/// A metadata descriptor: possible lengths and a pattern that must match from the first digit.
struct Pattern {
    lengths: Vec<u16>,
    regex: Regex,
}

static NANP: LazyLock<Nanp> = LazyLock::new(Nanp::load);

impl Nanp {
    fn load() -> Self {
        let compile = |source: &str| {
            // The crate builds its regexes with `ignore_whitespace`; its metadata compiles.
            RegexBuilder::new(source)
                .ignore_whitespace(true)
                .build()
                .expect("phonenumber metadata pattern")
        };
        let pattern = |d: &Descriptor| Pattern {
            lengths: d.possible_length().to_vec(),
            regex: compile(d.national_number().as_str()),
        };
        let mut regions = Vec::new();
        let mut default_regions = Vec::new();
        for id in DATABASE.region(&1).unwrap_or_default() {
            let Some(meta) = DATABASE.by_id(id) else {
                continue;
            };
            if let Ok(region) = id.parse() {
                default_regions.push(region);
            }
            let d = meta.descriptors();
            let types = [
                d.premium_rate(),
                d.toll_free(),
                d.shared_cost(),
                d.voip(),
                d.personal_number(),
                d.pager(),
                d.uan(),
                d.voicemail(),
                d.fixed_line(),
                d.mobile(),
            ];
            regions.push(NanpRegion {
                leading_digits: leading_digits(meta).map(compile),
                general: pattern(d.general()),
                types: types.into_iter().flatten().map(pattern).collect(),
            });
        }
        Nanp {
            default_regions,
            regions,
        }
    }

    /// The region the number belongs to (by leading digits, else the first region where it is
    /// a number of some type), then whether it is a number of some type there.
    fn is_valid(&self, national: &str) -> bool {
        for region in &self.regions {
            match &region.leading_digits {
                Some(re) => {
                    if starts_at_zero(re, national) {
                        return region.is_number(national);
                    }
                }
                None => {
                    if region.is_number(national) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

fn leading_digits(meta: &Metadata) -> Option<&str> {
    meta.leading_digits().map(|re| re.as_str())
}

impl NanpRegion {
    fn is_number(&self, national: &str) -> bool {
        self.general.is_match(national) && self.types.iter().any(|t| t.is_match(national))
    }
}

impl Pattern {
    fn is_match(&self, value: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(value.len() as u16)))
            && starts_at_zero(&self.regex, value)
    }
}

fn starts_at_zero(re: &Regex, value: &str) -> bool {
    re.find(value).is_some_and(|m| m.start() == 0)
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

    #[test]
    fn fast_path_reads_common_nanp_formats() {
        let us = NormalizeOptions::default();
        for raw in [
            "+14155552671",
            "+1 415 555 2671",
            "+1-415-555-2671",
            "+1 (415) 555-2671",
            "(415) 555-2671",
            "(415)555-2671",
            "415-555-2671",
            "415.555.2671",
            "415 555 2671",
            "4155552671",
            "14155552671",
            "1-415-555-2671",
        ] {
            assert_eq!(
                nanp_fast(raw, &us),
                Some(Ok("+14155552671".to_string())),
                "{raw}"
            );
        }
        // Area code 099 does not exist: decided by the fast path, as the parser would.
        assert_eq!(
            nanp_fast("(099) 555-2671", &us),
            None,
            "area codes start 2-9"
        );
        assert_eq!(
            nanp_fast("(555) 555-2671", &us),
            Some(Err(NormalizeError::InvalidPhone))
        );
        for other in [
            "+44 20 7946 0018",
            "415-555-2671 x12",
            "tel:+14155552671",
            "415--555-2671",
        ] {
            assert_eq!(nanp_fast(other, &us), None, "{other}");
        }
        let gb = NormalizeOptions::with_region("GB").unwrap();
        assert_eq!(nanp_fast("4155552671", &gb), None, "not a +1 region");
    }

    #[test]
    fn sha256_hex_vector() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Regions the fast path serves, and one it does not, as default regions.
    const REGIONS: [&str; 7] = ["US", "CA", "PR", "JM", "AG", "DO", "GB"];

    fn phone_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Mostly the shapes the fast path takes, with odd ones mixed in to probe its edges.
        let sep = prop_oneof![
            4 => prop::sample::select(vec!["", " ", "-", "."]),
            1 => prop::sample::select(vec!["  ", "/", ")", "(", "x", "- "]),
        ];
        let prefix = prop_oneof![
            4 => prop::sample::select(vec!["", "+1", "1", "+1 ", "1-", "001 ", "+1."]),
            1 => prop::sample::select(vec!["+", "00", "001", "+44", "0", "011", "+1(", " +1"]),
        ];
        let tail = prop_oneof![
            4 => Just(""),
            1 => prop::sample::select(vec!["5", " ext 5", "#", ")"]),
        ];
        (
            prefix,
            sep.clone(),
            any::<bool>(),
            "[0-9]{3}",
            sep.clone(),
            "[0-9]{3}",
            sep,
            "[0-9]{4}",
            tail,
        )
            .prop_map(|(p, s0, parens, a, s1, e, s2, l, t)| {
                let area = if parens { format!("({a})") } else { a };
                format!("{p}{s0}{area}{s1}{e}{s2}{l}{t}")
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// The fast path returns exactly what the parser returns, whenever it answers.
        #[test]
        fn phone_fast_path_equals_parser(
            text in proptest::prop_oneof![phone_text(), "[0-9 ()+.-]{0,16}"],
            region in proptest::sample::select(REGIONS.to_vec()),
        ) {
            let opts = NormalizeOptions::with_region(region).unwrap();
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Ok(());
            }
            let slow = match trimmed.strip_prefix("00") {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit() && c != '0') => {
                    phone_e164_parsed(&format!("+{rest}"), &opts)
                }
                _ => phone_e164_parsed(trimmed, &opts),
            };
            proptest::prop_assert_eq!(phone_e164(trimmed, &opts), slow);
        }
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
