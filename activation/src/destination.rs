//! Destinations at run time: what each one may receive (identifier kinds, consent purposes), the
//! events it is sent, and routing a cohort change to it. Per destination and (cohort, profile)
//! the state it holds is tracked, so consent withdrawn later turns into an exit there, an exit
//! names the identifiers the entry carried, and a deletion reaches every destination that ever
//! received the person.

use crate::config::{DestinationConfig, DestinationKind};
use crate::frequency::ChannelCaps;
use crate::membership::{DestMember, MembershipTxn};
use crate::rules::Withheld;
use crate::webhook::Secret;
use crate::{ActivationError, Result};
use cdp_bus::OutRecord;
use cdp_proto::{Identifier, Profile, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Header naming the destination on destination topics and their DLQ records.
pub const HEADER_DESTINATION: &str = "cdp.destination";

/// A configured destination, with its webhook secret resolved.
#[derive(Debug, Clone)]
pub struct Destination {
    pub config: DestinationConfig,
    pub secret: Option<Secret>,
}

impl Destination {
    /// Resolves the secret (from the file or the named environment variable).
    pub fn new(config: DestinationConfig) -> Result<Self> {
        let secret = match config.kind {
            DestinationKind::Kafka => None,
            DestinationKind::Webhook => {
                let (text, source) = if config.secret_env.is_empty() {
                    (config.secret.clone(), "secret".to_string())
                } else {
                    let text = std::env::var(&config.secret_env).map_err(|_| {
                        ActivationError::Config(format!(
                            "destination {:?}: environment variable {} (secret_env) is not set",
                            config.key, config.secret_env
                        ))
                    })?;
                    (text, format!("environment variable {}", config.secret_env))
                };
                Some(Secret::parse(&text).map_err(|e| {
                    ActivationError::Config(format!("destination {:?}: {source}: {e}", config.key))
                })?)
            }
        };
        Ok(Self { config, secret })
    }

    pub fn key(&self) -> &str {
        &self.config.key
    }

    /// Every required purpose granted explicitly; unknown consent is no consent.
    pub fn consents(&self, profile: &Profile) -> bool {
        self.config
            .consent
            .iter()
            .all(|p| profile.consent.purpose(p) == Some(true))
    }

    pub fn identifiers(&self, profile: &Profile) -> Vec<Identifier> {
        profile
            .identifiers
            .iter()
            .filter(|id| {
                self.config
                    .identifiers
                    .iter()
                    .any(|k| k == id.kind.as_str())
            })
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AudienceEntered,
    AudienceExited,
    /// The person was erased: delete everything held about them.
    ProfileDeleted,
}

impl EventKind {
    pub fn event_name(self) -> &'static str {
        match self {
            EventKind::AudienceEntered => "Audience Entered",
            EventKind::AudienceExited => "Audience Exited",
            EventKind::ProfileDeleted => "Profile Deleted",
        }
    }
}

/// What a destination receives: a Segment-style track event with a stable id to deduplicate on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationEvent {
    /// Stable across retries and restarts; a receiver that saw it already may drop it.
    pub id: String,
    /// `Audience Entered`, `Audience Exited` or `Profile Deleted`.
    pub event: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub destination: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience_key: String,
    pub canonical_id: String,
    /// Per (destination, audience, profile): strictly increasing. For a deletion, the identity
    /// change's version.
    pub version: u64,
    #[serde(with = "cdp_proto::rfc3339")]
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
}

impl DestinationEvent {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: EventKind,
        destination: &str,
        tenant: &str,
        audience_key: &str,
        canonical_id: &str,
        version: u64,
        at: Timestamp,
        identifiers: Vec<Identifier>,
    ) -> Self {
        // The evaluation time is part of the id: after a state reset versions start again, and
        // a receiver must not drop those events as duplicates of old ones.
        let mut h = Sha256::new();
        for part in [destination, tenant, audience_key, canonical_id] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(version.to_be_bytes());
        h.update(kind.event_name().as_bytes());
        h.update(at.timestamp_millis().to_be_bytes());
        Self {
            id: format!("evt_{}", &hex::encode(h.finalize())[..32]),
            event: kind.event_name().to_string(),
            kind,
            destination: destination.to_string(),
            tenant: tenant.to_string(),
            audience_key: audience_key.to_string(),
            canonical_id: canonical_id.to_string(),
            version,
            at,
            identifiers,
        }
    }

    /// `audience_key:canonical_id`, or the canonical id for a deletion.
    pub fn key(&self) -> String {
        if self.audience_key.is_empty() {
            self.canonical_id.clone()
        } else {
            format!("{}:{}", self.audience_key, self.canonical_id)
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("DestinationEvent serialises")
    }
}

/// Hands an event to the destination, inside the batch's transaction: a record in the outbox for
/// a topic, an entry in the destination's delivery queue for a webhook.
pub fn enqueue(
    txn: &mut MembershipTxn,
    dest: &Destination,
    event: &DestinationEvent,
) -> Result<()> {
    match dest.config.kind {
        DestinationKind::Kafka => {
            let record =
                OutRecord::new(&dest.config.topic, event.key(), event.to_json()).with_headers(
                    vec![(HEADER_DESTINATION.into(), dest.key().as_bytes().to_vec())],
                );
            txn.push_outbox(record.to_bytes());
            Ok(())
        }
        DestinationKind::Webhook => txn.push_delivery(dest.key(), event.to_json()),
    }
}

/// Who a routing decision is about: a person in one cohort.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub canonical_id: &'a str,
    pub audience: &'a str,
}

/// What the rules (see `rules`) want a destination to hold for a (cohort, profile).
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// The person, with the identifiers the destination receives, if they granted its consent;
    /// a new entry must fit the channel's frequency caps, when it has any.
    Member(&'a Profile, Option<&'a ChannelCaps>),
    /// Nobody: the person leaves if held. `Some` names the rule that keeps a member out.
    Out(Option<Withheld>),
}

/// What a transition did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    /// An event was queued.
    pub sent: bool,
    /// A rule started to keep the person out (count it).
    pub withheld: Option<Withheld>,
}

/// Brings `dest`'s view of (audience, profile) in line with the cohort: it should hold the person
/// when they are a member (`member` is their profile, `None` when not a member or gone) and the
/// profile grants the destination's consent. A member whose identifiers for this destination
/// changed is sent `Audience Entered` again with the current ones. Returns whether an event was
/// queued. No suppression, priority or cap applies here: `rules::deliver` decides those.
pub fn route(
    txn: &mut MembershipTxn,
    dest: &Destination,
    who: Subject,
    member: Option<&Profile>,
    now: Timestamp,
) -> Result<bool> {
    let want = match member {
        Some(p) => Want::Member(p, None),
        None => Want::Out(None),
    };
    Ok(transition(txn, dest, who, want, &[], now)?.sent)
}

/// The exit of an id retired by a merge into `survivor`. Identifiers the destination already
/// holds for the survivor in the same audience are left out of the exit: they moved, and
/// whichever of the two events arrives first, the destination must keep them.
pub fn exit_merged(
    txn: &mut MembershipTxn,
    dest: &Destination,
    who: Subject,
    survivor: &str,
    now: Timestamp,
) -> Result<bool> {
    let kept = txn
        .dest_member(dest.key(), who.tenant, survivor, who.audience)?
        .filter(|m| m.member)
        .map(|m| m.identifiers)
        .unwrap_or_default();
    Ok(transition(txn, dest, who, Want::Out(None), &kept, now)?.sent)
}

/// Records that `rule` (or none) keeps the person, not held by `dest`, out; sends nothing.
fn withhold(
    txn: &mut MembershipTxn,
    dest: &Destination,
    who: Subject,
    seq: u64,
    rule: Option<Withheld>,
) -> Routed {
    let state = DestMember {
        member: false,
        seq,
        identifiers: Vec::new(),
        withheld: rule,
    };
    txn.set_dest_member(
        dest.key(),
        who.tenant,
        who.canonical_id,
        who.audience,
        &state,
    );
    Routed {
        sent: false,
        withheld: rule,
    }
}

/// Moves `dest`'s state for (audience, profile) to what `want` says, queueing the event that
/// tells the destination. `kept`: identifiers an exit must not name.
pub fn transition(
    txn: &mut MembershipTxn,
    dest: &Destination,
    who: Subject,
    want: Want,
    kept: &[Identifier],
    now: Timestamp,
) -> Result<Routed> {
    let want = match want {
        Want::Member(p, _) if !dest.consents(p) => Want::Out(None),
        w => w,
    };
    let state = txn.dest_member(dest.key(), who.tenant, who.canonical_id, who.audience)?;
    let held = state.as_ref().filter(|s| s.member);
    let marker = state.as_ref().and_then(|s| s.withheld);
    let seq = state.as_ref().map(|s| s.seq).unwrap_or(0);
    let (kind, identifiers, next, withheld) = match (want, held) {
        (Want::Member(p, cap), held) => {
            let ids = dest.identifiers(p);
            match held {
                Some(h) if h.identifiers == ids => return Ok(Routed::default()),
                // Changed identifiers of someone held: an update, not a new entry; never capped.
                Some(_) => (EventKind::AudienceEntered, ids.clone(), ids, None),
                // A capped entry is dropped, not postponed: sending it days later would be stale.
                None if marker == Some(Withheld::FrequencyCap) => return Ok(Routed::default()),
                None => {
                    if let Some(cap) = cap {
                        if !cap.take(txn, who.tenant, who.canonical_id, now)? {
                            let rule = Some(Withheld::FrequencyCap);
                            return Ok(withhold(txn, dest, who, seq, rule));
                        }
                    }
                    (EventKind::AudienceEntered, ids.clone(), ids, None)
                }
            }
        }
        // The exit names whom the entry named: that is who the destination must remove.
        (Want::Out(reason), Some(h)) => {
            let ids: Vec<Identifier> = h
                .identifiers
                .iter()
                .filter(|id| !kept.contains(id))
                .cloned()
                .collect();
            (EventKind::AudienceExited, ids, Vec::new(), reason)
        }
        (Want::Out(reason), None) => {
            if marker == reason {
                return Ok(Routed::default());
            }
            // Not held: only the rule that keeps them out changes; nothing is sent.
            return Ok(withhold(txn, dest, who, seq, reason));
        }
    };
    let seq = seq + 1;
    let event = DestinationEvent::new(
        kind,
        dest.key(),
        who.tenant,
        who.audience,
        who.canonical_id,
        seq,
        now,
        identifiers,
    );
    enqueue(txn, dest, &event)?;
    txn.set_dest_member(
        dest.key(),
        who.tenant,
        who.canonical_id,
        who.audience,
        &DestMember {
            member: kind == EventKind::AudienceEntered,
            seq,
            identifiers: next,
            withheld,
        },
    );
    Ok(Routed {
        sent: true,
        withheld: withheld.filter(|w| marker != Some(*w)),
    })
}

/// Sends a deletion to `dest` when it ever received the person, and forgets what it held.
pub fn delete(
    txn: &mut MembershipTxn,
    dest: &Destination,
    tenant: &str,
    canonical_id: &str,
    version: u64,
    now: Timestamp,
) -> Result<bool> {
    if !txn.dest_received(dest.key(), tenant, canonical_id, true)? {
        return Ok(false);
    }
    let event = DestinationEvent::new(
        EventKind::ProfileDeleted,
        dest.key(),
        tenant,
        "",
        canonical_id,
        version,
        now,
        Vec::new(),
    );
    enqueue(txn, dest, &event)?;
    Ok(true)
}
