//! Cohorts compiled from config. An expression that does not parse fails at load with the
//! cohort key and the position of the error; at evaluation, a missing attribute (no such key)
//! means "not a member", and any other evaluation error is reported with the cohort key.
//! Expressions run as native code where they can ([`crate::predicate`]), with the
//! interpreter's results; the interpreter runs the rest.

use crate::config::CohortConfig;
use crate::inputs::{known, InputHashes, Reads};
use crate::predicate::{Compilation, Predicate, Scope, Verdict};
use crate::view::ProfileView;
use cdp_proto::{Profile, Timestamp};
use cel::{Context, Env, Program, ResolveResult, Value};
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
    /// Hash of the key and expression, the start of every fingerprint of this cohort's inputs.
    seed: u64,
    program: Program,
    predicate: Predicate,
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
            seed: crate::inputs::seed(&config.key, &config.expression),
            predicate: Predicate::compile(program.expression()),
            config,
            reads,
            program,
        })
    }

    /// How much of the expression runs as native code.
    pub fn compilation(&self) -> Compilation {
        self.predicate.compilation()
    }

    /// Whether the profile of `scope` is a member: the same result as [`Cohort::matches`] on the
    /// context of the profile's view, computed natively where the expression allows.
    pub fn evaluate(&self, scope: &Scope) -> Result<bool, CohortError> {
        match self.predicate.evaluate(scope) {
            Verdict::Bool(b) => Ok(b),
            Verdict::NoSuchKey => Ok(false),
            Verdict::Interpret => match scope.context() {
                Ok(ctx) => self.judge(self.program.execute(ctx)),
                Err(message) => Err(CohortError::Eval {
                    key: self.config.key.clone(),
                    message: message.to_string(),
                }),
            },
        }
    }

    pub fn key(&self) -> &str {
        &self.config.key
    }

    /// Where the fingerprints of this cohort's inputs start (see [`InputHashes::fingerprint`]).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether the profile is a member.
    pub fn matches(&self, ctx: &Context) -> Result<bool, CohortError> {
        self.judge(self.program.execute(ctx))
    }

    fn judge(&self, result: ResolveResult) -> Result<bool, CohortError> {
        match result {
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
    /// What any cohort reads: what the interpreter's view of a profile must hold.
    reads: Reads,
}

impl Default for Cohorts {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            env: Arc::new(Env::stdlib()),
            reads: Reads::nothing(),
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
        let mut reads = Reads::nothing();
        for c in &list {
            reads.add(&c.reads);
        }
        Ok(Self {
            list,
            reads,
            ..Self::default()
        })
    }

    /// What any cohort reads of a profile.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The evaluation context of `view`, shared by the cohorts evaluated on it.
    pub fn context(&self, view: &ProfileView) -> Result<Context<'static, 'static>, String> {
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable("profile", view)
            .map_err(|e| e.to_string())?;
        Ok(ctx)
    }

    /// Membership of `profile` at `now` in every cohort, in config order, evaluating only the
    /// cohorts whose inputs are not among `inputs` (fingerprints with results, see
    /// [`crate::inputs::known`]): the others keep the result they had on the same inputs.
    pub fn evaluate_changed(
        &self,
        profile: &Profile,
        now: Timestamp,
        inputs: &[u64],
    ) -> Vec<Outcome> {
        let mut hashes = InputHashes::new(profile, now);
        // Shared by the cohorts evaluated; the interpreter's context is built only if one needs it.
        let scope = self.scope(profile, now);
        self.list
            .iter()
            .map(|c| {
                let fingerprint = hashes.fingerprint(c.seed, &c.reads);
                // Evaluated right after its inputs were read, while they are in cache.
                let known = known(inputs, fingerprint);
                Outcome {
                    fingerprint,
                    result: known.map_or_else(|| c.evaluate(&scope), Ok),
                    evaluated: known.is_none(),
                }
            })
            .collect()
    }

    /// What cohorts evaluated on `profile` at `now` share (see [`Cohort::evaluate`]).
    pub fn scope<'p>(&'p self, profile: &'p Profile, now: Timestamp) -> Scope<'p> {
        Scope::new(profile, now, &self.reads, &self.env)
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
