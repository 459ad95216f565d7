//! The Fellegi–Sunter model: for every field and comparison level, `m` (how often two records
//! of one person agree at that level) and `u` (how often two records of different people do),
//! and the prior that a compared pair is a match. A pair's match weight is
//! `log2(prior / (1 - prior)) + Σ log2(m / u)` over the fields present on both sides; its
//! probability is `2^w / (1 + 2^w)`. Models are versioned JSON files (`cdp match train` writes
//! them); without one the built-in defaults below apply.

use super::compare::Level;
use super::field::Field;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Agreement probabilities of one comparison level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mu {
    pub m: f64,
    pub u: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Grows with every trained model; links record the version that scored them.
    pub version: u64,
    /// Probability that a pair of blocking candidates is a match (λ).
    pub prior: f64,
    pub fields: BTreeMap<Field, BTreeMap<Level, Mu>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("model: {0}")]
    Invalid(String),
}

/// What one field added to a pair's match weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub field: Field,
    pub level: Level,
    /// `log2(m / u)` of the level.
    pub weight: f64,
}

/// A scored pair: kept on every probabilistic link, shown by `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub model_version: u64,
    pub probability: f64,
    /// Total match weight, prior included.
    pub weight: f64,
    /// Fields present on both sides, in field order; missing fields contribute nothing.
    pub contributions: Vec<Contribution>,
}

impl Score {
    /// Whether `other` says something different: another model, other levels, or a weight
    /// beyond rounding (stored scores come back through JSON, which may move the last bit).
    pub fn differs(&self, other: &Score) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        self.model_version != other.model_version
            || self.contributions.len() != other.contributions.len()
            || !close(self.weight, other.weight)
            || self
                .contributions
                .iter()
                .zip(&other.contributions)
                .any(|(a, b)| {
                    a.field != b.field || a.level != b.level || !close(a.weight, b.weight)
                })
    }
}

impl Model {
    /// Reads and checks a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let read = |detail: String| ModelError::Read {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let model: Model = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
        model.check().map_err(|e| read(e.to_string()))?;
        Ok(model)
    }

    /// Checks probabilities are in range and every field has all of its levels.
    pub fn check(&self) -> Result<(), ModelError> {
        if !(self.prior > 0.0 && self.prior < 1.0) {
            return Err(ModelError::Invalid("prior must be in (0, 1)".into()));
        }
        for (field, levels) in &self.fields {
            for level in Level::of(*field) {
                let Some(mu) = levels.get(level) else {
                    return Err(ModelError::Invalid(format!(
                        "field {field} has no level {level}"
                    )));
                };
                let ok = |p: f64| p > 0.0 && p <= 1.0;
                if !ok(mu.m) || !ok(mu.u) {
                    return Err(ModelError::Invalid(format!(
                        "field {field} level {level}: m and u must be in (0, 1]"
                    )));
                }
            }
            if let Some(extra) = levels.keys().find(|l| !Level::of(*field).contains(l)) {
                return Err(ModelError::Invalid(format!(
                    "field {field} has level {extra}, which it cannot take"
                )));
            }
        }
        Ok(())
    }

    /// Checks the model has m and u for every field in `fields`.
    pub fn covers(&self, fields: &[Field]) -> Result<(), ModelError> {
        match fields.iter().find(|f| !self.fields.contains_key(f)) {
            Some(f) => Err(ModelError::Invalid(format!(
                "field {f} is configured but the model has no m/u for it"
            ))),
            None => Ok(()),
        }
    }

    /// `log2(m / u)` of a level; 0 for a field the model does not know.
    pub fn level_weight(&self, field: Field, level: Level) -> f64 {
        self.fields
            .get(&field)
            .and_then(|l| l.get(&level))
            .map_or(0.0, |mu| (mu.m / mu.u).log2())
    }

    pub fn prior_weight(&self) -> f64 {
        (self.prior / (1.0 - self.prior)).log2()
    }

    /// Scores a pair that agrees at `levels` (one per field present on both sides).
    pub fn score(&self, levels: &[(Field, Level)]) -> Score {
        let contributions: Vec<Contribution> = levels
            .iter()
            .map(|(field, level)| Contribution {
                field: *field,
                level: *level,
                weight: self.level_weight(*field, *level),
            })
            .collect();
        let weight = self.prior_weight() + contributions.iter().map(|c| c.weight).sum::<f64>();
        Score {
            model_version: self.version,
            probability: probability(weight),
            weight,
            contributions,
        }
    }

    /// The built-in model: hand-set from the usual behaviour of CRM person records (names
    /// agree exactly for most duplicates, a few percent have a typo; a birth date is shared by
    /// about one in 3,600 strangers). `cdp match train` replaces it with one fitted to the data.
    pub fn builtin() -> Self {
        // (field, [(m, u) per level of Level::of(field)]).
        let table: [(Field, [(f64, f64); 4]); 8] = [
            (
                Field::FirstName,
                [(0.85, 0.01), (0.08, 0.005), (0.04, 0.03), (0.03, 0.955)],
            ),
            (
                Field::LastName,
                [(0.86, 0.005), (0.08, 0.003), (0.04, 0.02), (0.02, 0.972)],
            ),
            (
                Field::BirthDate,
                [
                    (0.90, 0.0003),
                    (0.03, 0.003),
                    (0.02, 0.0002),
                    (0.05, 0.9965),
                ],
            ),
            (
                Field::PostalCode,
                [(0.80, 0.002), (0.05, 0.004), (0.03, 0.03), (0.12, 0.964)],
            ),
            (
                Field::Street,
                [(0.70, 0.0005), (0.12, 0.001), (0.06, 0.01), (0.12, 0.9885)],
            ),
            (
                Field::City,
                [(0.85, 0.02), (0.05, 0.005), (0.03, 0.02), (0.07, 0.955)],
            ),
            (
                Field::Phone,
                [(0.80, 0.0001), (0.05, 0.001), (0.03, 0.01), (0.12, 0.9889)],
            ),
            (
                Field::EmailLocal,
                [(0.75, 0.0002), (0.08, 0.001), (0.05, 0.01), (0.12, 0.9888)],
            ),
        ];
        let fields = table
            .into_iter()
            .map(|(field, mus)| {
                let levels = Level::of(field)
                    .iter()
                    .zip(mus)
                    .map(|(level, (m, u))| (*level, Mu { m, u }))
                    .collect();
                (field, levels)
            })
            .collect();
        Self {
            version: 1,
            prior: 0.001,
            fields,
        }
    }
}

/// `2^w / (1 + 2^w)`, computed without overflow for large weights.
/// A model's weights in a table by field and level: what scoring each compared pair reads,
/// without the model's maps or a logarithm per field. A pair's [`Score`], with its
/// contributions, is built only for the few pairs likely enough to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    prior: f64,
    table: [[f64; Level::ALL.len()]; Field::ALL.len()],
}

impl Weights {
    pub fn of(model: &Model) -> Self {
        let mut table = [[0.0; Level::ALL.len()]; Field::ALL.len()];
        for f in Field::ALL {
            for l in Level::ALL {
                table[usize::from(f.index())][l as usize] = model.level_weight(f, l);
            }
        }
        Self {
            prior: model.prior_weight(),
            table,
        }
    }

    /// The match probability of a pair that agrees at `levels`: that of [`Model::score`].
    pub fn probability(&self, levels: &[(Field, Level)]) -> f64 {
        let weight = self.prior
            + levels
                .iter()
                .map(|(f, l)| self.table[usize::from(f.index())][*l as usize])
                .sum::<f64>();
        probability(weight)
    }
}

pub fn probability(weight: f64) -> f64 {
    1.0 / (1.0 + (-weight).exp2())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weights_table_gives_the_models_probability_exactly() {
        let mut model = Model::builtin();
        model.prior = 0.003;
        // A field the model does not know weighs nothing, in the table as in the model.
        model.fields.remove(&Field::Phone);
        let weights = Weights::of(&model);
        let pairs: [&[(Field, Level)]; 4] = [
            &[],
            &[
                (Field::FirstName, Level::Exact),
                (Field::LastName, Level::Close),
            ],
            &[
                (Field::BirthDate, Level::DayMonthSwapped),
                (Field::PostalCode, Level::Else),
                (Field::Phone, Level::Exact),
            ],
            &[
                (Field::FirstName, Level::Similar),
                (Field::LastName, Level::Exact),
                (Field::BirthDate, Level::YearMonth),
                (Field::Street, Level::Exact),
                (Field::EmailLocal, Level::Else),
            ],
        ];
        for levels in pairs {
            assert_eq!(weights.probability(levels), model.score(levels).probability);
        }
        model.prior = 0.5;
        assert_ne!(Weights::of(&model), weights, "the prior is in the table");
    }

    #[test]
    fn builtin_is_valid_and_round_trips_as_json() {
        let m = Model::builtin();
        m.check().unwrap();
        m.covers(&Field::ALL).unwrap();
        let json = serde_json::to_string_pretty(&m).unwrap();
        assert!(json.contains("\"first_name\""), "{json}");
        assert!(json.contains("\"day_month_swapped\""), "{json}");
        let back: Model = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn weights_and_probability_follow_fellegi_sunter() {
        let m = Model::builtin();
        let s = m.score(&[
            (Field::FirstName, Level::Exact),
            (Field::LastName, Level::Else),
        ]);
        let expected =
            (0.001f64 / 0.999).log2() + (0.85f64 / 0.01).log2() + (0.02f64 / 0.972).log2();
        assert!((s.weight - expected).abs() < 1e-12);
        assert!((s.probability - 2f64.powf(expected) / (1.0 + 2f64.powf(expected))).abs() < 1e-12);
        assert_eq!(s.contributions.len(), 2);
        assert_eq!(probability(0.0), 0.5);
        assert!(probability(2000.0) <= 1.0 && probability(-2000.0) >= 0.0);
        // Nothing compared: the prior alone.
        assert!((m.score(&[]).probability - 0.001).abs() < 1e-12);
    }

    #[test]
    fn bad_models_are_rejected_with_the_field() {
        let mut m = Model::builtin();
        m.fields
            .get_mut(&Field::City)
            .unwrap()
            .remove(&Level::Similar);
        assert!(m.check().unwrap_err().to_string().contains("city"));
        let mut m = Model::builtin();
        m.fields
            .get_mut(&Field::BirthDate)
            .unwrap()
            .insert(Level::Close, Mu { m: 0.1, u: 0.1 });
        assert!(m.check().is_err());
        let mut m = Model::builtin();
        m.prior = 1.0;
        assert!(m.check().is_err());
        let mut m = Model::builtin();
        m.fields.remove(&Field::Street);
        m.check().unwrap();
        assert!(m
            .covers(&[Field::Street])
            .unwrap_err()
            .to_string()
            .contains("street"));
    }
}
