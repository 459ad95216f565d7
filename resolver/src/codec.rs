//! The binary form of the records the resolver keeps in its own store (profiles, nodes and
//! links). They are read and written for nearly every signal, and JSON cost more than the graph
//! logic; this form is a few varints and length-prefixed strings. A rebuild reads every link of
//! a tenant, so links also decode to a borrowed [`LinkHead`] without allocating. Links written
//! as JSON by an older version still read (a JSON object starts with `{`, never the format
//! byte; probabilistic links, with their evidence, were JSON until the second link format). JSON
//! stays on the topics, where people read it. Every record starts with a format
//! byte, so a change of layout is detected rather than misread. Trait values are arbitrary JSON
//! and are kept as JSON text.

use crate::link::{EndRef, Link, LinkDecision, LinkHead};
use crate::matching::compare::Level;
use crate::matching::field::Field;
use crate::matching::model::{Contribution, Score};
use crate::outbox::UpdateRef;
use crate::txn::NodeRecord;
use cdp_proto::profile::{Attributes, EventCounter, MergeRecord};
use cdp_proto::{Consent, Identifier, IdentifierKind, Profile, Source, Timestamp};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

const FORMAT: u8 = 1;
/// First byte of a trait value stored as the string itself rather than as JSON: no JSON text
/// starts with it, so values stored as JSON still read.
const RAW_STRING: u8 = 1;
/// Links from this version on: [`FORMAT`]'s layout followed by the optional evidence of a
/// probabilistic link. Links in [`FORMAT`] have none (such links were kept as JSON).
const LINK_FORMAT: u8 = 2;

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct DecodeError(&'static str);

type Result<T> = std::result::Result<T, DecodeError>;

pub fn encode_profile(p: &Profile) -> Vec<u8> {
    // Destructured so that a new field cannot be left out of the stored form unnoticed.
    let Profile {
        tenant,
        canonical_id,
        identifiers,
        aliases,
        merge_history,
        attributes,
        consent,
        version,
        created_at,
        updated_at,
    } = p;
    let mut w = Writer(Vec::with_capacity(256));
    w.0.push(FORMAT);
    w.str(tenant);
    w.str(canonical_id);
    w.seq(identifiers, |w, id| w.identifier(id));
    w.seq(aliases, |w, a| w.str(a));
    w.seq(merge_history, |w, m| {
        let MergeRecord {
            merged_at,
            rule,
            confidence,
            from,
            into,
        } = m;
        w.time(merged_at);
        w.str(rule);
        w.0.extend_from_slice(&confidence.to_le_bytes());
        w.str(from);
        w.str(into);
    });
    w.attributes(attributes);
    w.seq(&consent.0, |w, (purpose, granted)| {
        w.str(purpose);
        w.0.push(u8::from(*granted));
    });
    w.uint(*version);
    w.time(created_at);
    w.time(updated_at);
    w.0
}

pub fn decode_profile(b: &[u8]) -> Result<Profile> {
    let mut r = Reader::new(b)?;
    let p = Profile {
        tenant: r.string()?,
        canonical_id: r.string()?,
        identifiers: r.vec(Reader::identifier)?,
        aliases: r.vec(Reader::string)?,
        merge_history: r.vec(|r| {
            Ok(MergeRecord {
                merged_at: r.time()?,
                rule: r.string()?,
                confidence: r.f64()?,
                from: r.string()?,
                into: r.string()?,
            })
        })?,
        attributes: r.attributes()?,
        consent: Consent(r.map(|r| Ok((r.string()?, r.bool()?)))?),
        version: r.uint()?,
        created_at: r.time()?,
        updated_at: r.time()?,
    };
    r.end()?;
    Ok(p)
}

pub fn encode_node(n: &NodeRecord) -> Vec<u8> {
    let NodeRecord { tenant, identifier } = n;
    let mut w = Writer(Vec::with_capacity(96));
    w.0.push(FORMAT);
    w.str(tenant);
    w.identifier(identifier);
    w.0
}

pub fn decode_node(b: &[u8]) -> Result<NodeRecord> {
    let mut r = Reader::new(b)?;
    let n = NodeRecord {
        tenant: r.string()?,
        identifier: r.identifier()?,
    };
    r.end()?;
    Ok(n)
}

/// The format byte of an outbox entry that names a profile update instead of holding it (an
/// outbox entry that holds a record starts with the bus's record form, whose first byte is 1).
pub const UPDATE_REF: u8 = 2;

pub fn encode_update_ref(u: &UpdateRef) -> Vec<u8> {
    let UpdateRef {
        topic,
        tenant,
        canonical_id,
        cause,
        received_at,
    } = u;
    let mut w = Writer(Vec::with_capacity(
        8 + topic.len() + tenant.len() + canonical_id.len() + cause.as_ref().map_or(0, String::len),
    ));
    w.0.push(UPDATE_REF);
    w.str(topic);
    w.str(tenant);
    w.str(canonical_id);
    w.opt_str(cause);
    w.opt_time(received_at);
    w.0
}

pub fn decode_update_ref(b: &[u8]) -> Result<UpdateRef> {
    let mut r = match b.split_first() {
        Some((&UPDATE_REF, rest)) => Reader { b: rest },
        _ => return Err(DecodeError("not an update reference")),
    };
    let u = UpdateRef {
        topic: r.string()?,
        tenant: r.string()?,
        canonical_id: r.string()?,
        cause: r.opt(Reader::string)?,
        received_at: r.opt(Reader::time)?,
    };
    r.end()?;
    Ok(u)
}

pub fn encode_link(l: &Link) -> Vec<u8> {
    let Link {
        id,
        tenant,
        a,
        b,
        rule,
        confidence,
        observed_at,
        signal_id,
        decision,
        evidence,
    } = l;
    let mut w = Writer(Vec::with_capacity(128));
    w.0.push(LINK_FORMAT);
    w.uint(*id);
    w.str(tenant);
    w.identifier(a);
    w.identifier(b);
    w.str(rule);
    w.0.extend_from_slice(&confidence.to_le_bytes());
    w.time(observed_at);
    w.str(signal_id);
    match decision {
        LinkDecision::Accepted => w.0.push(0),
        LinkDecision::Candidate => w.0.push(1),
        LinkDecision::Refused(reason) => {
            w.0.push(2);
            w.str(reason);
        }
        LinkDecision::Removed(reason) => {
            w.0.push(3);
            w.str(reason);
        }
    }
    w.opt(evidence.as_ref(), |w, score| {
        let Score {
            model_version,
            probability,
            weight,
            contributions,
        } = score;
        w.uint(*model_version);
        w.0.extend_from_slice(&probability.to_le_bytes());
        w.0.extend_from_slice(&weight.to_le_bytes());
        w.seq(contributions, |w, c| {
            w.0.push(c.field.index());
            w.0.push(c.level as u8);
            w.0.extend_from_slice(&c.weight.to_le_bytes());
        });
    });
    w.0
}

pub fn decode_link(b: &[u8]) -> Result<Link> {
    if b.first() == Some(&b'{') {
        return cdp_proto::json::from_bytes(b).map_err(|_| DecodeError("link JSON"));
    }
    let (mut r, format) = Reader::link(b)?;
    let mut link = Link {
        id: r.uint()?,
        tenant: r.string()?,
        a: r.identifier()?,
        b: r.identifier()?,
        rule: r.string()?,
        confidence: r.f64()?,
        observed_at: r.time()?,
        signal_id: r.string()?,
        decision: match r.byte()? {
            0 => LinkDecision::Accepted,
            1 => LinkDecision::Candidate,
            2 => LinkDecision::Refused(r.string()?),
            3 => LinkDecision::Removed(r.string()?),
            _ => return Err(DecodeError("link decision")),
        },
        evidence: None,
    };
    if format == LINK_FORMAT {
        link.evidence = r.opt(Reader::score)?;
    }
    r.end()?;
    Ok(link)
}

/// What a replay reads of a link, borrowed from its stored form.
pub fn decode_link_head(b: &[u8]) -> Result<LinkHead<'_>> {
    if b.first() == Some(&b'{') {
        let json: crate::link::LinkJsonHead =
            cdp_proto::json::from_bytes(b).map_err(|_| DecodeError("link JSON"))?;
        return json.head().ok_or(DecodeError("link observed_at"));
    }
    let (mut r, format) = Reader::link(b)?;
    fn end<'a>(r: &mut Reader<'a>) -> Result<EndRef<'a>> {
        Ok(EndRef {
            kind: Cow::Borrowed(r.str()?),
            value: Cow::Borrowed(r.str()?),
        })
    }
    let id = r.uint()?;
    let tenant = Cow::Borrowed(r.str()?);
    let (a, b) = (end(&mut r)?, end(&mut r)?);
    let rule = Cow::Borrowed(r.str()?);
    let confidence = r.f64()?;
    let secs = r.int()?;
    let nanos = r.uint()?;
    if nanos >= 1_000_000_000 {
        return Err(DecodeError("nanoseconds"));
    }
    let observed_at_ms = secs
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add((nanos / 1_000_000) as i64))
        .ok_or(DecodeError("time out of range"))?;
    r.str()?;
    let decision = match r.byte()? {
        0 => LinkDecision::Accepted.tag(),
        1 => LinkDecision::Candidate.tag(),
        2 => {
            r.str()?;
            "refused"
        }
        3 => {
            r.str()?;
            "removed"
        }
        _ => return Err(DecodeError("link decision")),
    };
    // Checked, not built: a reader that needs the evidence reads the link whole.
    let has_evidence = format == LINK_FORMAT && r.opt(|r| r.score_parts(|_| ()))?.is_some();
    r.end()?;
    Ok(LinkHead {
        id,
        tenant,
        a,
        b,
        rule,
        confidence,
        observed_at_ms,
        decision: Cow::Borrowed(decision),
        has_evidence,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    /// LEB128: small numbers (lengths, counts, versions) take one byte.
    fn uint(&mut self, v: u64) {
        crate::varint::write(&mut self.0, v);
    }

    fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// A trait's value: a string as [`RAW_STRING`] and its bytes, anything else as its compact
    /// JSON (which `Display` writes, without going through `fmt`).
    fn trait_value(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                self.uint(s.len() as u64 + 1);
                self.0.push(RAW_STRING);
                self.0.extend_from_slice(s.as_bytes());
            }
            v => self.bytes(&serde_json::to_vec(v).expect("a JSON value serialises")),
        }
    }

    fn seq<I>(&mut self, items: I, mut f: impl FnMut(&mut Self, I::Item))
    where
        I: IntoIterator,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        self.uint(items.len() as u64);
        for item in items {
            f(self, item);
        }
    }

    fn time(&mut self, t: &Timestamp) {
        self.int(t.timestamp());
        self.uint(u64::from(t.timestamp_subsec_nanos()));
    }

    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                f(self, v);
            }
        }
    }

    fn opt_time(&mut self, t: &Option<Timestamp>) {
        self.opt(t.as_ref(), Self::time);
    }

    fn opt_str(&mut self, s: &Option<String>) {
        self.opt(s.as_deref(), Self::str);
    }

    fn identifier(&mut self, id: &Identifier) {
        self.str(id.kind.as_str());
        self.str(&id.value);
    }

    fn attributes(&mut self, a: &Attributes) {
        let Attributes {
            lifecycle_stage,
            segment,
            first_seen,
            last_engagement,
            total_touchpoints,
            channels_active,
            traits,
            trait_times,
            counts,
        } = a;
        self.opt_str(lifecycle_stage);
        self.opt_str(segment);
        self.opt_time(first_seen);
        self.opt_time(last_engagement);
        self.uint(*total_touchpoints);
        self.seq(channels_active, |w, s| w.str(s.as_str()));
        self.seq(traits, |w, (k, v)| {
            w.str(k);
            w.trait_value(v);
        });
        self.seq(trait_times, |w, (k, t)| {
            w.str(k);
            w.time(t);
        });
        self.seq(counts, |w, (name, c)| {
            let EventCounter {
                total,
                last_at,
                daily,
            } = c;
            w.str(name);
            w.uint(*total);
            w.opt_time(last_at);
            w.seq(daily, |w, (day, n)| {
                w.int(*day);
                w.uint(*n);
            });
        });
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Result<Self> {
        match b.split_first() {
            Some((&FORMAT, rest)) => Ok(Self { b: rest }),
            _ => Err(DecodeError("unknown format")),
        }
    }

    /// A link's reader, and its format ([`FORMAT`] or [`LINK_FORMAT`]).
    fn link(b: &'a [u8]) -> Result<(Self, u8)> {
        match b.split_first() {
            Some((&format, rest)) if format == FORMAT || format == LINK_FORMAT => {
                Ok((Self { b: rest }, format))
            }
            _ => Err(DecodeError("unknown format")),
        }
    }

    fn score(&mut self) -> Result<Score> {
        let mut contributions = Vec::new();
        let (model_version, probability, weight) = self.score_parts(|c| contributions.push(c))?;
        Ok(Score {
            model_version,
            probability,
            weight,
            contributions,
        })
    }

    /// A score's model version, probability and weight, with each contribution handed to
    /// `each` as it is read: [`Self::score`] keeps them, a link's head only checks them.
    fn score_parts(&mut self, mut each: impl FnMut(Contribution)) -> Result<(u64, f64, f64)> {
        let head = (self.uint()?, self.f64()?, self.f64()?);
        for _ in 0..self.len()? {
            let field = *Field::ALL
                .get(usize::from(self.byte()?))
                .ok_or(DecodeError("match field"))?;
            let level = *Level::ALL
                .get(usize::from(self.byte()?))
                .ok_or(DecodeError("match level"))?;
            each(Contribution {
                field,
                level,
                weight: self.f64()?,
            });
        }
        Ok(head)
    }

    fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let (&x, rest) = self.b.split_first().ok_or(DecodeError("truncated"))?;
        self.b = rest;
        Ok(x)
    }

    fn uint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            v |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn int(&mut self) -> Result<i64> {
        let v = self.uint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn len(&mut self) -> Result<usize> {
        let n = usize::try_from(self.uint()?).map_err(|_| DecodeError("length"))?;
        // Every element takes at least a byte: a larger count is corrupt, not a huge allocation.
        if n > self.b.len() {
            return Err(DecodeError("length beyond record"));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }

    fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("not UTF-8"))
    }

    fn string(&mut self) -> Result<String> {
        self.str().map(str::to_string)
    }

    /// What [`Writer::trait_value`] wrote, or a value stored as JSON whatever its type (as
    /// every trait was before strings were stored raw).
    fn trait_value(&mut self) -> Result<serde_json::Value> {
        match self.bytes()? {
            [RAW_STRING, s @ ..] => std::str::from_utf8(s)
                .map(|s| serde_json::Value::String(s.to_string()))
                .map_err(|_| DecodeError("not UTF-8")),
            json => cdp_proto::json::from_bytes(json).map_err(|_| DecodeError("trait value")),
        }
    }

    fn bool(&mut self) -> Result<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("not a bool")),
        }
    }

    fn f64(&mut self) -> Result<f64> {
        if self.b.len() < 8 {
            return Err(DecodeError("truncated"));
        }
        let (x, rest) = self.b.split_at(8);
        self.b = rest;
        Ok(f64::from_le_bytes(
            x.try_into().map_err(|_| DecodeError("f64"))?,
        ))
    }

    fn vec<T>(&mut self, mut f: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    fn map<K: Ord, V>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<(K, V)>,
    ) -> Result<BTreeMap<K, V>> {
        let n = self.len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let (k, v) = f(self)?;
            out.insert(k, v);
        }
        Ok(out)
    }

    fn time(&mut self) -> Result<Timestamp> {
        let secs = self.int()?;
        let nanos = u32::try_from(self.uint()?).map_err(|_| DecodeError("nanoseconds"))?;
        Timestamp::from_timestamp(secs, nanos).ok_or(DecodeError("time out of range"))
    }

    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.bool()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn identifier(&mut self) -> Result<Identifier> {
        let kind: IdentifierKind = self
            .str()?
            .parse()
            .map_err(|_| DecodeError("identifier kind"))?;
        Ok(Identifier {
            kind,
            value: self.string()?,
        })
    }

    fn attributes(&mut self) -> Result<Attributes> {
        Ok(Attributes {
            lifecycle_stage: self.opt(Reader::string)?,
            segment: self.opt(Reader::string)?,
            first_seen: self.opt(Reader::time)?,
            last_engagement: self.opt(Reader::time)?,
            total_touchpoints: self.uint()?,
            channels_active: {
                let n = self.len()?;
                let mut set = BTreeSet::new();
                for _ in 0..n {
                    set.insert(
                        self.str()?
                            .parse::<Source>()
                            .map_err(|_| DecodeError("source"))?,
                    );
                }
                set
            },
            traits: self.map(|r| Ok((r.string()?, r.trait_value()?)))?,
            trait_times: self.map(|r| Ok((r.string()?, r.time()?)))?,
            counts: self.map(|r| {
                let name = r.string()?;
                let counter = EventCounter {
                    total: r.uint()?,
                    last_at: r.opt(Reader::time)?,
                    daily: r.map(|r| Ok((r.int()?, r.uint()?)))?,
                };
                Ok((name, counter))
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::time::from_millis;

    fn sample() -> Profile {
        let t = from_millis(1_700_000_000_123) + chrono::Duration::nanoseconds(456);
        let mut attributes = Attributes {
            lifecycle_stage: Some("lead".into()),
            segment: None,
            first_seen: Some(t),
            last_engagement: None,
            total_touchpoints: 300,
            ..Default::default()
        };
        attributes.channels_active.insert(Source::Crm);
        attributes.channels_active.insert(Source::Web);
        attributes.traits.insert(
            "plan".into(),
            serde_json::json!({"tier": "pro", "seats": 12.5, "tags": ["a", null]}),
        );
        attributes.trait_times.insert("plan".into(), t);
        let mut counter = EventCounter::default();
        counter.record(t);
        counter.record(from_millis(-5_000));
        attributes.counts.insert("Pricing Viewed".into(), counter);
        Profile {
            tenant: "acme".into(),
            canonical_id: "cdp_0123456789abcdef0123".into(),
            identifiers: vec![
                Identifier::new(IdentifierKind::EmailSha256, "ab".repeat(32)),
                Identifier::new(IdentifierKind::Custom("member_no".into()), "ü-42"),
            ],
            aliases: vec!["cdp_retired".into()],
            merge_history: vec![MergeRecord {
                merged_at: t,
                rule: "deterministic_login".into(),
                confidence: 0.97,
                from: "cdp_retired".into(),
                into: "cdp_0123456789abcdef0123".into(),
            }],
            attributes,
            consent: Consent(BTreeMap::from([
                ("analytics".to_string(), true),
                ("ads".to_string(), false),
            ])),
            version: 1 << 40,
            created_at: from_millis(-1),
            updated_at: t,
        }
    }

    #[test]
    fn profiles_and_nodes_read_back_as_written() {
        let p = sample();
        assert_eq!(decode_profile(&encode_profile(&p)).unwrap(), p);
        let empty = Profile {
            identifiers: Vec::new(),
            aliases: Vec::new(),
            merge_history: Vec::new(),
            attributes: Attributes::default(),
            consent: Consent::default(),
            ..p.clone()
        };
        assert_eq!(decode_profile(&encode_profile(&empty)).unwrap(), empty);
        let n = NodeRecord {
            tenant: "acme".into(),
            identifier: p.identifiers[1].clone(),
        };
        assert_eq!(decode_node(&encode_node(&n)).unwrap(), n);
    }

    #[test]
    fn trait_values_read_back_whether_stored_raw_or_as_json() {
        let mut p = sample();
        for (k, v) in [
            ("city", serde_json::json!("Zürich \"old town\"")),
            ("empty", serde_json::json!("")),
            ("control", serde_json::json!("\u{1}x")),
            ("seats", serde_json::json!(12)),
            ("vip", serde_json::json!(true)),
            ("none", serde_json::Value::Null),
        ] {
            p.attributes.traits.insert(k.into(), v);
        }
        assert_eq!(decode_profile(&encode_profile(&p)).unwrap(), p);

        // Every trait as JSON, the way profiles were stored before strings were stored raw.
        let mut w = Writer(Vec::new());
        for v in p.attributes.traits.values() {
            w.bytes(&serde_json::to_vec(v).unwrap());
        }
        let mut r = Reader { b: &w.0 };
        for v in p.attributes.traits.values() {
            assert_eq!(&r.trait_value().unwrap(), v);
        }
        // A raw string that is not UTF-8 is an error, not a panic.
        let mut r = Reader {
            b: &[3, RAW_STRING, 0xc3, 0x28],
        };
        assert!(r.trait_value().is_err());
    }

    fn links() -> Vec<Link> {
        let base = Link {
            id: 1 << 33,
            tenant: "acme".into(),
            a: Identifier::new(IdentifierKind::UserId, "u\"1"),
            b: Identifier::new(IdentifierKind::Custom("member_no".into()), "ü-7"),
            rule: "deterministic_login".into(),
            confidence: 0.97,
            observed_at: from_millis(-1_700_000_000_123) + chrono::Duration::nanoseconds(456),
            signal_id: "evt-1".into(),
            decision: LinkDecision::Accepted,
            evidence: None,
        };
        [
            LinkDecision::Accepted,
            LinkDecision::Candidate,
            LinkDecision::Refused("kind_limit:user_id".into()),
            LinkDecision::Removed("unmerge:c1".into()),
        ]
        .into_iter()
        .map(|decision| Link {
            decision,
            ..base.clone()
        })
        .chain(
            [LinkDecision::Accepted, LinkDecision::Candidate].map(|decision| Link {
                decision,
                rule: "probabilistic".into(),
                evidence: Some(Score {
                    model_version: 3,
                    probability: 0.96875,
                    weight: 4.5,
                    contributions: vec![
                        Contribution {
                            field: Field::LastName,
                            level: Level::Close,
                            weight: 3.25,
                        },
                        Contribution {
                            field: Field::BirthDate,
                            level: Level::DayMonthSwapped,
                            weight: -1.5,
                        },
                    ],
                }),
                ..base.clone()
            }),
        )
        .collect()
    }

    #[test]
    fn links_read_back_as_written_and_as_json() {
        for link in links() {
            for bytes in [encode_link(&link), serde_json::to_vec(&link).unwrap()] {
                assert_eq!(decode_link(&bytes).unwrap(), link);
                let head = decode_link_head(&bytes).unwrap();
                assert_eq!(head.id, link.id);
                assert_eq!(head.tenant, link.tenant);
                assert_eq!((&*head.a.kind, &*head.a.value), ("user_id", "u\"1"));
                assert_eq!((&*head.b.kind, &*head.b.value), ("member_no", "ü-7"));
                assert_eq!(head.rule, link.rule);
                assert_eq!(head.confidence, link.confidence);
                assert_eq!(head.observed_at_ms, link.observed_at.timestamp_millis());
                assert_eq!(head.decision, link.decision.tag());
                assert_eq!(head.has_evidence, link.evidence.is_some());
            }
        }
        for link in [&links()[2], &links()[5]] {
            let bytes = encode_link(link);
            for cut in 0..bytes.len() {
                assert!(decode_link(&bytes[..cut]).is_err(), "cut at {cut}");
                assert!(decode_link_head(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn links_of_the_first_binary_format_still_read() {
        // The first format: no evidence field (probabilistic links were JSON then).
        for link in links().into_iter().filter(|l| l.evidence.is_none()) {
            let mut bytes = encode_link(&link);
            assert_eq!(bytes.pop(), Some(0), "no evidence");
            bytes[0] = FORMAT;
            assert_eq!(decode_link(&bytes).unwrap(), link);
            assert!(!decode_link_head(&bytes).unwrap().has_evidence);
        }
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = encode_profile(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_profile(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_profile(&longer).is_err());
        let mut json = serde_json::to_vec(&sample()).unwrap();
        assert!(decode_profile(&json).is_err(), "the old JSON form");
        json.clear();
        assert!(decode_node(&json).is_err());
    }
}
