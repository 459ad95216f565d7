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
        }
    }
}

/// Why a merge was refused. The code is stable: it appears in `explain` and in metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The merged profile would hold more identifiers of `kind` than allowed.
    KindLimit(String),
    ProfileSize,
}

impl Refusal {
    pub fn code(&self) -> String {
        match self {
            Refusal::KindLimit(kind) => format!("kind_limit:{kind}"),
            Refusal::ProfileSize => "profile_size".to_string(),
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

    /// May profiles `a` and `b` become one?
    pub fn check_union(&self, a: &Profile, b: &Profile) -> Result<(), Refusal> {
        if a.identifiers.len() + b.identifiers.len() > self.config.max_profile_identifiers {
            return Err(Refusal::ProfileSize);
        }
        let mut counts: BTreeMap<&IdentifierKind, usize> = BTreeMap::new();
        for id in a.identifiers.iter().chain(&b.identifiers) {
            *counts.entry(&id.kind).or_default() += 1;
        }
        for (kind, n) in counts {
            if self.limit(kind).is_some_and(|max| n > max) {
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
