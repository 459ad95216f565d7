//! Cohorts compiled from config. An expression that does not parse fails at load with the
//! cohort key and the position of the error; at evaluation, a missing attribute (no such key)
//! means "not a member", and any other evaluation error is reported with the cohort key.

use crate::config::CohortConfig;
use crate::inputs::{known, InputHashes, Reads};
use crate::view::ProfileView;
use cdp_proto::{Profile, Timestamp};
use cel::{Context, Env, Program, Value};
use std::sync::Arc;

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
    /// What the expression reads: an update that changes none of it cannot change membership.
    pub reads: Reads,
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
        let reads = Reads::of(&config.expression);
        Ok(Self {
            config,
            reads,
            program,
        })
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

/// One cohort's result from [`Cohorts::evaluate_changed`].
#[derive(Debug)]
pub struct Outcome {
    /// Of the inputs the result holds for; lowest bit 0.
    pub fingerprint: u64,
    pub result: Result<bool, CohortError>,
    /// Whether the expression ran (else the result is the one known for these inputs).
    pub evaluated: bool,
}

/// All configured cohorts.
pub struct Cohorts {
    pub list: Vec<Cohort>,
    /// CEL's standard library, built once: building it is most of the cost of a fresh context.
    env: Arc<Env>,
}

impl Default for Cohorts {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            env: Arc::new(Env::stdlib()),
        }
    }
}

impl std::fmt::Debug for Cohorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cohorts").field("list", &self.list).finish()
    }
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
        Ok(Self {
            list,
            ..Self::default()
        })
    }

    /// The evaluation context of `view`, shared by the cohorts evaluated on it.
    pub fn context(&self, view: &ProfileView) -> Result<Context<'static, 'static>, String> {
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable("profile", view)
            .map_err(|e| e.to_string())?;
        Ok(ctx)
    }

    /// Membership of `profile` at `now` in every cohort, in config order, evaluating only the cohorts whose
    /// inputs are not among `inputs` (fingerprints with results, see [`crate::inputs::known`]):
    /// the others keep the result they had on the same inputs.
    pub fn evaluate_changed(
        &self,
        profile: &Profile,
        now: Timestamp,
        inputs: &[u64],
    ) -> Vec<Outcome> {
        let mut hashes = InputHashes::new(profile, now);
        let mut outcomes: Vec<Outcome> = self
            .list
            .iter()
            .map(|c| {
                let fingerprint = hashes.fingerprint(c.key(), &c.config.expression, &c.reads);
                let result = known(inputs, fingerprint);
                Outcome {
                    fingerprint,
                    // Evaluated below when unknown.
                    result: Ok(result.unwrap_or(false)),
                    evaluated: result.is_none(),
                }
            })
            .collect();
        // One context for the cohorts to evaluate, holding only what they read: often none is.
        let mut reads = Reads::nothing();
        for (c, o) in self.list.iter().zip(&outcomes) {
            if o.evaluated {
                reads.add(&c.reads);
            }
        }
        if outcomes.iter().all(|o| !o.evaluated) {
            return outcomes;
        }
        let ctx = self.context(&ProfileView::with_reads(profile, now, &reads));
        for (c, o) in self.list.iter().zip(&mut outcomes) {
            if o.evaluated {
                o.result = match &ctx {
                    Ok(ctx) => c.matches(ctx),
                    Err(message) => Err(CohortError::Eval {
                        key: c.key().to_string(),
                        message: message.clone(),
                    }),
                };
            }
        }
        outcomes
    }

    /// Membership of `view` in every cohort, in config order.
    pub fn evaluate(&self, view: &ProfileView) -> Vec<(usize, Result<bool, CohortError>)> {
        let ctx = match self.context(view) {
            Ok(ctx) => ctx,
            Err(message) => return Self::failed(&self.list, &message),
        };
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.matches(&ctx)))
            .collect()
    }

    fn failed(list: &[Cohort], message: &str) -> Vec<(usize, Result<bool, CohortError>)> {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let error = CohortError::Eval {
                    key: c.key().to_string(),
                    message: message.to_string(),
                };
                (i, Err(error))
            })
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
            version: 1,
            ..Profile::new("t", "cdp_1", vec![], now)
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
