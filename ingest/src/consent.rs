//! Consent: what the person said, as sources state it, and whether an event's identifiers may be
//! linked.
//!
//! Statements land in `Signal.consent` as purpose -> granted:
//! - Segment Consent Management: `context.consent.categoryPreferences` (`{"Advertising": false}`);
//! - Google Consent Mode v2 types (`ad_user_data`, `ad_personalization`, `ad_storage`,
//!   `analytics_storage`, ...) with Google's values `granted`/`denied` (or booleans), wherever a
//!   source puts them: directly under a Segment `context.consent`, inside `categoryPreferences`,
//!   or in a GA4 Measurement Protocol `consent` object (`"ad_user_data": "GRANTED"`); a GA4
//!   BigQuery row's `privacy_info` (`analytics_storage`, `ads_storage`: `Yes`/`No`) too;
//! - CRM opt-outs (see [`crate::crm`]).
//!
//! Identity consent: when an event states any of the configured purposes as denied (default
//! `identity` and `ad_user_data`), its identifiers are still normalised and passed on, but by
//! default no links are asserted between them, so the event cannot join profiles. Unstated
//! purposes do not deny: where no banner asked, nothing was refused.

use crate::json::Json;
use cdp_proto::Consent;
use serde::{Deserialize, Serialize};

/// Google Consent Mode's consent types.
pub const GOOGLE_CONSENT_TYPES: [&str; 7] = [
    "ad_storage",
    "ad_user_data",
    "ad_personalization",
    "analytics_storage",
    "functionality_storage",
    "personalization_storage",
    "security_storage",
];

/// What happens to the identifiers of an event that denies identity consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithoutIdentityConsent {
    /// Identifiers are kept on the signal, but no links are asserted between them.
    #[default]
    Unlinked,
    /// Consent is recorded but does not change linking.
    Linked,
}

/// Which purposes make up identity consent, and what their denial does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConsent {
    pub purposes: Vec<String>,
    pub without: WithoutIdentityConsent,
}

impl Default for IdentityConsent {
    fn default() -> Self {
        Self {
            purposes: default_identity_purposes(),
            without: WithoutIdentityConsent::Unlinked,
        }
    }
}

/// `identity` (a tenant's own category for identity resolution) and Google's `ad_user_data`
/// (consent to use the person's data for advertising, which is what resolved profiles feed).
pub fn default_identity_purposes() -> Vec<String> {
    vec!["identity".to_string(), "ad_user_data".to_string()]
}

impl IdentityConsent {
    /// `true` when the event's identifiers may be linked.
    pub fn allows_links(&self, consent: &Consent) -> bool {
        self.without == WithoutIdentityConsent::Linked
            || !self
                .purposes
                .iter()
                .any(|p| consent.purpose(p) == Some(false))
    }
}

/// A consent state: a boolean, or Consent Mode's `granted`/`denied` in any case. `Err(())` for
/// anything else; `Ok(None)` for null.
pub(crate) fn state(v: &Json<'_>) -> Result<Option<bool>, ()> {
    match v {
        Json::Null => Ok(None),
        Json::Bool(b) => Ok(Some(*b)),
        Json::Str(s) if s.trim().eq_ignore_ascii_case("granted") => Ok(Some(true)),
        Json::Str(s) if s.trim().eq_ignore_ascii_case("denied") => Ok(Some(false)),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(pairs: &[(&str, bool)]) -> Consent {
        Consent(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn a_denied_identity_purpose_withholds_links_unless_configured() {
        let policy = IdentityConsent::default();
        assert!(policy.allows_links(&consent(&[])));
        assert!(policy.allows_links(&consent(&[("advertising", false)])));
        assert!(policy.allows_links(&consent(&[("ad_user_data", true)])));
        assert!(!policy.allows_links(&consent(&[("ad_user_data", false)])));
        assert!(!policy.allows_links(&consent(&[("identity", false)])));
        let linked = IdentityConsent {
            without: WithoutIdentityConsent::Linked,
            ..IdentityConsent::default()
        };
        assert!(linked.allows_links(&consent(&[("identity", false)])));
    }

    #[test]
    fn states_read_booleans_and_consent_mode_values() {
        use std::borrow::Cow;
        assert_eq!(state(&Json::Bool(false)), Ok(Some(false)));
        assert_eq!(state(&Json::Str(Cow::Borrowed("GRANTED"))), Ok(Some(true)));
        assert_eq!(state(&Json::Str(Cow::Borrowed("denied"))), Ok(Some(false)));
        assert_eq!(state(&Json::Null), Ok(None));
        assert_eq!(state(&Json::Str(Cow::Borrowed("maybe"))), Err(()));
        assert_eq!(state(&Json::U64(1)), Err(()));
    }
}
