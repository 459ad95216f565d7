//! Blocking: which profiles an arriving record is compared with. Each record with comparison
//! fields is filed under a few keys (phonetic surname + postal code, birth date + first
//! initial, surname + first-name prefix, birth date + postal code, postal code + street, and
//! both names' sounds in either order) in the `blocks` column family, in the same write as
//! the rest of its signal's effects; its candidates are the other records filed under the same
//! keys. Each entry of a block carries the node's normalised record, so comparing an arriving
//! record with a block's candidates takes one read of the block, not a read and decode of each
//! candidate's profile. A block holds at most `max_block_size` nodes: when one more would not
//! fit, the key is marked oversized, its entries are dropped and it no longer yields candidates
//! (a name shared by thousands tells nothing), so a record never costs more than the keys'
//! capacity.
//!
//! Keys are `tenant \0 kind \0 sha256(value)[..16]`: the names and dates they are made of are
//! not in the keys in clear. They are in the entries, and `forget` erases those: each node's
//! record is also kept by node (`match_records`), which names every key the node is filed
//! under.

use super::field::{Field, Record};
use super::soundex::soundex;
use crate::txn::NodeId;
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

    /// The key value of `record` under this rule, if it has the fields.
    fn value(self, r: &Record) -> Option<String> {
        let first = || r.get(Field::FirstName);
        let last = || r.get(Field::LastName);
        match self {
            Rule::SurnameSoundexPostcode => Some(format!(
                "{}|{}",
                soundex(last()?)?,
                r.get(Field::PostalCode)?
            )),
            Rule::BirthDateInitial => Some(format!(
                "{}|{}",
                r.get(Field::BirthDate)?,
                first()?.chars().next()?
            )),
            Rule::SurnameFirstPrefix => Some(format!(
                "{}|{}",
                last()?,
                first()?.chars().take(3).collect::<String>()
            )),
            Rule::BirthDatePostcode => Some(format!(
                "{}|{}",
                r.get(Field::BirthDate)?,
                r.get(Field::PostalCode)?
            )),
            Rule::PostcodeStreet => Some(format!(
                "{}|{}",
                r.get(Field::PostalCode)?,
                r.get(Field::Street)?
            )),
            Rule::NameSounds => {
                let (a, b) = (soundex(first()?)?, soundex(last()?)?);
                Some(if a <= b {
                    format!("{a}|{b}")
                } else {
                    format!("{b}|{a}")
                })
            }
        }
    }
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
            let value = rule.value(record)?;
            let digest = Sha256::digest(value.as_bytes());
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

/// A node filed under a key, with the record it was filed with: what a comparison reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub node: NodeId,
    pub record: Record,
}

/// The nodes filed under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Sorted by node id.
    Open(Vec<Entry>),
    /// Grew past the cap: yields no candidates and takes no more nodes.
    Oversized,
}

/// What filing a node under a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    Added,
    /// The node was filed with this very record before.
    AlreadyThere,
    /// The node was filed with another record, which this one replaced.
    Updated,
    /// This node made the block oversized.
    Overflowed,
    /// The block was oversized before.
    Oversized,
}

/// Format byte of an open block. (0 was an open block of bare node ids, before records were
/// kept in the entries: such a block is reported, not misread.)
const OPEN: u8 = 2;
const OVERSIZED: u8 = 1;

impl Block {
    pub fn empty() -> Self {
        Block::Open(Vec::new())
    }

    /// The candidates the block yields.
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

    /// An open block listing nothing: stored as no block at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, Block::Open(entries) if entries.is_empty())
    }

    /// Files `node` with `record`, keeping at most `cap` nodes.
    pub fn file(&mut self, node: NodeId, record: &Record, cap: usize) -> Filed {
        match self {
            Block::Oversized => Filed::Oversized,
            Block::Open(entries) => match entries.binary_search_by_key(&node, |e| e.node) {
                Ok(at) if entries[at].record == *record => Filed::AlreadyThere,
                Ok(at) => {
                    entries[at].record = record.clone();
                    Filed::Updated
                }
                Err(_) if entries.len() >= cap => {
                    *self = Block::Oversized;
                    Filed::Overflowed
                }
                Err(at) => {
                    entries.insert(
                        at,
                        Entry {
                            node,
                            record: record.clone(),
                        },
                    );
                    Filed::Added
                }
            },
        }
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

    /// A format byte, then per entry the node (8 bytes big-endian), the length of its record
    /// (4 bytes big-endian) and the record ([`Record::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Block::Oversized => vec![OVERSIZED],
            Block::Open(entries) => {
                let mut b = Vec::with_capacity(1 + entries.len() * 64);
                b.push(OPEN);
                for e in entries {
                    b.extend_from_slice(&e.node.to_be_bytes());
                    let at = b.len();
                    b.extend_from_slice(&[0; 4]);
                    e.record.encode_into(&mut b);
                    let len = (b.len() - at - 4) as u32;
                    b[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                b
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.split_first()? {
            (&OVERSIZED, []) => Some(Block::Oversized),
            (&OPEN, mut rest) => {
                let mut entries = Vec::new();
                while !rest.is_empty() {
                    let node = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                    let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
                    let record = Record::decode(rest.get(12..12 + len)?)?;
                    entries.push(Entry { node, record });
                    rest = &rest[12 + len..];
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
    fn blocks_cap_their_size_keep_records_and_round_trip() {
        let smith = record(&[(Field::LastName, "smith"), (Field::PostalCode, "94107")]);
        let moved = record(&[(Field::LastName, "smith"), (Field::PostalCode, "10001")]);
        let mut b = Block::empty();
        assert!(b.is_empty());
        assert_eq!(b.file(5, &smith, 2), Filed::Added);
        assert_eq!(b.file(3, &moved, 2), Filed::Added);
        assert_eq!(b.file(5, &smith, 2), Filed::AlreadyThere);
        assert_eq!(b.nodes(), [3, 5]);
        assert_eq!(b.entries()[1].record, smith);
        assert_eq!(b.file(5, &moved, 2), Filed::Updated);
        assert_eq!(
            b.entries()[1].record,
            moved,
            "the latest record is compared"
        );
        assert_eq!(Block::decode(&b.encode()), Some(b.clone()));
        let mut taken = b.clone();
        assert!(taken.remove(3));
        assert!(!taken.remove(3), "already out");
        assert_eq!(taken.nodes(), [5]);
        assert!(taken.remove(5) && taken.is_empty());
        assert_eq!(b.file(9, &smith, 2), Filed::Overflowed);
        assert_eq!(b, Block::Oversized);
        assert!(b.entries().is_empty() && !b.is_empty());
        assert_eq!(b.file(10, &smith, 2), Filed::Oversized);
        assert!(!b.remove(9), "an oversized block lists nothing to take out");
        assert_eq!(b, Block::Oversized);
        assert_eq!(Block::decode(&b.encode()), Some(Block::Oversized));
        assert_eq!(
            Block::decode(&Block::empty().encode()),
            Some(Block::empty())
        );
        let bytes = Block::Open(vec![Entry {
            node: 7,
            record: smith.clone(),
        }])
        .encode();
        assert_eq!(Block::decode(&bytes[..bytes.len() - 1]), None, "cut short");
        assert_eq!(
            Block::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 7]),
            None,
            "the earlier layout of bare node ids is not misread"
        );
        assert_eq!(Block::decode(&[]), None);
    }
}
