//! Fitting a model to the data (`cdp match train`), as Splink does: `u` from random pairs of
//! profiles (nearly all of which are different people), `m` and the prior by
//! expectation-maximisation over the pairs the blocking rules make candidates (where the
//! matches are). Train on a state resolved without matching, or with a looser one: profiles
//! already merged are one record here, so their agreement is no longer seen. The prior is the
//! probability that two random records match, as in Splink: the match rate EM finds among the
//! candidate pairs, times the share of all pairs that are candidates (the matches are among the
//! candidates), so that it goes with `u`, which is estimated from random pairs too. The model
//! written has the next version.

use super::blocking::{self, Rule};
use super::compare::{compare_records, Level};
use super::field::{Field, Record};
use super::model::{Model, ModelError, Mu};
use super::MatchingConfig;
use crate::store::{Cf, GraphStore};
use crate::Result;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub tenant: String,
    /// Profiles sampled, and most candidate pairs used for `m`.
    pub sample: usize,
    /// Random pairs of sampled profiles drawn for `u` (no more than there are pairs): rare
    /// agreement levels (the same uncommon surname, the same birth date) need many to be seen
    /// at all (`cdp match train` draws 100,000 by default; Splink's FEBRL recipe a million).
    pub random_pairs: usize,
    pub seed: u64,
    pub max_iterations: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub tenant: String,
    pub version: u64,
    /// Profiles with enough comparison fields, and how many of them were sampled.
    pub profiles: u64,
    pub sampled: u64,
    pub random_pairs: u64,
    pub candidate_pairs: u64,
    pub iterations: usize,
    pub converged: bool,
    /// Probability that two random records match: the new model's prior.
    pub prior: f64,
}

/// One compared pair: per field (in the order of the field list), the level index or `None`.
pub type Pattern = Vec<Option<usize>>;

/// Fits a model to the profiles of `options.tenant` in `store`.
pub fn train(
    store: &dyn GraphStore,
    config: &MatchingConfig,
    options: &TrainOptions,
) -> Result<(Model, TrainReport)> {
    let fields: Vec<Field> = config
        .fields_for(&options.tenant)
        .unwrap_or(&config.fields)
        .to_vec();
    let current = config.model()?;
    let thresholds = super::compare::Thresholds {
        close: config.jw_close,
        similar: config.jw_similar,
    };
    let mut rng = SplitMix(options.seed);

    // Reservoir sample of the profiles that have enough to compare.
    let mut sampled: Vec<Record> = Vec::new();
    let mut profiles = 0u64;
    for (_, v) in store.scan_prefix(Cf::Profiles, b"")? {
        let p = crate::codec::decode_profile(&v).map_err(|e| crate::ResolverError::Corrupt {
            cf: "profiles",
            detail: e.to_string(),
        })?;
        if p.tenant != options.tenant {
            continue;
        }
        let r = Record::from_traits(&p.attributes.traits, &fields);
        if r.len() < config.min_fields.max(1) {
            continue;
        }
        profiles += 1;
        if sampled.len() < options.sample {
            sampled.push(r);
        } else {
            let j = rng.below(profiles);
            if (j as usize) < options.sample {
                sampled[j as usize] = r;
            }
        }
    }
    if sampled.len() < 2 {
        return Err(not_enough("fewer than 2 profiles with comparison fields"));
    }
    let pattern = |a: &Record, b: &Record| -> Pattern {
        let levels = compare_records(a, b, thresholds);
        fields
            .iter()
            .map(|f| {
                let (_, level) = levels.iter().find(|(g, _)| g == f)?;
                Level::of(*f).iter().position(|l| l == level)
            })
            .collect()
    };
    let n = sampled.len() as u64;
    let draws = (options.random_pairs as u64).min(n * (n - 1) / 2);
    let random: Vec<Pattern> = (0..draws)
        .filter_map(|_| {
            let (i, j) = (rng.below(n) as usize, rng.below(n) as usize);
            (i != j).then(|| pattern(&sampled[i], &sampled[j]))
        })
        .collect();

    // Candidate pairs: sampled profiles that share a blocking key (under the stream's rules
    // and cap), each pair once per rule. Blocked here rather than read from the `blocks`
    // column family, so a state resolved without matching (duplicates still apart) trains too.
    let mut blocks: HashMap<Vec<u8>, (Rule, Vec<usize>)> = HashMap::new();
    for (i, r) in sampled.iter().enumerate() {
        for (rule, key) in blocking::rule_keys(&options.tenant, r) {
            blocks.entry(key).or_insert((rule, Vec::new())).1.push(i);
        }
    }
    let mut keys: Vec<&Vec<u8>> = blocks.keys().collect();
    keys.sort();
    let mut seen: BTreeSet<(Rule, usize, usize)> = BTreeSet::new();
    let mut distinct: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut by_rule: BTreeMap<Rule, Vec<Pattern>> = BTreeMap::new();
    let mut candidate_pairs = 0usize;
    'blocks: for key in keys {
        let (rule, members) = &blocks[key];
        if members.len() > config.max_block_size {
            continue;
        }
        for (x, a) in members.iter().enumerate() {
            for b in &members[x + 1..] {
                if candidate_pairs >= options.sample {
                    break 'blocks;
                }
                if seen.insert((*rule, *a, *b)) {
                    candidate_pairs += 1;
                    distinct.insert((*a, *b));
                    by_rule
                        .entry(*rule)
                        .or_default()
                        .push(pattern(&sampled[*a], &sampled[*b]));
                }
            }
        }
    }
    if candidate_pairs == 0 {
        return Err(not_enough("no two sampled profiles share a blocking key"));
    }

    // One EM session per blocking rule, as Splink does: a rule's pairs agree on its own fields
    // by construction, so those fields are left out of its session (else every pair looks
    // like a match); each field's m is the mean over the sessions that estimated it.
    let u = estimate_u(&fields, &random);
    let m0: Vec<Vec<f64>> = fields
        .iter()
        .map(|f| {
            Level::of(*f)
                .iter()
                .map(|l| {
                    current
                        .fields
                        .get(f)
                        .and_then(|x| x.get(l))
                        .map_or(0.25, |mu| mu.m)
                })
                .collect()
        })
        .collect();
    let mut m_sum: Vec<Vec<f64>> = m0.iter().map(|l| vec![0.0; l.len()]).collect();
    let mut m_sessions = vec![0usize; fields.len()];
    let (mut lambda_sum, mut iterations, mut converged) = (0.0, 0, true);
    for (rule, pairs) in &by_rule {
        let excluded: Vec<bool> = fields.iter().map(|f| rule.fields().contains(f)).collect();
        let masked: Vec<Pattern> = pairs
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&excluded)
                    .map(|(l, x)| if *x { None } else { *l })
                    .collect()
            })
            .collect();
        let fit = em(&masked, &u, m0.clone(), 0.1, options.max_iterations);
        lambda_sum += fit.lambda * pairs.len() as f64;
        iterations = iterations.max(fit.iterations);
        converged &= fit.converged;
        for (i, x) in excluded.iter().enumerate() {
            let observed = masked.iter().any(|p| p[i].is_some());
            if !x && observed {
                m_sessions[i] += 1;
                for (acc, m) in m_sum[i].iter_mut().zip(&fit.m[i]) {
                    *acc += m;
                }
            }
        }
    }
    let m: Vec<Vec<f64>> = m0
        .iter()
        .enumerate()
        .map(|(i, start)| match m_sessions[i] {
            0 => start.clone(),
            n => m_sum[i].iter().map(|x| x / n as f64).collect(),
        })
        .collect();
    let fit = Fit {
        m,
        lambda: lambda_sum / candidate_pairs as f64,
        iterations,
        converged,
    };
    let candidates_len = candidate_pairs;

    let all_pairs = n as f64 * (n as f64 - 1.0) / 2.0;
    let mut model = current.clone();
    model.version = current.version + 1;
    model.prior = (fit.lambda * distinct.len() as f64 / all_pairs).clamp(1e-9, 1.0 - 1e-9);
    for (i, f) in fields.iter().enumerate() {
        let levels = Level::of(*f)
            .iter()
            .enumerate()
            .map(|(j, l)| {
                (
                    *l,
                    Mu {
                        m: fit.m[i][j],
                        u: u[i][j],
                    },
                )
            })
            .collect();
        model.fields.insert(*f, levels);
    }
    model.check()?;
    let report = TrainReport {
        tenant: options.tenant.clone(),
        version: model.version,
        profiles,
        sampled: n,
        random_pairs: random.len() as u64,
        candidate_pairs: candidates_len as u64,
        iterations: fit.iterations,
        converged: fit.converged,
        prior: model.prior,
    };
    Ok((model, report))
}

fn not_enough(why: &str) -> crate::ResolverError {
    ModelError::Invalid(format!("cannot train: {why}")).into()
}

/// Level frequencies among random pairs, with one pseudo-count per level so that no `u` is 0.
pub fn estimate_u(fields: &[Field], random: &[Pattern]) -> Vec<Vec<f64>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let levels = Level::of(*f).len();
            let mut counts = vec![1.0; levels];
            for p in random {
                if let Some(l) = p[i] {
                    counts[l] += 1.0;
                }
            }
            let total: f64 = counts.iter().sum();
            counts.into_iter().map(|c| c / total).collect()
        })
        .collect()
}

/// The result of [`em`].
#[derive(Debug, Clone)]
pub struct Fit {
    pub m: Vec<Vec<f64>>,
    pub lambda: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// Expectation-maximisation of `m` and the match rate `lambda` over `pairs`, with `u` fixed
/// (Splink's approach: `u` from random pairs is more reliable than EM's). Stops when no
/// parameter moves by more than 1e-6, or after `max_iterations`.
pub fn em(
    pairs: &[Pattern],
    u: &[Vec<f64>],
    mut m: Vec<Vec<f64>>,
    mut lambda: f64,
    max_iterations: usize,
) -> Fit {
    // A level no match ever showed keeps a sliver of probability: log2(m/u) stays finite.
    const FLOOR: f64 = 1e-6;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iterations {
        iterations += 1;
        let mut weights = vec![0.0; pairs.len()];
        for (w, p) in weights.iter_mut().zip(pairs) {
            let mut odds = (lambda / (1.0 - lambda)).log2();
            for (i, level) in p.iter().enumerate() {
                if let Some(l) = level {
                    odds += (m[i][*l] / u[i][*l]).log2();
                }
            }
            *w = super::model::probability(odds);
        }
        let total: f64 = weights.iter().sum();
        let next_lambda = (total / pairs.len() as f64).clamp(FLOOR, 1.0 - FLOOR);
        let mut next_m: Vec<Vec<f64>> = m.iter().map(|levels| vec![0.0; levels.len()]).collect();
        for (w, p) in weights.iter().zip(pairs) {
            for (i, level) in p.iter().enumerate() {
                if let Some(l) = level {
                    next_m[i][*l] += w;
                }
            }
        }
        for (i, levels) in next_m.iter_mut().enumerate() {
            let sum: f64 = levels.iter().sum();
            for (j, x) in levels.iter_mut().enumerate() {
                // A field never present on a match keeps its previous m.
                *x = if sum > 0.0 {
                    (*x / sum).max(FLOOR)
                } else {
                    m[i][j]
                };
            }
            let renorm: f64 = levels.iter().sum();
            levels.iter_mut().for_each(|x| *x /= renorm);
        }
        let delta = next_m
            .iter()
            .flatten()
            .zip(m.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold((next_lambda - lambda).abs(), f64::max);
        m = next_m;
        lambda = next_lambda;
        if delta < 1e-6 {
            converged = true;
            break;
        }
    }
    Fit {
        m,
        lambda,
        iterations,
        converged,
    }
}

/// A small deterministic generator (SplitMix64): a training run is reproducible from its seed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws an index from a discrete distribution.
#[cfg(test)]
fn draw(rng: &mut SplitMix, probs: &[f64]) -> usize {
    let x = rng.unit();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if x < acc {
            return i;
        }
    }
    probs.len() - 1
}

/// Synthetic pairs from known parameters: the fixture EM is tested against.
#[cfg(test)]
pub fn synthetic(
    rng: &mut SplitMix,
    n: usize,
    lambda: f64,
    m: &[Vec<f64>],
    u: &[Vec<f64>],
) -> Vec<Pattern> {
    (0..n)
        .map(|_| {
            let table = if rng.unit() < lambda { m } else { u };
            table.iter().map(|p| Some(draw(rng, p))).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn em_recovers_known_m_and_lambda() {
        let m = vec![
            vec![0.80, 0.12, 0.05, 0.03],
            vec![0.70, 0.15, 0.10, 0.05],
            vec![0.90, 0.04, 0.02, 0.04],
        ];
        let u = vec![
            vec![0.02, 0.03, 0.10, 0.85],
            vec![0.01, 0.04, 0.05, 0.90],
            vec![0.005, 0.01, 0.005, 0.98],
        ];
        let mut rng = SplitMix(7);
        let pairs = synthetic(&mut rng, 40_000, 0.2, &m, &u);
        let start = vec![vec![0.4, 0.3, 0.2, 0.1]; 3];
        let fit = em(&pairs, &u, start, 0.5, 500);
        assert!(fit.converged, "{} iterations", fit.iterations);
        assert!((fit.lambda - 0.2).abs() < 0.02, "lambda {}", fit.lambda);
        for (got, want) in fit.m.iter().flatten().zip(m.iter().flatten()) {
            assert!((got - want).abs() < 0.03, "m {got} vs {want}");
        }
    }

    #[test]
    fn u_is_the_level_frequency_among_random_pairs() {
        let fields = [Field::FirstName];
        let random: Vec<Pattern> = [Some(3), Some(3), Some(0), None]
            .into_iter()
            .map(|l| vec![l])
            .collect();
        let u = estimate_u(&fields, &random);
        // Counts 1+1, 1, 1, 1+2 over 7.
        assert_eq!(u[0], vec![2.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0, 3.0 / 7.0]);
    }
}
