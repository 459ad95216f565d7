//! Cohorts compiled from config. An expression that does not parse fails at load with the
//! cohort key and the position of the error; at evaluation, a missing attribute (no such key)
//! means "not a member", and any other evaluation error is reported with the cohort key.

use crate::config::CohortConfig;
use crate::view::ProfileView;
use cel::{Context, Program, Value};

#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    #[error("cohort {key:?}: invalid expression: {message}")]
    Parse { key: String, message: String },
    #[error("cohort key {0:?} must be 1-64 of [a-z0-9_]")]
    InvalidKey(String),
    #[error("cohort key {0:?} is declared twice")]
    Duplicate(String),
    #[error("cohort {key:?}: expression returned {kind}, not a bool")]
    NotBool { key: String, kind: String },
    #[error("cohort {key:?}: evaluation failed: {message}")]
    Eval { key: String, message: String },
}

pub struct Cohort {
    pub config: CohortConfig,
    program: Program,
}

impl std::fmt::Debug for Cohort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cohort")
            .field("key", &self.config.key)
            .finish()
    }
}

impl Cohort {
    pub fn compile(config: CohortConfig) -> Result<Self, CohortError> {
        let key_ok = !config.key.is_empty()
            && config.key.len() <= 64
            && config
                .key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(CohortError::InvalidKey(config.key));
        }
        let program = Program::compile(&config.expression).map_err(|e| CohortError::Parse {
            key: config.key.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { config, program })
    }

    pub fn key(&self) -> &str {
        &self.config.key
    }

    /// Whether the profile is a member.
    pub fn matches(&self, ctx: &Context) -> Result<bool, CohortError> {
        match self.program.execute(ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(CohortError::NotBool {
                key: self.config.key.clone(),
                kind: format!("{:?}", other.type_of()),
            }),
            Err(e) => {
                let message = e.to_string();
                // `counts["Order Completed"]` on someone who never ordered: not a member.
                if message.contains("No such key") || message.contains("no such key") {
                    Ok(false)
                } else {
                    Err(CohortError::Eval {
                        key: self.config.key.clone(),
                        message,
                    })
                }
            }
        }
    }
}

/// All configured cohorts.
#[derive(Debug, Default)]
pub struct Cohorts {
    pub list: Vec<Cohort>,
}

impl Cohorts {
    pub fn compile(configs: &[CohortConfig]) -> Result<Self, CohortError> {
        let mut list: Vec<Cohort> = Vec::with_capacity(configs.len());
        for c in configs {
            if list.iter().any(|x| x.key() == c.key) {
                return Err(CohortError::Duplicate(c.key.clone()));
            }
            list.push(Cohort::compile(c.clone())?);
        }
        Ok(Self { list })
    }

    /// Membership of `view` in every cohort, in config order.
    pub fn evaluate(&self, view: &ProfileView) -> Vec<(usize, Result<bool, CohortError>)> {
        let mut ctx = Context::default();
        if let Err(e) = ctx.add_variable("profile", view) {
            let message = e.to_string();
            return (0..self.list.len())
                .map(|i| {
                    let key = self.list[i].key().to_string();
                    (
                        i,
                        Err(CohortError::Eval {
                            key,
                            message: message.clone(),
                        }),
                    )
                })
                .collect();
        }
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.matches(&ctx)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::{time::from_millis, Profile, Source};

    fn profile() -> Profile {
        let now = from_millis(1_700_000_000_000);
        let mut p = Profile {
            tenant: "t".into(),
            canonical_id: "cdp_1".into(),
            identifiers: vec![],
            aliases: vec![],
            merge_history: vec![],
            attributes: Default::default(),
            consent: Default::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        p.attributes.lifecycle_stage = Some("lead".into());
        p.attributes.channels_active.insert(Source::Web);
        let c = p
            .attributes
            .counts
            .entry("Pricing Viewed".into())
            .or_default();
        c.record(now);
        c.record(now);
        p
    }

    fn cfg(key: &str, expression: &str) -> CohortConfig {
        CohortConfig {
            key: key.into(),
            description: String::new(),
            expression: expression.into(),
            priority: 0,
            identifiers: vec![],
            destinations: vec![],
        }
    }

    #[test]
    fn default_cohorts_compile_and_evaluate() {
        let cohorts = Cohorts::compile(&crate::ActivationConfig::default().cohorts).unwrap();
        let p = profile();
        let view = ProfileView::new(&p, p.updated_at);
        let results: Vec<_> = cohorts
            .evaluate(&view)
            .into_iter()
            .map(|(i, r)| (cohorts.list[i].key().to_string(), r.unwrap()))
            .collect();
        assert_eq!(
            results,
            vec![
                ("high_intent".to_string(), true),
                ("recent_buyers".to_string(), false),
                ("cross_channel".to_string(), false),
                ("customers".to_string(), false),
            ]
        );
    }

    #[test]
    fn windows_follow_evaluation_time() {
        let cohorts = Cohorts::compile(&[cfg(
            "hi",
            r#"profile.counts["Pricing Viewed"].last_7d >= 2"#,
        )])
        .unwrap();
        let p = profile();
        let later = p.updated_at + chrono::Duration::days(8);
        assert!(cohorts.evaluate(&ProfileView::new(&p, p.updated_at))[0]
            .1
            .as_ref()
            .unwrap());
        assert!(!cohorts.evaluate(&ProfileView::new(&p, later))[0]
            .1
            .as_ref()
            .unwrap());
    }

    #[test]
    fn invalid_expression_names_the_cohort_and_position() {
        let err = Cohorts::compile(&[cfg("broken", "profile.lifecycle_stage == ")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("broken"), "{text}");
        assert!(text.contains("1:"), "position in {text}");
    }

    #[test]
    fn non_bool_and_bad_keys_are_errors() {
        let cohorts = Cohorts::compile(&[cfg("n", "profile.total_touchpoints")]).unwrap();
        let p = profile();
        let r = &cohorts.evaluate(&ProfileView::new(&p, p.updated_at))[0].1;
        assert!(matches!(r, Err(CohortError::NotBool { .. })), "{r:?}");
        assert!(matches!(
            Cohorts::compile(&[cfg("Bad Key", "true")]),
            Err(CohortError::InvalidKey(_))
        ));
        assert!(matches!(
            Cohorts::compile(&[cfg("a", "true"), cfg("a", "false")]),
            Err(CohortError::Duplicate(_))
        ));
    }
}
