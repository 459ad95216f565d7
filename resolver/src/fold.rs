//! Folding signals into profile attributes, and two profiles into one on a merge.

use cdp_proto::{Profile, Signal, Source, Timestamp};
use std::collections::BTreeMap;

/// Traits that are owned by the CRM: other sources may fill them, never overwrite them.
const CRM_OWNED: &[&str] = &["lifecycle_stage", "segment"];

/// Applies what `signal` says about the person to `profile`; `traits` are the signal's,
/// moved out of it so that the profile takes their keys and values without copies.
pub fn fold_signal(
    profile: &mut Profile,
    signal: &Signal,
    traits: BTreeMap<String, serde_json::Value>,
) {
    let a = &mut profile.attributes;
    let at = signal.event_time;
    a.total_touchpoints += 1;
    a.channels_active.insert(signal.source);
    a.first_seen = Some(a.first_seen.map_or(at, |f| f.min(at)));
    a.last_engagement = Some(a.last_engagement.map_or(at, |l| l.max(at)));
    if let Some(name) = signal.event.as_ref().and_then(|e| e.name.as_ref()) {
        a.counts.entry(name.clone()).or_default().record(at);
    }
    for (key, value) in traits {
        set_trait(profile, key, value, at, signal.source);
    }
    profile.consent.apply(&signal.consent);
    profile.updated_at = profile.updated_at.max(signal.received_at);
}

fn set_trait(
    profile: &mut Profile,
    key: String,
    value: serde_json::Value,
    at: Timestamp,
    source: Source,
) {
    let a = &mut profile.attributes;
    let crm_owned = CRM_OWNED.contains(&key.as_str());
    let time = a.trait_times.get_mut(&key);
    let previous = time.as_deref().copied();
    let newer = previous.is_none_or(|p| at >= p);
    // The CRM overwrites its own fields whatever their age; others only fill a gap.
    let allowed = if crm_owned {
        source == Source::Crm && newer || previous.is_none()
    } else {
        newer
    };
    if !allowed {
        return;
    }
    let text = || value.as_str().map(str::to_string);
    match key.as_str() {
        "lifecycle_stage" => a.lifecycle_stage = text(),
        "segment" => a.segment = text(),
        _ => {}
    }
    // A trait seen before is overwritten in place; a new one takes the signal's key.
    match time {
        Some(t) => *t = at,
        None => {
            a.trait_times.insert(key.clone(), at);
        }
    }
    match a.traits.get_mut(&key) {
        Some(v) => *v = value,
        None => {
            a.traits.insert(key, value);
        }
    }
}

/// Folds `loser` into `survivor`. Identifiers and histories are unioned; for every trait the
/// later write wins; counters add up; the version is above both.
pub fn merge_into(survivor: &mut Profile, loser: Profile) {
    let mut identifiers = std::mem::take(&mut survivor.identifiers);
    identifiers.extend(loser.identifiers);
    identifiers.sort();
    identifiers.dedup();
    survivor.identifiers = identifiers;
    survivor.aliases.extend(loser.aliases);
    survivor.merge_history.extend(loser.merge_history);
    survivor.merge_history.sort_by_key(|m| m.merged_at);

    let a = &mut survivor.attributes;
    let b = loser.attributes;
    a.total_touchpoints += b.total_touchpoints;
    a.channels_active.extend(b.channels_active);
    a.first_seen = a
        .first_seen
        .min(b.first_seen)
        .or(a.first_seen)
        .or(b.first_seen);
    a.last_engagement = a.last_engagement.max(b.last_engagement);
    for (name, counter) in &b.counts {
        a.counts.entry(name.clone()).or_default().merge(counter);
    }
    for (key, value) in b.traits {
        let theirs = b.trait_times.get(&key).copied();
        let ours = a.trait_times.get(&key).copied();
        if ours.is_none() || theirs > ours {
            if let Some(t) = theirs {
                a.trait_times.insert(key.clone(), t);
            }
            match key.as_str() {
                "lifecycle_stage" => a.lifecycle_stage = value.as_str().map(str::to_string),
                "segment" => a.segment = value.as_str().map(str::to_string),
                _ => {}
            }
            a.traits.insert(key, value);
        }
    }
    // The more recently updated profile's consent statements are the newer ones.
    if loser.updated_at > survivor.updated_at {
        survivor.consent.apply(&loser.consent);
    } else {
        let mut c = loser.consent;
        c.apply(&survivor.consent);
        survivor.consent = c;
    }
    survivor.created_at = survivor.created_at.min(loser.created_at);
    survivor.updated_at = survivor.updated_at.max(loser.updated_at);
    survivor.version = survivor.version.max(loser.version);
}
