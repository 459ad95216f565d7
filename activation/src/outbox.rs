//! What an entry of activation's outbox holds. Most entries are one record in the bus's outbox
//! form ([`OutRecord::to_bytes`]). A cohort change is one entry for its two records: the
//! `Audience Entered`/`Exited` event and the membership record under the same key, which
//! carries the same bytes on entry and is a tombstone on exit. Its value is stored once, so a
//! change writes (and deletes) one key and half the bytes it took as two records.

use cdp_bus::OutRecord;

/// The first byte of a cohort change's entry. A record's outbox form starts with 1 (its topic,
/// which is always there), so the two forms cannot be mistaken for each other.
const CHANGE: u8 = 2;
const MEMBER: u8 = 1;

/// The entry of a cohort change: its event on `events_topic` and its membership record on
/// `membership_topic`, both under `key`; `member` says whether the membership record carries
/// `value` or is a tombstone.
pub fn change(
    events_topic: &str,
    membership_topic: &str,
    key: &[u8],
    value: &[u8],
    member: bool,
) -> Vec<u8> {
    let parts = [
        events_topic.as_bytes(),
        membership_topic.as_bytes(),
        key,
        value,
    ];
    let mut out = Vec::with_capacity(2 + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.push(CHANGE);
    out.push(if member { MEMBER } else { 0 });
    for part in parts {
        let len = u32::try_from(part.len()).expect("a cohort change is far below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The records an entry holds, in the order they are published; `None` if it is damaged.
pub fn records(entry: &[u8]) -> Option<(OutRecord, Option<OutRecord>)> {
    let (&first, rest) = entry.split_first()?;
    if first != CHANGE {
        return OutRecord::from_bytes(entry).map(|r| (r, None));
    }
    let (&flags, mut rest) = rest.split_first()?;
    let member = match flags {
        0 => false,
        MEMBER => true,
        _ => return None,
    };
    let mut part = || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (part, tail) = tail.split_at(len);
        rest = tail;
        Some(part)
    };
    let events_topic = std::str::from_utf8(part()?).ok()?;
    let membership_topic = std::str::from_utf8(part()?).ok()?;
    let (key, value) = (part()?, part()?);
    if !rest.is_empty() {
        return None;
    }
    let membership = if member {
        OutRecord::new(membership_topic, key, value)
    } else {
        OutRecord::tombstone(membership_topic, key)
    };
    Some((OutRecord::new(events_topic, key, value), Some(membership)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_holds_its_event_and_its_membership_record() {
        let entered = change(
            "cdp.cohorts",
            "cdp.cohorts.membership",
            b"vip:cdp_1",
            b"{}",
            true,
        );
        let (event, membership) = records(&entered).unwrap();
        assert_eq!(event, OutRecord::new("cdp.cohorts", "vip:cdp_1", "{}"));
        assert_eq!(
            membership,
            Some(OutRecord::new("cdp.cohorts.membership", "vip:cdp_1", "{}"))
        );
        let exited = change(
            "cdp.cohorts",
            "cdp.cohorts.membership",
            b"vip:cdp_1",
            b"{}",
            false,
        );
        let (event, membership) = records(&exited).unwrap();
        assert_eq!(event, OutRecord::new("cdp.cohorts", "vip:cdp_1", "{}"));
        assert_eq!(
            membership,
            Some(OutRecord::tombstone("cdp.cohorts.membership", "vip:cdp_1"))
        );
    }

    #[test]
    fn a_record_entry_reads_as_the_one_record_it_is() {
        let record =
            OutRecord::new("dest.topic", "k", "v").with_headers(vec![("h".into(), vec![1])]);
        let bytes = record.to_bytes();
        assert_ne!(bytes[0], CHANGE, "the two forms start differently");
        assert_eq!(records(&bytes), Some((record, None)));
        let tombstone = OutRecord::tombstone("t", "k");
        assert_eq!(records(&tombstone.to_bytes()), Some((tombstone, None)));
    }

    #[test]
    fn damaged_entries_read_as_nothing() {
        let good = change("a", "b", b"key", b"value", true);
        for cut in 1..good.len() {
            assert_eq!(records(&good[..cut]), None, "cut at {cut}");
        }
        let mut flags = good.clone();
        flags[1] = 7;
        assert_eq!(records(&flags), None);
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(records(&longer), None);
        let mut topic = good;
        topic[6] = 0xff;
        assert_eq!(records(&topic), None, "a topic that is not UTF-8");
        assert_eq!(records(&[]), None);
    }
}
