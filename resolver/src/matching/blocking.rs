//! Blocking: which profiles an arriving record is compared with. Each record with comparison
//! fields is filed under a few keys (phonetic surname + postal code, birth date + first
//! initial, surname + first-name prefix, birth date + postal code, postal code + street, and
//! both names' sounds in either order) in the `blocks` column family, in the same write as
//! the rest of its signal's effects; its candidates are the other nodes filed under the same
//! keys, whose records are read from `match_records` (each node's normalised record, kept
//! once). A block lists node ids only, a few bytes each: filing a node rewrites that short
//! list, never the records of the nodes already there (it did when blocks carried them, and the
//! bytes written per record grew with the blocks). A block holds at most `max_block_size`
//! nodes: when one more would not fit, the key is marked oversized, its list is dropped and it
//! no longer yields candidates (a name shared by thousands tells nothing), so a record never
//! costs more than the keys' capacity.
//!
//! Keys are `tenant \0 kind \0 sha256(value)[..16]`: the names and dates they are made of are
//! not in the keys in clear, nor in the blocks. They are in `match_records`, which names every
//! key the node is filed under, and which `forget` erases.

use super::field::{Field, Record};
use super::soundex::soundex;
use crate::txn::NodeId;
use crate::varint;
use sha2::{Digest, Sha256};

/// A blocking rule: which fields make up its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Soundex of the last name + postal code.
    SurnameSoundexPostcode,
    /// Birth date + first letter of the first name.
    BirthDateInitial,
    /// Last name + first three letters of the first name.
    SurnameFirstPrefix,
    /// Birth date + postal code: finds a record whose names were mistyped or left out.
    BirthDatePostcode,
    /// Postal code + street: finds a record without a birth date whose names differ.
    PostcodeStreet,
    /// Soundex of first and last name, in sorted order: finds names typed into each other's box.
    NameSounds,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::SurnameSoundexPostcode,
        Rule::BirthDateInitial,
        Rule::SurnameFirstPrefix,
        Rule::BirthDatePostcode,
        Rule::PostcodeStreet,
        Rule::NameSounds,
    ];

    /// The fields a key of this rule is made of: pairs it yields agree on them by construction.
    pub fn fields(self) -> [Field; 2] {
        match self {
            Rule::SurnameSoundexPostcode => [Field::LastName, Field::PostalCode],
            Rule::BirthDateInitial => [Field::BirthDate, Field::FirstName],
            Rule::SurnameFirstPrefix => [Field::LastName, Field::FirstName],
            Rule::BirthDatePostcode => [Field::BirthDate, Field::PostalCode],
            Rule::PostcodeStreet => [Field::PostalCode, Field::Street],
            Rule::NameSounds => [Field::FirstName, Field::LastName],
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Rule::SurnameSoundexPostcode => "sp",
            Rule::BirthDateInitial => "di",
            Rule::SurnameFirstPrefix => "nf",
            Rule::BirthDatePostcode => "dp",
            Rule::PostcodeStreet => "ps",
            Rule::NameSounds => "ns",
        }
    }

    /// The digest of this rule's key value for `r` (its two parts joined by `|`), if it has
    /// the fields. The parts are hashed where they lie: the value is never built.
    fn digest(self, r: &Record) -> Option<[u8; 32]> {
        let first = || r.get(Field::FirstName).filter(|s| !s.is_empty());
        let last = || r.get(Field::LastName);
        let hash = |a: &str, b: &str| -> [u8; 32] {
            Sha256::new()
                .chain_update(a)
                .chain_update("|")
                .chain_update(b)
                .finalize()
                .into()
        };
        Some(match self {
            Rule::SurnameSoundexPostcode => hash(&soundex(last()?)?, r.get(Field::PostalCode)?),
            Rule::BirthDateInitial => hash(r.get(Field::BirthDate)?, leading(first()?, 1)),
            Rule::SurnameFirstPrefix => hash(last()?, leading(r.get(Field::FirstName)?, 3)),
            Rule::BirthDatePostcode => hash(r.get(Field::BirthDate)?, r.get(Field::PostalCode)?),
            Rule::PostcodeStreet => hash(r.get(Field::PostalCode)?, r.get(Field::Street)?),
            Rule::NameSounds => {
                let (a, b) = (soundex(first()?)?, soundex(last()?)?);
                if a <= b {
                    hash(&a, &b)
                } else {
                    hash(&b, &a)
                }
            }
        })
    }
}

/// The first `n` characters of `s` (all of it if it has fewer).
fn leading(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

/// The blocking keys of `record` in `tenant`.
pub fn keys(tenant: &str, record: &Record) -> Vec<Vec<u8>> {
    rule_keys(tenant, record)
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

/// The blocking keys of `record` in `tenant`, with the rule of each.
pub fn rule_keys(tenant: &str, record: &Record) -> Vec<(Rule, Vec<u8>)> {
    Rule::ALL
        .iter()
        .filter_map(|rule| {
            let digest = rule.digest(record)?;
            let mut k = Vec::with_capacity(tenant.len() + 20);
            k.extend_from_slice(tenant.as_bytes());
            k.push(0);
            k.extend_from_slice(rule.tag().as_bytes());
            k.push(0);
            k.extend_from_slice(&digest[..16]);
            Some((*rule, k))
        })
        .collect()
}

/// The prefix of every blocking key of `tenant`.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

/// A node filed under a key. The newest nodes of a block carry the record they were filed
/// with (the candidates a record is compared with, read with the block); older ones only their
/// id, their record being in `match_records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub node: NodeId,
    pub record: Option<Record>,
}

/// The nodes filed under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Sorted by node id: node ids grow as identifiers arrive, so the last are the newest.
    Open(Vec<Entry>),
    /// Grew past the cap: yields no candidates and takes no more nodes.
    Oversized,
}

/// What filing a node under a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    Added,
    /// The node was filed here before, as it is now.
    AlreadyThere,
    /// The node was filed here before with another record, which this one replaced.
    Updated,
    /// This node made the block oversized.
    Overflowed,
    /// The block was oversized before.
    Oversized,
}

/// Format byte of an open block. Earlier layouts are reported as corrupt state, not misread:
/// 0 was bare node ids (8 bytes each), 2 carried every node's record (filing one node rewrote
/// the records of all the others, up to `max_block_size` of them).
const OPEN: u8 = 4;
const OVERSIZED: u8 = 1;

impl Block {
    pub fn empty() -> Self {
        Block::Open(Vec::new())
    }

    /// The nodes the block lists, oldest first (none when oversized).
    pub fn entries(&self) -> &[Entry] {
        match self {
            Block::Open(entries) => entries,
            Block::Oversized => &[],
        }
    }

    /// The nodes the block lists.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.entries().iter().map(|e| e.node).collect()
    }

    /// The candidates the block yields for `node`: the other nodes it lists, newest first, at
    /// most `limit` of them.
    pub fn newest(&self, node: NodeId, limit: usize) -> impl Iterator<Item = &Entry> + '_ {
        self.entries()
            .iter()
            .rev()
            .filter(move |e| e.node != node)
            .take(limit)
    }

    /// An open block listing nothing: stored as no block at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, Block::Open(entries) if entries.is_empty())
    }

    /// Files `node` with `record`, keeping at most `cap` nodes, and the records of the newest
    /// `keep` of them only.
    pub fn file(&mut self, node: NodeId, record: &Record, cap: usize, keep: usize) -> Filed {
        let Block::Open(entries) = self else {
            return Filed::Oversized;
        };
        let filed = match entries.binary_search_by_key(&node, |e| e.node) {
            Ok(at) => {
                let kept = (at + keep >= entries.len()).then_some(record);
                if entries[at].record.as_ref() == kept {
                    return Filed::AlreadyThere;
                }
                entries[at].record = kept.cloned();
                Filed::Updated
            }
            Err(_) if entries.len() >= cap => {
                *self = Block::Oversized;
                return Filed::Overflowed;
            }
            Err(at) => {
                entries.insert(
                    at,
                    Entry {
                        node,
                        record: Some(record.clone()),
                    },
                );
                Filed::Added
            }
        };
        // A node that is no longer among the newest is compared no more: its record goes.
        let older = entries.len().saturating_sub(keep);
        for e in &mut entries[..older] {
            e.record = None;
        }
        filed
    }

    /// Takes `node` out (its record changed keys, or `forget` erases it); whether it was filed
    /// here. An oversized block lists no nodes and stays oversized.
    pub fn remove(&mut self, node: NodeId) -> bool {
        match self {
            Block::Oversized => false,
            Block::Open(entries) => match entries.binary_search_by_key(&node, |e| e.node) {
                Ok(at) => {
                    entries.remove(at);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// A format byte, then per entry the node id as a LEB128 varint (the first as it is, each
    /// next one as its difference from the one before: a few bytes), then 0 for an entry
    /// without record, or the record's length + 1 (varint) and the record ([`Record::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Block::Oversized => vec![OVERSIZED],
            Block::Open(entries) => {
                let lens: Vec<usize> = entries
                    .iter()
                    .map(|e| e.record.as_ref().map_or(0, Record::encoded_len))
                    .collect();
                // At most 10 bytes per varint.
                let mut b = Vec::with_capacity(1 + lens.iter().map(|l| 20 + l).sum::<usize>());
                b.push(OPEN);
                let mut previous = 0;
                for (e, len) in entries.iter().zip(lens) {
                    varint::write(&mut b, e.node - previous);
                    previous = e.node;
                    match &e.record {
                        None => b.push(0),
                        Some(r) => {
                            varint::write(&mut b, len as u64 + 1);
                            r.encode_into(&mut b);
                        }
                    }
                }
                b
            }
        }
    }

    /// The block [`Self::encode`] wrote; `None` if `b` is not one (an earlier layout included,
    /// or ids not strictly ascending).
    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.split_first()? {
            (&OVERSIZED, []) => Some(Block::Oversized),
            (&OPEN, mut rest) => {
                let mut entries = Vec::new();
                let mut previous: NodeId = 0;
                while !rest.is_empty() {
                    let delta = varint::read(&mut rest)?;
                    // The first id may not be 0 (no node is), the others must ascend.
                    if delta == 0 {
                        return None;
                    }
                    previous = previous.checked_add(delta)?;
                    let record = match usize::try_from(varint::read(&mut rest)?).ok()? {
                        0 => None,
                        len => {
                            let r = Record::decode(rest.get(..len - 1)?)?;
                            rest = &rest[len - 1..];
                            Some(r)
                        }
                    };
                    entries.push(Entry {
                        node: previous,
                        record,
                    });
                }
                Some(Block::Open(entries))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(Field, &str)]) -> Record {
        pairs.iter().map(|(f, v)| (*f, *v)).collect()
    }

    /// Stored blocks are found by these keys: they must stay the digests of the values as
    /// written when they were filed (`a|b`, names' prefixes counted in characters).
    #[test]
    fn keys_are_the_digests_of_the_values_they_were_filed_under() {
        let digest = |value: String| Sha256::digest(value.as_bytes())[..16].to_vec();
        let names = [
            ("maria", "smith"),
            ("Zoë", "Ångström"),
            ("jo", "o'neil"),
            ("", "smith"),
            ("émile", "zola"),
        ];
        for (first, last) in names {
            let r = record(&[
                (Field::FirstName, first),
                (Field::LastName, last),
                (Field::PostalCode, "94107"),
                (Field::BirthDate, "1984-03-07"),
                (Field::Street, "1 main st"),
            ]);
            let sounds = |s: &str| soundex(s);
            let mut expected = vec![(
                Rule::SurnameSoundexPostcode,
                format!("{}|94107", sounds(last).unwrap()),
            )];
            if let Some(initial) = first.chars().next() {
                expected.push((Rule::BirthDateInitial, format!("1984-03-07|{initial}")));
            }
            let prefix: String = first.chars().take(3).collect();
            expected.push((Rule::SurnameFirstPrefix, format!("{last}|{prefix}")));
            expected.push((Rule::BirthDatePostcode, "1984-03-07|94107".to_string()));
            expected.push((Rule::PostcodeStreet, "94107|1 main st".to_string()));
            if let (Some(a), Some(b)) = (sounds(first), sounds(last)) {
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                expected.push((Rule::NameSounds, format!("{a}|{b}")));
            }
            let expected: Vec<(Rule, Vec<u8>)> = expected
                .into_iter()
                .map(|(rule, value)| {
                    let mut k = format!("acme\0{}\0", rule.tag()).into_bytes();
                    k.extend(digest(value));
                    (rule, k)
                })
                .collect();
            assert_eq!(rule_keys("acme", &r), expected, "{first} {last}");
        }
    }

    #[test]
    fn keys_need_their_fields_and_tolerate_surname_typos() {
        let a = record(&[
            (Field::FirstName, "maria"),
            (Field::LastName, "smith"),
            (Field::PostalCode, "94107"),
            (Field::BirthDate, "1984-03-07"),
        ]);
        let b = record(&[
            (Field::FirstName, "maria"),
            (Field::LastName, "smyth"),
            (Field::PostalCode, "94107"),
        ]);
        let (ka, kb) = (keys("acme", &a), keys("acme", &b));
        let rules = |r: &Record| -> Vec<Rule> {
            rule_keys("acme", r)
                .into_iter()
                .map(|(rule, _)| rule)
                .collect()
        };
        assert_eq!(
            rules(&a),
            [
                Rule::SurnameSoundexPostcode,
                Rule::BirthDateInitial,
                Rule::SurnameFirstPrefix,
                Rule::BirthDatePostcode,
                Rule::NameSounds
            ],
            "no street, no postal code + street key"
        );
        assert_eq!(
            rules(&b),
            [
                Rule::SurnameSoundexPostcode,
                Rule::SurnameFirstPrefix,
                Rule::NameSounds
            ],
            "no birth date, no date keys"
        );
        assert_eq!(ka[0], kb[0], "Soundex puts smith and smyth in one block");
        assert_eq!(ka[4], kb[2], "and in one name-sounds block");
        assert_ne!(ka[2], kb[1], "the exact surname differs");
        let swapped = record(&[(Field::FirstName, "smith"), (Field::LastName, "maria")]);
        assert_eq!(
            keys("acme", &swapped).last(),
            ka.last(),
            "names typed into each other's box share the name-sounds key"
        );
        assert!(
            keys("other", &a).iter().all(|k| !ka.contains(k)),
            "tenant is in the key"
        );
        assert!(keys("acme", &record(&[(Field::City, "paris")])).is_empty());
        assert!(
            !ka[0].windows(5).any(|w| w == b"94107"),
            "values are hashed"
        );
    }

    #[test]
    fn blocks_cap_their_size_keep_the_newest_records_and_round_trip() {
        let smith = record(&[(Field::LastName, "smith"), (Field::PostalCode, "94107")]);
        let moved = record(&[(Field::LastName, "smith"), (Field::PostalCode, "10001")]);
        let mut b = Block::empty();
        assert!(b.is_empty());
        assert_eq!(b.file(5, &smith, 3, 2), Filed::Added);
        assert_eq!(b.file(3, &moved, 3, 2), Filed::Added);
        assert_eq!(b.file(5, &smith, 3, 2), Filed::AlreadyThere);
        assert_eq!(b.nodes(), [3, 5]);
        assert_eq!(b.entries()[1].record, Some(smith.clone()));
        assert_eq!(b.file(5, &moved, 3, 2), Filed::Updated);
        assert_eq!(
            b.entries()[1].record,
            Some(moved.clone()),
            "the latest record"
        );
        assert_eq!(Block::decode(&b.encode()), Some(b.clone()));
        // A third node: only the newest two keep their records.
        assert_eq!(b.file(9, &smith, 3, 2), Filed::Added);
        assert_eq!(b.nodes(), [3, 5, 9]);
        assert_eq!(b.entries()[0].record, None, "no longer among the newest");
        assert_eq!(
            b.file(3, &smith, 3, 2),
            Filed::AlreadyThere,
            "nor filed again"
        );
        assert_eq!(Block::decode(&b.encode()), Some(b.clone()));
        assert_eq!(
            b.newest(9, 5).map(|e| e.node).collect::<Vec<_>>(),
            [5, 3],
            "newest first, not itself"
        );
        assert_eq!(b.newest(1, 1).map(|e| e.node).collect::<Vec<_>>(), [9]);
        let mut taken = b.clone();
        assert!(taken.remove(3));
        assert!(!taken.remove(3), "already out");
        assert_eq!(taken.nodes(), [5, 9]);
        assert!(taken.remove(5) && taken.remove(9) && taken.is_empty());
        assert_eq!(b.file(10, &smith, 3, 2), Filed::Overflowed);
        assert_eq!(b, Block::Oversized);
        assert!(b.entries().is_empty() && !b.is_empty());
        assert_eq!(b.newest(1, 5).count(), 0);
        assert_eq!(b.file(11, &smith, 3, 2), Filed::Oversized);
        assert!(!b.remove(9), "an oversized block lists nothing to take out");
        assert_eq!(b, Block::Oversized);
        assert_eq!(Block::decode(&b.encode()), Some(Block::Oversized));
        assert_eq!(
            Block::decode(&Block::empty().encode()),
            Some(Block::empty())
        );
    }

    #[test]
    fn old_entries_are_ids_and_earlier_layouts_are_refused() {
        let smith = record(&[(Field::LastName, "smith"), (Field::PostalCode, "94107")]);
        let ids = [1, 2, 130, 1 << 20, (1 << 40) + 7, u64::MAX];
        let b = Block::Open(
            ids.iter()
                .map(|node| Entry {
                    node: *node,
                    record: None,
                })
                .collect(),
        );
        let bytes = b.encode();
        assert_eq!(Block::decode(&bytes), Some(b));
        // 1 format byte; deltas 1, 1, 128, ~2^20, ~2^40, ~2^64 take 1, 1, 2, 3, 6 and 10
        // bytes, and each entry one byte saying it has no record.
        assert_eq!(bytes.len(), 1 + (1 + 1 + 2 + 3 + 6 + 10) + 6);
        // A full block of 100 nodes, 13 of them with records: the 87 others cost ~3 bytes.
        let mut full = Block::empty();
        for i in 1..=100 {
            full.file(1_000_000 + i * 997, &smith, 100, 13);
        }
        let size = full.encode().len();
        let with_records = 13 * (2 + smith.encode().len());
        assert!(size <= 1 + 3 + 99 * 3 + with_records, "{size}");
        assert_eq!(Block::decode(&bytes[..bytes.len() - 1]), None, "cut short");
        assert_eq!(Block::decode(&[OPEN, 5, 0, 0, 0]), None, "not ascending");
        assert_eq!(Block::decode(&[OPEN, 0, 0]), None, "no node 0");
        assert_eq!(Block::decode(&[OPEN, 1, 5, 0]), None, "record cut short");
        assert_eq!(
            Block::decode(&[
                OPEN, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 1, 0
            ]),
            None,
            "an id beyond 64 bits"
        );
        assert_eq!(
            Block::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 7]),
            None,
            "the first layout, bare 8-byte node ids, is not misread"
        );
        assert_eq!(
            Block::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2, 1, 0]),
            None,
            "nor the second, which carried every node's record"
        );
        assert_eq!(Block::decode(&[]), None);
    }
}
