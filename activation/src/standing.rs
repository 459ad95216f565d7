//! One person's record, stored under the person's key (`tenant \0 canonical_id`): the last
//! profile version applied with what their cohorts were evaluated on ([`Applied`]), and their
//! standing in every cohort they were ever evaluated into.
//!
//! Every profile update reads all of a person's memberships and the version last applied to
//! them. Stored one key per cohort, the memberships' read was a seek: it positioned an iterator
//! in the memtable and in every table file and level that could hold one of the keys, and
//! merged them, so it cost more as the store outgrew its memtables. Stored together it is one
//! point read, which stops at the newest copy (the memtable, for a person updated a moment ago)
//! and skips the table files a Bloom filter rules out; the applied version in the same record
//! saves the second point read and the second key written that a column family of its own
//! cost per update. A change rewrites the whole record: a few dozen bytes per cohort.

use crate::membership::MemberState;
use crate::{ActivationError, Result};

/// The first byte of a record written before the applied version moved into it: memberships
/// only (the version was in a column family of its own, moved in as the state opens).
const FORMAT_MEMBERSHIPS: u8 = 1;
/// The first byte of an encoded record: the format's version.
const FORMAT: u8 = 2;
/// Bytes of an entry after its audience key: flags (1), seq (8), `since` seconds (8) and
/// nanoseconds (4).
const FIXED: usize = 1 + 8 + 8 + 4;
const MEMBER: u8 = 1;

/// Per person: the last profile version applied, and what its cohorts were last evaluated on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    /// Per cohort evaluated without error: the fingerprint of its inputs
    /// ([`crate::inputs::InputHashes::fingerprint`]) with the result in the lowest bit; sorted
    /// (see [`crate::inputs::known`]).
    pub inputs: Vec<u64>,
}

impl Applied {
    /// Reads the value the `versions` column family held: the version (8 bytes, big endian)
    /// then the fingerprints (a store written before there were fingerprints holds the version
    /// alone, and its people are evaluated in full once).
    pub(crate) fn decode_words(b: &[u8]) -> Result<Self> {
        if b.len() < 8 || !b.len().is_multiple_of(8) {
            return Err(ActivationError::Corrupt(format!(
                "version entry of {} bytes",
                b.len()
            )));
        }
        let mut words = be_words(b);
        let version = words.next().expect("at least 8 bytes checked above");
        Ok(Self {
            version,
            inputs: words.collect(),
        })
    }
}

/// The 8-byte big-endian words of `b` (a trailing part shorter than a word is left out).
fn be_words(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
}

/// A person's record: what was applied to them and their memberships, in audience key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub applied: Applied,
    entries: Vec<(String, MemberState)>,
}

impl Standing {
    pub fn get(&self, audience: &str) -> Option<&MemberState> {
        self.find(audience).ok().map(|at| &self.entries[at].1)
    }

    pub fn set(&mut self, audience: &str, state: MemberState) {
        match self.find(audience) {
            Ok(at) => self.entries[at].1 = state,
            Err(at) => self.entries.insert(at, (audience.to_string(), state)),
        }
    }

    /// Every cohort the person has a state in (member or not), in audience key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MemberState)> {
        self.entries.iter().map(|(a, s)| (a.as_str(), s))
    }

    /// The cohorts the person is a member of now, in audience key order.
    pub fn current(&self) -> impl Iterator<Item = (&str, &MemberState)> {
        self.iter().filter(|(_, s)| s.member)
    }

    fn find(&self, audience: &str) -> std::result::Result<usize, usize> {
        self.entries
            .binary_search_by(|(a, _)| a.as_str().cmp(audience))
    }

    /// The format byte; the applied version (8 bytes), the number of input fingerprints
    /// (4 bytes) and the fingerprints (8 bytes each); then per cohort in audience key order: the
    /// key's length (2 bytes) and bytes, a flags byte (1: member), `seq` (8 bytes), and `since`
    /// as seconds (8 bytes) and nanoseconds (4 bytes) of the Unix epoch; all big endian.
    pub fn encode(&self) -> Vec<u8> {
        let inputs = &self.applied.inputs;
        let count = u32::try_from(inputs.len()).expect("one fingerprint per cohort");
        let size = self
            .entries
            .iter()
            .map(|(a, _)| 2 + a.len() + FIXED)
            .sum::<usize>();
        let mut out = Vec::with_capacity(1 + 8 + 4 + 8 * inputs.len() + size);
        out.push(FORMAT);
        out.extend_from_slice(&self.applied.version.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        for f in inputs {
            out.extend_from_slice(&f.to_be_bytes());
        }
        for (audience, s) in &self.entries {
            let len = u16::try_from(audience.len()).expect("cohort keys are at most 64 bytes");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(audience.as_bytes());
            out.push(if s.member { MEMBER } else { 0 });
            out.extend_from_slice(&s.seq.to_be_bytes());
            out.extend_from_slice(&s.since.timestamp().to_be_bytes());
            out.extend_from_slice(&s.since.timestamp_subsec_nanos().to_be_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let corrupt = |what: &str| ActivationError::Corrupt(format!("memberships record: {what}"));
        let Some((&format, mut rest)) = b.split_first() else {
            return Err(corrupt("empty"));
        };
        let applied = match format {
            FORMAT => {
                let (version, tail) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| corrupt("cut short"))?;
                let (count, tail) = tail
                    .split_first_chunk::<4>()
                    .ok_or_else(|| corrupt("cut short"))?;
                let count = u32::from_be_bytes(*count) as usize;
                if tail.len() / 8 < count {
                    return Err(corrupt("cut short"));
                }
                let (words, tail) = tail.split_at(8 * count);
                rest = tail;
                Applied {
                    version: u64::from_be_bytes(*version),
                    inputs: be_words(words).collect(),
                }
            }
            FORMAT_MEMBERSHIPS => Applied::default(),
            _ => return Err(corrupt(&format!("unknown format {format}"))),
        };
        let mut entries: Vec<(String, MemberState)> = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| corrupt("cut short"))?;
            let len = usize::from(u16::from_be_bytes(*len));
            if tail.len() < len + FIXED {
                return Err(corrupt("cut short"));
            }
            let (audience, tail) = tail.split_at(len);
            let audience = std::str::from_utf8(audience)
                .map_err(|_| corrupt("audience key is not UTF-8"))?
                .to_string();
            if entries.last().is_some_and(|(last, _)| *last >= audience) {
                return Err(corrupt("audience keys out of order"));
            }
            let word = |at: usize| u64::from_be_bytes(tail[at..at + 8].try_into().expect("8"));
            let member = match tail[0] {
                0 => false,
                MEMBER => true,
                flags => return Err(corrupt(&format!("unknown flags {flags}"))),
            };
            let secs = word(9) as i64;
            let nanos = u32::from_be_bytes(tail[17..21].try_into().expect("4"));
            let since = chrono::DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| corrupt("time out of range"))?;
            let state = MemberState {
                member,
                seq: word(1),
                since,
            };
            entries.push((audience, state));
            rest = &tail[FIXED..];
        }
        Ok(Self { applied, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(member: bool, seq: u64, secs: i64, nanos: u32) -> MemberState {
        MemberState {
            member,
            seq,
            since: chrono::DateTime::from_timestamp(secs, nanos).unwrap(),
        }
    }

    proptest! {
        /// Whatever was set reads back, last write winning, in key order, through the encoding.
        #[test]
        fn a_record_equals_a_map_of_its_last_writes_and_survives_encoding(
            writes in prop::collection::vec(
                ("[a-z_]{1,12}", any::<bool>(), any::<u64>(), -100_000_000_000i64..100_000_000_000, 0u32..1_000_000_000),
                0..30,
            ),
            version in any::<u64>(),
            inputs in prop::collection::vec(any::<u64>(), 0..30),
        ) {
            let mut record = Standing {
                applied: Applied { version, inputs },
                ..Standing::default()
            };
            let mut model = std::collections::BTreeMap::new();
            for (audience, member, seq, secs, nanos) in writes {
                let s = state(member, seq, secs, nanos);
                record.set(&audience, s.clone());
                model.insert(audience, s);
            }
            let listed: Vec<(String, MemberState)> =
                record.iter().map(|(a, s)| (a.to_string(), s.clone())).collect();
            let expected: Vec<(String, MemberState)> = model.clone().into_iter().collect();
            prop_assert_eq!(&listed, &expected);
            for (audience, s) in &model {
                prop_assert_eq!(record.get(audience), Some(s));
            }
            let decoded = Standing::decode(&record.encode()).unwrap();
            prop_assert_eq!(decoded, record);
        }
    }

    #[test]
    fn damaged_records_are_refused_with_the_reason() {
        let mut record = Standing {
            applied: Applied {
                version: 9,
                inputs: vec![4, 6],
            },
            ..Standing::default()
        };
        record.set("buyers", state(true, 7, 1_700_000_000, 5));
        record.set("leads", state(false, 2, 1_700_000_000, 0));
        let good = record.encode();
        let err = |b: &[u8]| Standing::decode(b).unwrap_err().to_string();
        assert!(err(&[]).contains("empty"));
        assert!(err(&[9]).contains("unknown format 9"));
        assert!(err(&good[..good.len() - 1]).contains("cut short"));
        // Inside the version, the count, the fingerprints, the first entry's length.
        for cut in [5, 11, 20, 30] {
            assert!(err(&good[..cut]).contains("cut short"), "cut at {cut}");
        }
        // More fingerprints than the record holds.
        let mut counted = good.clone();
        counted[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(err(&counted).contains("cut short"));
        // The first entry's flags byte: after the header, the length and "buyers".
        let header = 1 + 8 + 4 + 2 * 8;
        let mut flags = good.clone();
        flags[header + 2 + 6] = 4;
        assert!(err(&flags).contains("unknown flags 4"));
        // "leads" first, then "buyers".
        let mut swapped = good[..header].to_vec();
        let half = header + 2 + 6 + FIXED;
        swapped.extend_from_slice(&good[half..]);
        swapped.extend_from_slice(&good[header..half]);
        assert!(err(&swapped).contains("out of order"));
        let empty = Standing::default().encode();
        assert_eq!(Standing::decode(&empty).unwrap(), Standing::default());
    }

    /// A record of the layout that kept the applied version apart reads with none applied: the
    /// version is moved in from its column family as the state opens.
    #[test]
    fn records_of_memberships_alone_still_read() {
        let mut record = Standing::default();
        record.set("buyers", state(true, 7, 1_700_000_000, 5));
        // Format 1: the format byte, then the entries as format 2 writes them.
        let mut old = vec![FORMAT_MEMBERSHIPS];
        old.extend_from_slice(&record.encode()[1 + 8 + 4..]);
        assert_eq!(Standing::decode(&old).unwrap(), record);
        assert_eq!(
            Standing::decode(&[FORMAT_MEMBERSHIPS]).unwrap(),
            Standing::default()
        );
    }

    #[test]
    fn the_applied_state_of_the_old_column_family_reads_back() {
        let mut words = 12u64.to_be_bytes().to_vec();
        words.extend_from_slice(&3u64.to_be_bytes());
        let applied = Applied::decode_words(&words).unwrap();
        assert_eq!(
            applied,
            Applied {
                version: 12,
                inputs: vec![3]
            }
        );
        let err = Applied::decode_words(&words[..12]).unwrap_err().to_string();
        assert!(err.contains("version entry of 12 bytes"), "{err}");
    }
}
