//! A person's memberships in one record: the `held` column family of the membership store,
//! keyed like a person's prefix in `members` (`tenant \0 canonical_id \0`).
//!
//! Every profile update loads the person's memberships. In `members` they sit under one prefix,
//! and finding it is a seek through a skip-list memtable and each level's files; `members`
//! keeps that layout because listing a cohort walks it in key order. This record holds the
//! same states (audience key, member, version, since), read by key in a hash-indexed memtable.
//! `members` stays the truth: a transaction rewrites this record whenever it changes a
//! person's memberships and knows all of them, deletes it when it does not, and the next load
//! scans `members` and writes it again.

use crate::membership::MemberState;
use crate::ActivationError;

const FORMAT: u8 = 1;

/// `states`, in audience key order as given.
pub fn encode<'a>(states: impl IntoIterator<Item = (&'a [u8], &'a MemberState)>) -> Vec<u8> {
    let mut b = vec![FORMAT];
    for (audience, s) in states {
        b.extend_from_slice(&(audience.len() as u32).to_le_bytes());
        b.extend_from_slice(audience);
        b.push(u8::from(s.member));
        b.extend_from_slice(&s.seq.to_le_bytes());
        b.extend_from_slice(&s.since.timestamp().to_le_bytes());
        b.extend_from_slice(&s.since.timestamp_subsec_nanos().to_le_bytes());
    }
    b
}

/// The states [`encode`] wrote, audience keys as bytes.
pub fn decode(b: &[u8]) -> Result<Vec<(&[u8], MemberState)>, ActivationError> {
    let mut r = match b.split_first() {
        Some((&FORMAT, rest)) => Reader(rest),
        _ => return Err(corrupt("unknown format")),
    };
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let len = u32::from_le_bytes(r.array()?) as usize;
        let audience = r.take(len)?;
        let member = match r.array::<1>()? {
            [0] => false,
            [1] => true,
            _ => return Err(corrupt("member flag")),
        };
        let seq = u64::from_le_bytes(r.array()?);
        let secs = i64::from_le_bytes(r.array()?);
        let nanos = u32::from_le_bytes(r.array()?);
        let since = chrono::DateTime::from_timestamp(secs, nanos).ok_or_else(|| corrupt("time"))?;
        out.push((audience, MemberState { member, seq, since }));
    }
    Ok(out)
}

fn corrupt(what: &str) -> ActivationError {
    ActivationError::Corrupt(format!("held memberships: {what}"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ActivationError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| corrupt("truncated"))?;
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ActivationError> {
        Ok(self.take(N)?.try_into().expect("N bytes taken"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_written_and_damage_is_an_error() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let states = [
            (
                &b"buyers"[..],
                MemberState {
                    member: true,
                    seq: 3,
                    since: at,
                },
            ),
            (
                &b""[..],
                MemberState {
                    member: false,
                    seq: u64::MAX,
                    since: at,
                },
            ),
        ];
        let b = encode(states.iter().map(|(a, s)| (*a, s)));
        assert_eq!(decode(&b).unwrap(), states.to_vec());
        assert!(decode(&encode([])).unwrap().is_empty());
        for cut in 2..b.len() {
            if cut == 1 + 4 + 6 + 1 + 8 + 8 + 4 {
                continue; // exactly the first state
            }
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[2]).is_err());
    }
}
