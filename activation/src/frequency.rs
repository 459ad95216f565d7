//! Frequency caps: at most `max` `Audience Entered` deliveries per person on a channel (`email`,
//! `ads`...) within a sliding window, across cohorts and destinations of that channel. Every cap
//! of a channel must have room for a delivery to be sent (`1 per 1d` and `3 per 7d` together).
//!
//! When each delivery was sent is kept per (person, channel) in the membership state and written
//! in the batch's transaction with the delivery itself, so a restart replays exactly the same
//! decisions. Only new entries count: exits, deletions and re-sends of a held member's changed
//! identifiers are never capped.

use crate::config::ActivationConfig;
use crate::membership::MembershipTxn;
use crate::Result;
use cdp_proto::Timestamp;
use std::collections::BTreeMap;

/// The caps of one channel.
#[derive(Debug, Clone)]
pub struct ChannelCaps {
    channel: String,
    /// `(max, window_ms)`.
    caps: Vec<(u32, u64)>,
    /// The longest window: older deliveries can be forgotten.
    horizon_ms: u64,
    /// The largest `max`: no cap looks further back than that many deliveries.
    keep: usize,
}

impl ChannelCaps {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Whether one more entered delivery to the person fits every cap at `now`; when it does, it
    /// is recorded as sent at `now`.
    pub fn take(
        &self,
        txn: &mut MembershipTxn,
        tenant: &str,
        canonical_id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let now_ms = now.timestamp_millis().max(0) as u64;
        let mut sent = txn.cap_history(tenant, canonical_id, &self.channel)?;
        // A delivery at exactly `now - window` is out of the window; one stamped after `now` (a
        // clock that went back) counts as inside.
        sent.retain(|t| *t + self.horizon_ms > now_ms);
        let full = self.caps.iter().any(|(max, window)| {
            sent.iter().filter(|t| **t + window > now_ms).count() >= *max as usize
        });
        if full {
            return Ok(false);
        }
        sent.push(now_ms);
        sent.sort_unstable();
        let excess = sent.len().saturating_sub(self.keep);
        sent.drain(..excess);
        txn.set_cap_history(tenant, canonical_id, &self.channel, &sent);
        Ok(true)
    }
}

/// Every capped channel.
#[derive(Debug, Clone, Default)]
pub struct FrequencyCaps {
    channels: BTreeMap<String, ChannelCaps>,
}

impl FrequencyCaps {
    /// From a validated config.
    pub fn compile(config: &ActivationConfig) -> Self {
        let mut channels: BTreeMap<String, ChannelCaps> = BTreeMap::new();
        for cap in &config.frequency_caps {
            let window = cap
                .window_ms()
                .expect("windows are checked by ActivationConfig::validate");
            let c = channels
                .entry(cap.channel.clone())
                .or_insert_with(|| ChannelCaps {
                    channel: cap.channel.clone(),
                    caps: Vec::new(),
                    horizon_ms: 0,
                    keep: 0,
                });
            c.caps.push((cap.max, window));
            c.horizon_ms = c.horizon_ms.max(window);
            c.keep = c.keep.max(cap.max as usize);
        }
        Self { channels }
    }

    /// The caps of `channel`, if it has any.
    pub fn channel(&self, channel: &str) -> Option<&ChannelCaps> {
        if channel.is_empty() {
            return None;
        }
        self.channels.get(channel)
    }

    /// A merge moves the retired id's deliveries to the survivor: they reached the same person.
    pub fn merge_into(
        &self,
        txn: &mut MembershipTxn,
        tenant: &str,
        retired: &str,
        survivor: &str,
    ) -> Result<()> {
        for channel in txn.cap_channels(tenant, retired)? {
            let moved = txn.cap_history(tenant, retired, &channel)?;
            txn.set_cap_history(tenant, retired, &channel, &[]);
            let Some(caps) = self.channels.get(&channel) else {
                continue; // no longer capped: nothing to keep
            };
            let mut sent = txn.cap_history(tenant, survivor, &channel)?;
            sent.extend(moved);
            sent.sort_unstable();
            let excess = sent.len().saturating_sub(caps.keep);
            sent.drain(..excess);
            txn.set_cap_history(tenant, survivor, &channel, &sent);
        }
        Ok(())
    }

    /// Erasure forgets when the person was sent anything.
    pub fn forget(txn: &mut MembershipTxn, tenant: &str, canonical_id: &str) -> Result<()> {
        for channel in txn.cap_channels(tenant, canonical_id)? {
            txn.set_cap_history(tenant, canonical_id, &channel, &[]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DestinationConfig, FrequencyCapConfig};
    use crate::membership::MembershipStore;
    use cdp_proto::time::from_millis;

    const DAY: i64 = 86_400_000;

    fn caps(list: &[(u32, &str)]) -> FrequencyCaps {
        let mut email = DestinationConfig::kafka("esp", "t.esp");
        email.channel = "email".into();
        let config = ActivationConfig {
            destinations: vec![email],
            cohorts: vec![],
            frequency_caps: list
                .iter()
                .map(|(max, window)| FrequencyCapConfig {
                    channel: "email".into(),
                    max: *max,
                    window: window.to_string(),
                })
                .collect(),
            ..ActivationConfig::default()
        };
        config.validate().unwrap();
        FrequencyCaps::compile(&config)
    }

    /// Tries a delivery at each day offset, committing each; returns which were allowed.
    fn run(caps: &FrequencyCaps, store: &MembershipStore, days: &[i64]) -> Vec<bool> {
        let email = caps.channel("email").unwrap();
        days.iter()
            .map(|d| {
                let mut txn = store.txn().unwrap();
                let ok = email
                    .take(&mut txn, "acme", "cdp_1", from_millis(d * DAY))
                    .unwrap();
                txn.commit().unwrap();
                ok
            })
            .collect()
    }

    #[test]
    fn a_sliding_window_frees_a_slot_when_the_oldest_delivery_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let caps = caps(&[(2, "7d")]);
        assert_eq!(
            run(&caps, &store, &[100, 101, 102, 106, 107, 108]),
            [true, true, false, false, true, true]
        );
        assert!(caps.channel("sms").is_none());
        assert!(caps.channel("").is_none());
    }

    #[test]
    fn every_cap_of_a_channel_must_have_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let caps = caps(&[(1, "1d"), (2, "1w")]);
        assert_eq!(
            run(&caps, &store, &[10, 10, 11, 12, 17, 18]),
            [true, false, true, false, true, true]
        );
    }

    #[test]
    fn merges_move_the_history_and_erasure_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let caps = caps(&[(2, "7d")]);
        let email = caps.channel("email").unwrap();
        let mut txn = store.txn().unwrap();
        assert!(email
            .take(&mut txn, "acme", "old", from_millis(DAY))
            .unwrap());
        assert!(email
            .take(&mut txn, "acme", "new", from_millis(DAY))
            .unwrap());
        caps.merge_into(&mut txn, "acme", "old", "new").unwrap();
        assert!(!email
            .take(&mut txn, "acme", "new", from_millis(DAY))
            .unwrap());
        assert!(txn.cap_channels("acme", "old").unwrap().is_empty());
        FrequencyCaps::forget(&mut txn, "acme", "new").unwrap();
        txn.commit().unwrap();
        assert!(store.entries("caps").unwrap().is_empty());
    }
}
