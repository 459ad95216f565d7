//! Blocking: which profiles an arriving record is compared with. Each record with comparison
//! fields is filed under a few keys (phonetic surname + postal code, birth date + first
//! initial, surname + first-name prefix, birth date + postal code, postal code + street, and
//! both names' sounds in either order) in the `blocks` column family, in the same write as
//! the rest of its signal's effects; its candidates are the other records filed under the same
//! keys. A block holds at most `max_block_size` nodes: when one more would not fit, the key is
//! marked oversized, its nodes are dropped and it no longer yields candidates (a name shared by
//! thousands tells nothing), so a record never costs more than the keys' capacity.
//!
//! Keys are `tenant \0 kind \0 sha256(value)[..16]`: the names and dates they are made of are
//! not stored here in clear.

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

/// The nodes filed under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Sorted node ids.
    Open(Vec<NodeId>),
    /// Grew past the cap: yields no candidates and takes no more nodes.
    Oversized,
}

/// What filing a node under a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    Added,
    AlreadyThere,
    /// This node made the block oversized.
    Overflowed,
    /// The block was oversized before.
    Oversized,
}

impl Block {
    /// The candidates the block yields.
    pub fn nodes(&self) -> &[NodeId] {
        match self {
            Block::Open(nodes) => nodes,
            Block::Oversized => &[],
        }
    }

    /// Files `node`, keeping at most `cap` nodes.
    pub fn file(&mut self, node: NodeId, cap: usize) -> Filed {
        match self {
            Block::Oversized => Filed::Oversized,
            Block::Open(nodes) => match nodes.binary_search(&node) {
                Ok(_) => Filed::AlreadyThere,
                Err(_) if nodes.len() >= cap => {
                    *self = Block::Oversized;
                    Filed::Overflowed
                }
                Err(at) => {
                    nodes.insert(at, node);
                    Filed::Added
                }
            },
        }
    }

    /// Takes `node` out (when `forget` erases it); whether it was filed here. An oversized
    /// block lists no nodes and stays oversized.
    pub fn remove(&mut self, node: NodeId) -> bool {
        match self {
            Block::Oversized => false,
            Block::Open(nodes) => match nodes.binary_search(&node) {
                Ok(at) => {
                    nodes.remove(at);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// A state byte (0 open, 1 oversized) and the nodes, 8 bytes big-endian each.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Block::Oversized => vec![1],
            Block::Open(nodes) => {
                let mut b = Vec::with_capacity(1 + 8 * nodes.len());
                b.push(0);
                for n in nodes {
                    b.extend_from_slice(&n.to_be_bytes());
                }
                b
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.split_first()? {
            (1, []) => Some(Block::Oversized),
            (0, rest) if rest.len() % 8 == 0 => Some(Block::Open(
                rest.chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(Field, &str)]) -> Record {
        Record(pairs.iter().map(|(f, v)| (*f, v.to_string())).collect())
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
    fn blocks_cap_their_size_and_round_trip() {
        let mut b = Block::Open(Vec::new());
        assert_eq!(b.file(5, 2), Filed::Added);
        assert_eq!(b.file(3, 2), Filed::Added);
        assert_eq!(b.file(5, 2), Filed::AlreadyThere);
        assert_eq!(b.nodes(), &[3, 5]);
        assert_eq!(Block::decode(&b.encode()), Some(b.clone()));
        let mut taken = b.clone();
        assert!(taken.remove(3));
        assert!(!taken.remove(3), "already out");
        assert_eq!(taken.nodes(), &[5]);
        assert_eq!(b.file(9, 2), Filed::Overflowed);
        assert_eq!(b, Block::Oversized);
        assert!(b.nodes().is_empty());
        assert_eq!(b.file(10, 2), Filed::Oversized);
        assert!(!b.remove(9), "an oversized block lists nothing to take out");
        assert_eq!(b, Block::Oversized);
        assert_eq!(Block::decode(&b.encode()), Some(Block::Oversized));
        assert_eq!(Block::decode(&[0, 1, 2]), None);
        assert_eq!(Block::decode(&[]), None);
    }
}
