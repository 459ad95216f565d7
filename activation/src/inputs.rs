//! What a cohort expression reads, and a fingerprint of those inputs, so that a profile update
//! re-evaluates only the cohorts whose inputs changed.
//!
//! The reads are found in the expression's text: `profile.<field>`; for counters,
//! `profile.counts["<event>"]` and `"<event>" in profile.counts`; for traits,
//! `profile.traits.<name>`, `profile.traits["<name>"]` and `"<name>" in profile.traits`.
//! Anything the analysis cannot pin down (`profile` used whole, an unknown field, a map indexed
//! by something else than a string literal) reads everything, or the whole map. A fingerprint hashes the cohort's key and expression with the values it reads as
//! the expression sees them (windows already applied at the evaluation time), so equal
//! fingerprints mean equal results: CEL evaluation is a pure function of them.

use crate::view::{days_since_last_engagement, Counts};
use cdp_proto::{Profile, Timestamp};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// The fields of a [`crate::view::ProfileView`], in a fixed order (bit `i` of [`Reads::fields`]).
const FIELDS: [&str; 10] = [
    "canonical_id",
    "lifecycle_stage",
    "segment",
    "total_touchpoints",
    "channels_active",
    "days_since_last_engagement",
    "counts",
    "traits",
    "consent",
    "identifiers",
];
const COUNTS: usize = 6;
const TRAITS: usize = 7;
const ALL_FIELDS: u16 = (1 << FIELDS.len()) - 1;

/// The inputs of one expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Bit `i`: reads `FIELDS[i]` entirely.
    fields: u16,
    /// Counters read by name (`counts["Pricing Viewed"]`) when `counts` is not read entirely.
    counters: Vec<String>,
    /// Traits read by name (`traits.plan`) when `traits` is not read entirely.
    traits: Vec<String>,
}

impl Reads {
    pub fn everything() -> Self {
        Self {
            fields: ALL_FIELDS,
            ..Self::nothing()
        }
    }

    pub fn nothing() -> Self {
        Self {
            fields: 0,
            counters: Vec::new(),
            traits: Vec::new(),
        }
    }

    /// Whether the field `name` of the view is read entirely.
    pub fn field(&self, name: &str) -> bool {
        FIELDS
            .iter()
            .position(|f| *f == name)
            .is_some_and(|i| self.fields & (1 << i) != 0)
    }

    /// Counters read by name when `counts` is not read entirely.
    pub fn counters(&self) -> &[String] {
        &self.counters
    }

    /// Traits read by name when `traits` is not read entirely.
    pub fn traits(&self) -> &[String] {
        &self.traits
    }

    /// Adds what `other` reads.
    pub fn add(&mut self, other: &Reads) {
        self.fields |= other.fields;
        self.counters.extend(other.counters.iter().cloned());
        self.traits.extend(other.traits.iter().cloned());
        self.settle();
    }

    /// Names sorted and unique, and none kept for a map read entirely.
    fn settle(&mut self) {
        for (field, names) in [(COUNTS, &mut self.counters), (TRAITS, &mut self.traits)] {
            if self.fields & (1 << field) != 0 {
                names.clear();
            }
            names.sort();
            names.dedup();
        }
    }

    /// The reads of `expression`; conservative: when in doubt, everything.
    pub fn of(expression: &str) -> Self {
        Self::parse(expression).unwrap_or_else(Self::everything)
    }

    fn parse(expression: &str) -> Option<Self> {
        let tokens = tokenize(expression)?;
        let mut reads = Reads::nothing();
        for (i, t) in tokens.iter().enumerate() {
            if *t != Token::Ident("profile") || i > 0 && tokens[i - 1] == Token::Punct('.') {
                continue;
            }
            let (Some(Token::Punct('.')), Some(Token::Ident(field))) =
                (tokens.get(i + 1), tokens.get(i + 2))
            else {
                return None;
            };
            let f = FIELDS.iter().position(|x| x == field)?;
            if f == COUNTS || f == TRAITS {
                let name = match (tokens.get(i + 3), tokens.get(i + 4), tokens.get(i + 5)) {
                    (Some(Token::Punct('[')), Some(Token::Str(name)), Some(Token::Punct(']'))) => {
                        Some(name.clone())
                    }
                    // `traits.plan`, a field of the map; `traits.exists(...)` is a macro.
                    (Some(Token::Punct('.')), Some(Token::Ident(name)), next)
                        if f == TRAITS && next != Some(&Token::Punct('(')) =>
                    {
                        Some(name.to_string())
                    }
                    _ => membership_test(&tokens, i).cloned(),
                };
                if let Some(name) = name {
                    match f {
                        COUNTS => reads.counters.push(name),
                        _ => reads.traits.push(name),
                    }
                    continue;
                }
            }
            reads.fields |= 1 << f;
        }
        reads.settle();
        Some(reads)
    }
}

/// `"Order Completed" in profile.counts`, with `profile` at `i`: the name tested, when the
/// literal is the whole left operand (nothing before it binds tighter than `in`) and the map is
/// the whole right operand.
fn membership_test<'t>(tokens: &'t [Token<'_>], i: usize) -> Option<&'t String> {
    let before = i.checked_sub(3).map(|j| &tokens[j]);
    let (Some(Token::Ident("in")), Some(Token::Str(name))) =
        (tokens.get(i.checked_sub(1)?), tokens.get(i.checked_sub(2)?))
    else {
        return None;
    };
    let left_whole = matches!(
        before,
        None | Some(Token::Punct('(' | '!' | '&' | '|' | ',' | '?' | ':'))
    );
    let right_whole = !matches!(tokens.get(i + 3), Some(Token::Punct('.' | '[')));
    (left_whole && right_whole).then_some(name)
}

#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    Ident(&'a str),
    Str(String),
    Punct(char),
}

/// Identifiers, string literals (simple escapes) and single punctuation characters; `None` for
/// what it does not handle (raw, byte or triple-quoted strings), which then reads everything.
fn tokenize(s: &str) -> Option<Vec<Token<'_>>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                return None; // r"..." or b'...'
            }
            out.push(Token::Ident(&s[start..i]));
        } else if c == b'"' || c == b'\'' {
            if bytes[i..].starts_with(&[c, c, c]) {
                return None;
            }
            let mut text = String::new();
            i += 1;
            loop {
                let ch = s[i..].chars().next()?;
                i += ch.len_utf8();
                match ch {
                    '\\' => {
                        let esc = s[i..].chars().next()?;
                        i += esc.len_utf8();
                        text.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '\\' | '"' | '\'' => esc,
                            _ => return None,
                        });
                    }
                    _ if ch as u32 == c as u32 => break,
                    _ => text.push(ch),
                }
            }
            out.push(Token::Str(text));
        } else {
            let ch = s[i..].chars().next()?;
            i += ch.len_utf8();
            out.push(Token::Punct(ch));
        }
    }
    Some(out)
}

/// The result of the evaluation whose inputs had `fingerprint`, if `inputs` (sorted
/// fingerprints, each with its result in the lowest bit) holds it.
pub fn known(inputs: &[u64], fingerprint: u64) -> Option<bool> {
    let fingerprint = fingerprint & !1;
    match inputs.binary_search(&fingerprint) {
        Ok(_) => Some(false),
        Err(i) => (inputs.get(i) == Some(&(fingerprint | 1))).then_some(true),
    }
}

/// The start of a cohort's fingerprints: its key and expression, hashed once at compile time
/// rather than with every update.
pub fn seed(key: &str, expression: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    expression.hash(&mut h);
    h.finish()
}

/// Hashes of a profile's fields as cohorts see them at an evaluation time (the values of its
/// [`crate::view::ProfileView`], computed from the profile without building the view), each
/// computed once and shared by every cohort.
pub struct InputHashes<'p> {
    profile: &'p Profile,
    now: Timestamp,
    fields: [Option<u64>; FIELDS.len()],
    /// Hashes of the counters read by name so far (absent ones included): several cohorts often
    /// read the same counter.
    counters: Vec<(&'p str, u64)>,
}

impl<'p> InputHashes<'p> {
    pub fn new(profile: &'p Profile, now: Timestamp) -> Self {
        Self {
            profile,
            now,
            fields: [None; FIELDS.len()],
            counters: Vec::new(),
        }
    }

    fn counter(&mut self, name: &str) -> u64 {
        if let Some((_, h)) = self.counters.iter().find(|(n, _)| *n == name) {
            return *h;
        }
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        let entry = self.profile.attributes.counts.get_key_value(name);
        match entry {
            Some((_, c)) => {
                1u8.hash(&mut h);
                hash_counts(&Counts::of(c, self.now), &mut h);
            }
            None => 0u8.hash(&mut h),
        }
        let h = h.finish();
        // Only counters the profile has are remembered (their name outlives `self`); a missing
        // one costs a lookup and a short hash.
        if let Some((name, _)) = entry {
            self.counters.push((name.as_str(), h));
        }
        h
    }

    fn named_trait(&self, name: &str) -> u64 {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        match self.profile.attributes.traits.get(name) {
            Some(v) => {
                1u8.hash(&mut h);
                hash_json(v, &mut h);
            }
            None => 0u8.hash(&mut h),
        }
        h.finish()
    }

    fn field(&mut self, i: usize) -> u64 {
        if let Some(h) = self.fields[i] {
            return h;
        }
        let (p, now) = (self.profile, self.now);
        let a = &p.attributes;
        let mut h = DefaultHasher::new();
        match i {
            0 => p.canonical_id.hash(&mut h),
            1 => a
                .lifecycle_stage
                .as_deref()
                .unwrap_or_default()
                .hash(&mut h),
            2 => a.segment.as_deref().unwrap_or_default().hash(&mut h),
            3 => a.total_touchpoints.hash(&mut h),
            4 => {
                for s in &a.channels_active {
                    s.as_str().hash(&mut h);
                }
            }
            5 => days_since_last_engagement(p, now).hash(&mut h),
            6 => {
                for (name, c) in &a.counts {
                    name.hash(&mut h);
                    hash_counts(&Counts::of(c, now), &mut h);
                }
            }
            7 => {
                a.traits.len().hash(&mut h);
                for (k, v) in &a.traits {
                    k.hash(&mut h);
                    hash_json(v, &mut h);
                }
            }
            8 => p.consent.0.hash(&mut h),
            _ => {
                // Identifiers are kept sorted, kind first: the kinds come in runs. (Were they
                // not, equal counts could hash apart: a needless evaluation, never a wrong one.)
                let mut ids = p.identifiers.iter().map(|id| id.kind.as_str()).peekable();
                while let Some(kind) = ids.next() {
                    let mut n = 1u64;
                    while ids.next_if_eq(&kind).is_some() {
                        n += 1;
                    }
                    (kind, n).hash(&mut h);
                }
            }
        }
        let h = h.finish();
        self.fields[i] = Some(h);
        h
    }

    /// The fingerprint of what the cohort with `seed` (see [`seed`]) and `reads` sees. Its
    /// lowest bit is 0 (callers keep the result there).
    pub fn fingerprint(&mut self, seed: u64, reads: &Reads) -> u64 {
        // The parts are hashes already (SipHash of the values): combining them takes a mix.
        let mut f = mix(0, seed);
        for i in 0..FIELDS.len() {
            if reads.fields & (1 << i) != 0 {
                f = mix(f, self.field(i));
            }
        }
        for name in &reads.counters {
            f = mix(f, self.counter(name));
        }
        for name in &reads.traits {
            f = mix(f, self.named_trait(name));
        }
        f & !1
    }
}

/// Folds the 64-bit hash `x` into `acc`: a multiply and xor-shifts (the finaliser of
/// SplitMix64), so that every bit of either reaches every bit of the result, in order.
fn mix(acc: u64, x: u64) -> u64 {
    let mut z = (acc.rotate_left(23) ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_counts(c: &Counts, h: &mut DefaultHasher) {
    (c.total, c.last_1d, c.last_7d, c.last_30d).hash(h);
}

/// serde_json values have no `Hash`; this one tells every value apart that compares unequal.
fn hash_json(v: &serde_json::Value, h: &mut DefaultHasher) {
    use serde_json::Value;
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(items) => {
            (4u8, items.len()).hash(h);
            for item in items {
                hash_json(item, h);
            }
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(h);
            for (k, item) in map {
                k.hash(h);
                hash_json(item, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::time::from_millis;

    fn fields(names: &[&str]) -> u16 {
        names
            .iter()
            .map(|n| 1 << FIELDS.iter().position(|f| f == n).unwrap())
            .sum()
    }

    #[test]
    fn reads_follow_the_fields_and_counters_named() {
        let r = Reads::of(
            r#"profile.lifecycle_stage == "lead" && profile.counts["Pricing Viewed"].last_7d >= 2"#,
        );
        assert_eq!(r.fields, fields(&["lifecycle_stage"]));
        assert_eq!(r.counters, ["Pricing Viewed"]);
        let r =
            Reads::of(r#""web" in profile.channels_active && profile.consent["email"] == true"#);
        assert_eq!(r.fields, fields(&["channels_active", "consent"]));
        assert!(r.counters.is_empty());
        // A string that mentions `profile` is not a read.
        let r = Reads::of(r#"profile.segment == "profile.traits""#);
        assert_eq!(r.fields, fields(&["segment"]));
        // Whether a counter exists is a read of that counter.
        let r = Reads::of(
            r#"!("Order Completed" in profile.counts) && ("A" in profile.counts || true)"#,
        );
        assert_eq!(r.fields, 0);
        assert_eq!(r.counters, ["A", "Order Completed"]);
        let r = Reads::of(r#""x" + "A" in profile.counts"#);
        assert_eq!(r.fields, fields(&["counts"]));
        // Counters indexed by an expression: all of them.
        let r = Reads::of(
            r#"profile.counts[profile.segment].total > 1 && profile.counts["A"].total > 0"#,
        );
        assert_eq!(r.fields, fields(&["counts", "segment"]));
        assert!(r.counters.is_empty());
    }

    #[test]
    fn reads_follow_the_traits_named() {
        let r = Reads::of(
            r#"has(profile.traits.plan) && profile.traits["seats"] > 3 || "vip" in profile.traits"#,
        );
        assert_eq!(r.fields, 0);
        assert_eq!(r.traits, ["plan", "seats", "vip"]);
        // A nested field reads the trait that holds it.
        let r = Reads::of(r#"profile.traits.company.size == "large""#);
        assert_eq!(r.traits, ["company"]);
        // The map used whole, or indexed by an expression: every trait.
        for e in [
            "size(profile.traits) > 2",
            "profile.traits.exists(k, k.startsWith(\"utm_\"))",
            "profile.traits[profile.segment] == 1 && profile.traits.plan == 1",
            r#"profile.traits == {"plan": "pro"}"#,
        ] {
            let r = Reads::of(e);
            assert!(r.field("traits"), "{e}");
            assert!(r.traits.is_empty(), "{e}");
        }
        let mut both = Reads::of("profile.traits.plan == 1");
        both.add(&Reads::of("profile.traits.seats == 1"));
        assert_eq!(both.traits, ["plan", "seats"]);
        both.add(&Reads::of("size(profile.traits) > 0"));
        assert!(both.field("traits") && both.traits.is_empty());
    }

    #[test]
    fn what_cannot_be_pinned_down_reads_everything() {
        for e in [
            "size(profile) > 3",
            "profile.no_such_field == 1",
            r#"profile.counts[r"raw"].total > 0"#,
            "[1].exists(profile, profile > 0)",
            r#"profile.segment == """x""""#,
        ] {
            assert_eq!(Reads::of(e), Reads::everything(), "{e}");
        }
    }

    #[test]
    fn fingerprints_change_with_what_is_read_only() {
        let now = from_millis(1_700_000_000_000);
        let mut p = Profile {
            version: 1,
            ..Profile::new("t", "cdp_1", vec![], now)
        };
        p.attributes.lifecycle_stage = Some("lead".into());
        let expr = r#"profile.lifecycle_stage == "lead" && profile.counts["P"].last_7d >= 2"#;
        let reads = Reads::of(expr);
        let fp = |p: &Profile, at| InputHashes::new(p, at).fingerprint(seed("k", expr), &reads);
        let base = fp(&p, now);
        assert_eq!(base & 1, 0);
        assert_eq!(fp(&p, now), base);

        let mut other = p.clone();
        other.attributes.total_touchpoints = 9;
        other.attributes.segment = Some("smb".into());
        other
            .attributes
            .counts
            .entry("Q".into())
            .or_default()
            .record(now);
        assert_eq!(fp(&other, now), base, "fields it does not read");

        other
            .attributes
            .counts
            .entry("P".into())
            .or_default()
            .record(now);
        let with_p = fp(&other, now);
        assert_ne!(with_p, base, "a counter it reads");
        assert_ne!(
            fp(&other, now + chrono::Duration::days(8)),
            with_p,
            "the window moved"
        );
        other.attributes.lifecycle_stage = Some("customer".into());
        assert_ne!(fp(&other, now), with_p);

        let traits = r#"profile.traits.plan == "pro""#;
        let reads = Reads::of(traits);
        let fp = |p: &Profile| InputHashes::new(p, now).fingerprint(seed("k", traits), &reads);
        let base = fp(&p);
        let mut other = p.clone();
        other.attributes.traits.insert("seats".into(), 3.into());
        assert_eq!(fp(&other), base, "a trait it does not read");
        other.attributes.traits.insert("plan".into(), "pro".into());
        let pro = fp(&other);
        assert_ne!(pro, base, "a trait it reads, set");
        other.attributes.traits.insert("plan".into(), "free".into());
        assert_ne!(fp(&other), pro, "a trait it reads, changed");
        other
            .attributes
            .traits
            .insert("plan".into(), serde_json::Value::Null);
        assert_ne!(fp(&other), base, "null is not absent");

        let reads = Reads::of(expr);
        let mut hashes = InputHashes::new(&p, now);
        assert_ne!(
            hashes.fingerprint(seed("k", expr), &reads),
            hashes.fingerprint(seed("k2", expr), &reads),
            "another cohort"
        );
        assert_ne!(
            hashes.fingerprint(seed("k", expr), &reads),
            hashes.fingerprint(seed("k", "true"), &reads),
            "another expression"
        );
    }
}
