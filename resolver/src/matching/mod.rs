//! Probabilistic matching (Fellegi–Sunter) in the stream. A signal that carries comparison
//! fields in its traits (typically a CRM record: names, birth date, address) is filed in the
//! [`blocking`] index with its normalised record and compared ([`compare`]) with the records
//! filed under the same keys ([`stream`]); each pair is scored by the [`model`], and pairs
//! likely enough become links with rule [`RULE`] whose confidence is the match probability.
//! Those links go through the merge policy like any other (`resolver.matching.merge_threshold`
//! is the rule's threshold); weaker ones above `candidate_threshold` stay candidate links.
//! Every such link keeps its score and each field's contribution, which `explain` shows and
//! `rebuild` re-scores under the current model.
//! [`train`] fits a model to a store's profiles.

pub mod blocking;
pub mod compare;
pub mod field;
pub mod jaro;
pub mod model;
pub mod normalize;
pub mod soundex;
pub mod stream;
pub mod train;

use compare::Thresholds;
use field::Field;
use model::{Model, ModelError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The rule name of links probabilistic matching asserts.
pub const RULE: &str = "probabilistic";

/// `[resolver.matching]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchingConfig {
    /// Match records in the stream (tenants can override it).
    pub enabled: bool,
    /// A model file written by `cdp match train`; empty: the built-in model.
    pub model_path: String,
    /// Fields compared (tenants can override them): first_name, last_name, birth_date,
    /// postal_code, street, city, phone, email_local.
    pub fields: Vec<Field>,
    /// Jaro-Winkler similarity at which text counts as `close` (a typo).
    pub jw_close: f64,
    /// Jaro-Winkler similarity at which text counts as `similar`.
    pub jw_similar: f64,
    /// Match probability from which a pair merges (subject to the merge policy).
    pub merge_threshold: f64,
    /// Match probability from which a pair is kept as a candidate link.
    pub candidate_threshold: f64,
    /// Fewer comparable fields than this on a record: it is not matched.
    pub min_fields: usize,
    /// Most nodes a blocking key holds; a fuller one is marked oversized and ignored.
    pub max_block_size: usize,
    /// Most nodes of one blocking key an arriving record is compared with. A key listing more
    /// (a common name) is passed over when the record has a key listing fewer, else its newest
    /// are compared: what a record costs stays bounded as blocks of common names fill up.
    pub max_block_candidates: usize,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<String, TenantMatching>,
}

/// `[resolver.matching.tenants.NAME]`: what a tenant sets differently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantMatching {
    pub enabled: Option<bool>,
    pub fields: Option<Vec<Field>>,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        Self {
            // Off until a tenant's records carry comparison fields and its thresholds are chosen.
            enabled: false,
            model_path: String::new(),
            fields: vec![
                Field::FirstName,
                Field::LastName,
                Field::BirthDate,
                Field::PostalCode,
                Field::Street,
                Field::City,
            ],
            jw_close: 0.92,
            jw_similar: 0.8,
            merge_threshold: 0.95,
            candidate_threshold: 0.5,
            min_fields: 2,
            max_block_size: 100,
            max_block_candidates: 12,
            tenants: BTreeMap::new(),
        }
    }
}

impl MatchingConfig {
    /// The fields compared for `tenant`, or `None` when matching is off for it.
    pub fn fields_for(&self, tenant: &str) -> Option<&[Field]> {
        let t = self.tenants.get(tenant);
        let enabled = t.and_then(|t| t.enabled).unwrap_or(self.enabled);
        enabled.then(|| t.and_then(|t| t.fields.as_deref()).unwrap_or(&self.fields))
    }

    /// The model in force: the file's, or the built-in one.
    pub fn model(&self) -> Result<Model, ModelError> {
        if self.model_path.is_empty() {
            Ok(Model::builtin())
        } else {
            Model::load(Path::new(&self.model_path))
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ModelError::Invalid(format!(
                    "resolver.matching.{name} must be in [0, 1]"
                )))
            }
        };
        unit("jw_close", self.jw_close)?;
        unit("jw_similar", self.jw_similar)?;
        unit("merge_threshold", self.merge_threshold)?;
        unit("candidate_threshold", self.candidate_threshold)?;
        if self.candidate_threshold > self.merge_threshold {
            return Err(ModelError::Invalid(
                "resolver.matching.candidate_threshold is above merge_threshold".into(),
            ));
        }
        if self.max_block_size == 0 {
            return Err(ModelError::Invalid(
                "resolver.matching.max_block_size must be at least 1".into(),
            ));
        }
        if self.max_block_candidates == 0 {
            return Err(ModelError::Invalid(
                "resolver.matching.max_block_candidates must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `policy` with the probabilistic rule's merge threshold set from `matching`: the one place
/// that threshold enters the merge policy, so streaming, unmerge and rebuild agree on it.
pub fn policy_with_threshold(
    mut policy: crate::policy::PolicyConfig,
    matching: &MatchingConfig,
) -> crate::policy::PolicyConfig {
    policy
        .rule_thresholds
        .insert(RULE.to_string(), matching.merge_threshold);
    policy
}

/// Matching as configured, with its model loaded.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub config: MatchingConfig,
    pub model: Model,
    /// The model's weights as a table, for scoring every compared pair.
    pub weights: model::Weights,
}

impl Matcher {
    /// Checks the config and loads the model; the model must cover every configured field.
    pub fn new(config: MatchingConfig) -> Result<Self, ModelError> {
        config.check()?;
        let model = config.model()?;
        model.check()?;
        model.covers(&config.fields)?;
        for (tenant, t) in &config.tenants {
            if let Some(fields) = &t.fields {
                model.covers(fields).map_err(|e| {
                    ModelError::Invalid(format!("resolver.matching.tenants.{tenant}: {e}"))
                })?;
            }
        }
        let weights = model::Weights::of(&model);
        Ok(Self {
            config,
            model,
            weights,
        })
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            close: self.config.jw_close,
            similar: self.config.jw_similar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_override_enabled_and_fields() {
        let mut c = MatchingConfig::default();
        assert_eq!(c.fields_for("acme"), None);
        c.tenants.insert(
            "acme".into(),
            TenantMatching {
                enabled: Some(true),
                fields: Some(vec![Field::LastName]),
            },
        );
        assert_eq!(c.fields_for("acme"), Some(&[Field::LastName][..]));
        assert_eq!(c.fields_for("other"), None);
        c.enabled = true;
        assert_eq!(c.fields_for("other"), Some(&c.fields[..]));
    }

    #[test]
    fn bad_settings_and_models_are_named() {
        let c = MatchingConfig {
            candidate_threshold: 0.99,
            ..MatchingConfig::default()
        };
        assert!(Matcher::new(c)
            .unwrap_err()
            .to_string()
            .contains("candidate_threshold"));
        let c = MatchingConfig {
            model_path: "/nonexistent/model.json".into(),
            ..MatchingConfig::default()
        };
        assert!(Matcher::new(c)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/model.json"));
        Matcher::new(MatchingConfig::default()).unwrap();
    }
}
