//! The identity assertions a signal carries: which of its identifiers belong to one person, by
//! which rule, and how sure the source is.
//!
//! | rule | confidence | asserted when |
//! |---|---|---|
//! | `deterministic_login` | 1.0 | a web/app event carries a `user_id`: every other identifier of the event was seen with the logged-in user |
//! | `crm_record` | 1.0 | identifiers of one CRM record (its id, emails, phones, a converted lead's contact id) |
//! | `alias_call` | 1.0 | a Segment `alias` joins `previousId` to `userId` |
//! | `mmp_attribution` | 0.9 | an MMP postback (AppsFlyer, Adjust) joins its device ids and `customer_user_id`; the SDK may report a stale user |
//! | `device_match` | 0.9 | an app event without a user joins device ids (IDFA/GAID, IDFV) and the install's anonymous id |
//! | `same_event` | 0.9 | any other co-occurrence in one event (e.g. an anonymous id with a hashed email from a form) |
//! | `click_id_match` | 0.8 | anything with an ad click id; a click id travels in a URL that can be shared, so it never asserts more than 0.8, even next to a `user_id` |
//!
//! Links form a star from the event's strongest identifier (see [`strength`]): n identifiers give
//! n - 1 links, and connectivity is the same as the full clique's.

use cdp_proto::{Identifier, IdentifierKind, IdentityLink};

/// A rule ingest asserts links under. Names and confidences are a contract with the resolver's
/// merge policy, which sets per-rule thresholds by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRule {
    DeterministicLogin,
    CrmRecord,
    AliasCall,
    MmpAttribution,
    DeviceMatch,
    SameEvent,
    ClickIdMatch,
}

impl LinkRule {
    pub const ALL: [LinkRule; 7] = [
        LinkRule::DeterministicLogin,
        LinkRule::CrmRecord,
        LinkRule::AliasCall,
        LinkRule::MmpAttribution,
        LinkRule::DeviceMatch,
        LinkRule::SameEvent,
        LinkRule::ClickIdMatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LinkRule::DeterministicLogin => "deterministic_login",
            LinkRule::CrmRecord => "crm_record",
            LinkRule::AliasCall => "alias_call",
            LinkRule::MmpAttribution => "mmp_attribution",
            LinkRule::DeviceMatch => "device_match",
            LinkRule::SameEvent => "same_event",
            LinkRule::ClickIdMatch => "click_id_match",
        }
    }

    pub fn confidence(self) -> f64 {
        match self {
            LinkRule::DeterministicLogin | LinkRule::CrmRecord | LinkRule::AliasCall => 1.0,
            LinkRule::MmpAttribution | LinkRule::DeviceMatch | LinkRule::SameEvent => 0.9,
            LinkRule::ClickIdMatch => 0.8,
        }
    }

    pub fn link(self, a: &Identifier, b: &Identifier) -> IdentityLink {
        IdentityLink {
            a: a.clone(),
            b: b.clone(),
            rule: self.name().to_string(),
            confidence: self.confidence(),
        }
    }
}

/// How strongly an identifier names one person; the star's centre is the strongest. A click id
/// is last so that it is never the centre while anything else is present.
pub fn strength(kind: &IdentifierKind) -> u8 {
    match kind {
        IdentifierKind::UserId => 9,
        IdentifierKind::CrmId => 8,
        IdentifierKind::EmailSha256 => 7,
        IdentifierKind::PhoneSha256 => 6,
        IdentifierKind::LoyaltyId => 5,
        IdentifierKind::DeviceId => 4,
        IdentifierKind::AnonymousId => 3,
        IdentifierKind::CookieId => 2,
        IdentifierKind::Custom(_) => 1,
        IdentifierKind::ClickId => 0,
    }
}

/// Links from the strongest of `ids` to each of the others, under the rule `rule(centre, other)`
/// returns (both are indexes into `ids`). The first of equally strong identifiers is the centre.
pub(crate) fn star(
    ids: &[Identifier],
    rule: impl Fn(usize, usize) -> LinkRule,
) -> Vec<IdentityLink> {
    let Some(centre) = ids
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|(_, id)| strength(&id.kind))
        .map(|(i, _)| i)
    else {
        return Vec::new();
    };
    ids.iter()
        .enumerate()
        .filter(|(i, _)| *i != centre)
        .map(|(i, other)| rule(centre, i).link(&ids[centre], other))
        .collect()
}

/// The rule for two identifiers seen together in one web or app event: click ids are capped,
/// a user id makes it a login, device ids with anonymous ids are a device match (app only).
pub(crate) fn event_rule(a: &IdentifierKind, b: &IdentifierKind, app: bool) -> LinkRule {
    use IdentifierKind as K;
    let either = |k: &K| a == k || b == k;
    if either(&K::ClickId) {
        LinkRule::ClickIdMatch
    } else if either(&K::UserId) {
        LinkRule::DeterministicLogin
    } else if app
        && either(&K::DeviceId)
        && matches!(
            (a, b),
            (K::DeviceId | K::AnonymousId, K::DeviceId | K::AnonymousId)
        )
    {
        LinkRule::DeviceMatch
    } else {
        LinkRule::SameEvent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: IdentifierKind, v: &str) -> Identifier {
        Identifier::new(kind, v)
    }

    #[test]
    fn star_centres_on_strongest_and_links_all_others() {
        let ids = vec![
            id(IdentifierKind::AnonymousId, "a"),
            id(IdentifierKind::ClickId, "c"),
            id(IdentifierKind::UserId, "u"),
            id(IdentifierKind::EmailSha256, "e"),
        ];
        let links = star(&ids, |c, o| event_rule(&ids[c].kind, &ids[o].kind, false));
        assert_eq!(links.len(), 3);
        assert!(links.iter().all(|l| l.a.kind == IdentifierKind::UserId));
        let rules: Vec<&str> = links.iter().map(|l| l.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "deterministic_login",
                "click_id_match",
                "deterministic_login"
            ]
        );
        assert_eq!(links[1].confidence, 0.8);
    }

    #[test]
    fn single_or_no_identifier_has_no_links() {
        assert!(star(&[], |_, _| LinkRule::SameEvent).is_empty());
        let one = [id(IdentifierKind::CookieId, "c")];
        assert!(star(&one, |_, _| LinkRule::SameEvent).is_empty());
    }

    #[test]
    fn device_match_only_for_app_device_pairs() {
        use IdentifierKind as K;
        assert_eq!(
            event_rule(&K::DeviceId, &K::AnonymousId, true),
            LinkRule::DeviceMatch
        );
        assert_eq!(
            event_rule(&K::DeviceId, &K::DeviceId, true),
            LinkRule::DeviceMatch
        );
        assert_eq!(
            event_rule(&K::DeviceId, &K::AnonymousId, false),
            LinkRule::SameEvent
        );
        assert_eq!(
            event_rule(&K::EmailSha256, &K::DeviceId, true),
            LinkRule::SameEvent
        );
    }

    #[test]
    fn confidences_match_the_documented_table() {
        let table: Vec<(&str, f64)> = LinkRule::ALL
            .iter()
            .map(|r| (r.name(), r.confidence()))
            .collect();
        assert_eq!(
            table,
            [
                ("deterministic_login", 1.0),
                ("crm_record", 1.0),
                ("alias_call", 1.0),
                ("mmp_attribution", 0.9),
                ("device_match", 0.9),
                ("same_event", 0.9),
                ("click_id_match", 0.8),
            ]
        );
    }
}
