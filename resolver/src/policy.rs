//! The merge policy: whether a link may join two profiles. A refusal names a stable reason that
//! is stored on the link and shown by `explain`; nothing is silently dropped.

use cdp_proto::{IdentifierKind, Profile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Confidence a link needs to merge, for rules not listed in `rule_thresholds`.
    pub merge_threshold: f64,
    /// Per-rule merge thresholds.
    pub rule_thresholds: BTreeMap<String, f64>,
    /// Most identifiers of a kind one profile may hold. Kinds not listed are unlimited.
    pub max_per_kind: BTreeMap<String, usize>,
    /// Most identifiers one profile may hold in all.
    pub max_profile_identifiers: usize,
    /// An identifier linked to more than this many distinct profiles is a hub (a shared
    /// kiosk, a test account): its further links are refused (`hub:KIND`) instead of merging.
    /// 0 turns detection off for kinds not listed in `hub_max_profiles_per_kind`.
    pub hub_max_profiles: usize,
    /// Per-kind overrides of `hub_max_profiles` (0 turns detection off for that kind).
    pub hub_max_profiles_per_kind: BTreeMap<String, usize>,
    /// Profiles reached within this many days (by event time) count towards the hub limits;
    /// 0 counts them all.
    pub hub_window_days: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let max_per_kind = [
            ("user_id", 1),
            // Duplicate CRM records of one person are common: joining them is a feature.
            ("crm_id", 3),
            ("email_sha256", 5),
            ("phone_sha256", 5),
            ("device_id", 10),
            ("cookie_id", 50),
            ("anonymous_id", 50),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            merge_threshold: 0.8,
            rule_thresholds: BTreeMap::new(),
            max_per_kind,
            max_profile_identifiers: 500,
            // A person's own identifiers meet each of their others once: only identifiers
            // shared by people reach these.
            hub_max_profiles: 100,
            hub_max_profiles_per_kind: [("cookie_id", 30), ("device_id", 30), ("click_id", 10)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            hub_window_days: 30,
        }
    }
}

/// Why a merge was refused. The code is stable: it appears in `explain` and in metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The merged profile would hold more identifiers of `kind` than allowed.
    KindLimit(String),
    ProfileSize,
    /// An identifier of `kind` is linked to more distinct profiles than allowed.
    Hub(String),
}

impl Refusal {
    pub fn code(&self) -> String {
        match self {
            Refusal::KindLimit(kind) => format!("kind_limit:{kind}"),
            Refusal::ProfileSize => "profile_size".to_string(),
            Refusal::Hub(kind) => format!("hub:{kind}"),
        }
    }
}

/// How many identifiers of each kind a set holds: what the limits are checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: usize,
    pub kinds: BTreeMap<IdentifierKind, usize>,
}

impl Tally {
    pub fn of(profile: &Profile) -> Self {
        let mut t = Tally::default();
        for id in &profile.identifiers {
            t.add(&id.kind);
        }
        t
    }

    pub fn add(&mut self, kind: &IdentifierKind) {
        self.total += 1;
        *self.kinds.entry(kind.clone()).or_default() += 1;
    }

    /// Adds every count of `other`.
    pub fn absorb(&mut self, other: &Tally) {
        self.total += other.total;
        for (kind, n) in &other.kinds {
            *self.kinds.entry(kind.clone()).or_default() += n;
        }
    }
}

/// The policy in force, compiled from config.
#[derive(Debug, Clone)]
pub struct MergePolicy {
    config: PolicyConfig,
}

impl MergePolicy {
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Whether a link under `rule` with `confidence` is strong enough to merge.
    pub fn merges(&self, rule: &str, confidence: f64) -> bool {
        let threshold = self
            .config
            .rule_thresholds
            .get(rule)
            .copied()
            .unwrap_or(self.config.merge_threshold);
        confidence >= threshold
    }

    fn limit(&self, kind: &IdentifierKind) -> Option<usize> {
        self.config.max_per_kind.get(kind.as_str()).copied()
    }

    /// Most distinct profiles an identifier of `kind` may be linked to, if limited.
    pub fn hub_limit(&self, kind: &IdentifierKind) -> Option<usize> {
        let n = self
            .config
            .hub_max_profiles_per_kind
            .get(kind.as_str())
            .copied()
            .unwrap_or(self.config.hub_max_profiles);
        (n > 0).then_some(n)
    }

    /// The hub window in milliseconds, if there is one.
    pub fn hub_window_ms(&self) -> Option<i64> {
        (self.config.hub_window_days > 0)
            .then(|| i64::try_from(self.config.hub_window_days).unwrap_or(i64::MAX / 86_400_000))
            .map(|d| d.saturating_mul(86_400_000))
    }

    /// Refuses a link whose end of `kind` has been linked to `profiles` distinct profiles.
    pub fn check_hub(&self, kind: &IdentifierKind, profiles: u64) -> Result<(), Refusal> {
        match self.hub_limit(kind) {
            Some(max) if profiles > max as u64 => Err(Refusal::Hub(kind.as_str().to_string())),
            _ => Ok(()),
        }
    }

    /// May profiles `a` and `b` become one?
    pub fn check_union(&self, a: &Profile, b: &Profile) -> Result<(), Refusal> {
        self.check_tallies(&Tally::of(a), &Tally::of(b))
    }

    /// May two sets with these identifier counts become one?
    pub fn check_tallies(&self, a: &Tally, b: &Tally) -> Result<(), Refusal> {
        if a.total + b.total > self.config.max_profile_identifiers {
            return Err(Refusal::ProfileSize);
        }
        let mut both = a.clone();
        both.absorb(b);
        for (kind, n) in &both.kinds {
            if self.limit(kind).is_some_and(|max| *n > max) {
                return Err(Refusal::KindLimit(kind.as_str().to_string()));
            }
        }
        Ok(())
    }

    /// May an identifier of `kind` be added to `profile`?
    pub fn check_add(&self, profile: &Profile, kind: &IdentifierKind) -> Result<(), Refusal> {
        if profile.identifiers.len() + 1 > self.config.max_profile_identifiers {
            return Err(Refusal::ProfileSize);
        }
        if self
            .limit(kind)
            .is_some_and(|max| profile.count_of(kind) + 1 > max)
        {
            return Err(Refusal::KindLimit(kind.as_str().to_string()));
        }
        Ok(())
    }
}
