//! Accuracy of the resolved identities against ground truth, the measures record-linkage work
//! reports: pairwise precision, recall and F1 (every pair of records is either in one profile or
//! not, in truth and in cdp), B-cubed (the same per record, so large clusters do not dominate),
//! and counts of over-merged profiles and under-merged people. Used by `cdp demo` and `cdp eval`.

use crate::config::Config;
use anyhow::{Context, Result};
use cdp_bus::{Bus, ConsumerOptions, StartFrom};
use cdp_proto::Signal;
use cdp_resolver::{lookup, GraphStore};
use serde::Serialize;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairwiseScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Pairs cdp joined that truth keeps apart.
    pub false_pairs: u64,
    /// Pairs truth joins that cdp kept apart.
    pub missed_pairs: u64,
    pub records: u64,
}

/// B-cubed scores and cluster-level error counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClusterScores {
    pub bcubed_precision: f64,
    pub bcubed_recall: f64,
    pub bcubed_f1: f64,
    /// Profiles holding records of more than one person.
    pub over_merged_profiles: u64,
    /// People whose records are spread over more than one profile.
    pub under_merged_people: u64,
    pub people: u64,
    pub profiles: u64,
}

/// Everything `cdp eval` reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub pairwise: PairwiseScores,
    pub clusters: ClusterScores,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Record counts per person, per cluster and per (person, cluster). A record cdp never clustered
/// (e.g. dead-lettered) is a cluster of its own, keyed by `None` and counted apart.
struct Contingency<'a, P, C> {
    by_truth: HashMap<&'a P, u64>,
    by_pred: HashMap<&'a C, u64>,
    by_both: HashMap<(&'a P, &'a C), u64>,
    /// Per person, records that are in no cluster.
    unclustered: HashMap<&'a P, u64>,
}

fn contingency<'a, R, P, C>(
    truth: &'a HashMap<R, P>,
    predicted: &'a HashMap<R, C>,
) -> Contingency<'a, P, C>
where
    R: Eq + Hash,
    P: Eq + Hash,
    C: Eq + Hash,
{
    let mut t = Contingency {
        by_truth: HashMap::new(),
        by_pred: HashMap::new(),
        by_both: HashMap::new(),
        unclustered: HashMap::new(),
    };
    for (record, person) in truth {
        *t.by_truth.entry(person).or_default() += 1;
        match predicted.get(record) {
            Some(cluster) => {
                *t.by_pred.entry(cluster).or_default() += 1;
                *t.by_both.entry((person, cluster)).or_default() += 1;
            }
            None => *t.unclustered.entry(person).or_default() += 1,
        }
    }
    t
}

/// Scores `predicted` (record -> cluster) against `truth` (record -> person). Records of truth
/// that cdp never clustered count as singletons; predicted records absent from truth are ignored.
pub fn pairwise<R, P, C>(truth: &HashMap<R, P>, predicted: &HashMap<R, C>) -> PairwiseScores
where
    R: Eq + Hash,
    P: Eq + Hash,
    C: Eq + Hash,
{
    let t = contingency(truth, predicted);
    let true_pairs: u64 = t.by_truth.values().map(|n| pairs(*n)).sum();
    let pred_pairs: u64 = t.by_pred.values().map(|n| pairs(*n)).sum();
    let both: u64 = t.by_both.values().map(|n| pairs(*n)).sum();
    let precision = if pred_pairs == 0 {
        1.0
    } else {
        both as f64 / pred_pairs as f64
    };
    let recall = if true_pairs == 0 {
        1.0
    } else {
        both as f64 / true_pairs as f64
    };
    PairwiseScores {
        precision,
        recall,
        f1: f1(precision, recall),
        false_pairs: pred_pairs - both,
        missed_pairs: true_pairs - both,
        records: truth.len() as u64,
    }
}

/// B-cubed precision and recall (the mean over records of the share of the record's cluster that
/// is its person, and of its person that is its cluster) and the over- and under-merge counts.
pub fn clusters<R, P, C>(truth: &HashMap<R, P>, predicted: &HashMap<R, C>) -> ClusterScores
where
    R: Eq + Hash,
    P: Eq + Hash,
    C: Eq + Hash,
{
    let t = contingency(truth, predicted);
    let n = truth.len() as f64;
    let (mut precision, mut recall) = (0.0, 0.0);
    let mut people_per_cluster: HashMap<&C, u64> = HashMap::new();
    let mut clusters_per_person: HashMap<&P, u64> = HashMap::new();
    for (&(person, cluster), &both) in &t.by_both {
        let both = both as f64;
        precision += both * both / t.by_pred[cluster] as f64;
        recall += both * both / t.by_truth[person] as f64;
        *people_per_cluster.entry(cluster).or_default() += 1;
        *clusters_per_person.entry(person).or_default() += 1;
    }
    // Each unclustered record is its own cluster: fully precise, recalling only itself.
    for (&person, &alone) in &t.unclustered {
        precision += alone as f64;
        recall += alone as f64 / t.by_truth[person] as f64;
        *clusters_per_person.entry(person).or_default() += alone;
    }
    let (precision, recall) = if n == 0.0 {
        (1.0, 1.0)
    } else {
        (precision / n, recall / n)
    };
    let unclustered: u64 = t.unclustered.values().sum();
    ClusterScores {
        bcubed_precision: precision,
        bcubed_recall: recall,
        bcubed_f1: f1(precision, recall),
        over_merged_profiles: people_per_cluster.values().filter(|n| **n > 1).count() as u64,
        under_merged_people: clusters_per_person.values().filter(|n| **n > 1).count() as u64,
        people: t.by_truth.len() as u64,
        profiles: t.by_pred.len() as u64 + unclustered,
    }
}

/// (source, record id) -> person, from a `source,record,person` CSV with a header line, as
/// `cdp generate` writes it.
pub fn load_truth(path: &Path) -> Result<HashMap<(String, String), String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut truth = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ',');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(source), Some(record), Some(person)) => {
                truth.insert((source.to_string(), record.to_string()), person.to_string());
            }
            _ => anyhow::bail!(
                "{}:{}: expected `source,record,person`",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(truth)
}

/// (source, record id) -> canonical id of the profile the record's first identifier is in now,
/// for every signal on the signals topic.
pub fn predictions(
    bus: &dyn Bus,
    config: &Config,
    store: &dyn GraphStore,
) -> Result<HashMap<(String, String), String>> {
    let topic = &config.resolver.signals_topic;
    let mut consumer = bus.consumer(ConsumerOptions {
        group: format!("cdp-eval-{}", std::process::id()),
        topics: vec![topic.clone()],
        start: StartFrom::Earliest,
        commit: false,
    })?;
    let ends: i64 = bus.end_offsets(topic)?.iter().sum();
    let mut seen = 0i64;
    let mut predicted = HashMap::new();
    let mut cache: HashMap<(String, String), Option<String>> = HashMap::new();
    while seen < ends {
        let records = consumer.poll(5000, Duration::from_millis(500))?;
        if records.is_empty() {
            break;
        }
        seen += records.len() as i64;
        for r in records {
            let Some(signal) = r
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Signal>(v).ok())
            else {
                continue;
            };
            let Some(first) = signal.identifiers.first() else {
                continue;
            };
            let key = (signal.tenant.clone(), first.to_string());
            let canonical = match cache.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = lookup::canonical_of(store, &signal.tenant, first)?;
                    cache.insert(key, c.clone());
                    c
                }
            };
            if let Some(c) = canonical {
                predicted.insert((signal.source.as_str().to_string(), signal.event_id), c);
            }
        }
    }
    consumer.close()?;
    Ok(predicted)
}

/// Scores the state of `store` (and the signals on `bus`) against the truth file.
pub fn evaluate(
    bus: &dyn Bus,
    config: &Config,
    store: &dyn GraphStore,
    truth: &Path,
) -> Result<Scores> {
    let truth = load_truth(truth)?;
    let predicted = predictions(bus, config, store)?;
    Ok(Scores {
        pairwise: pairwise(&truth, &predicted),
        clusters: clusters(&truth, &predicted),
    })
}

/// The human-readable report of `cdp eval` and `cdp demo`.
pub fn print(scores: &Scores) {
    let (p, c) = (&scores.pairwise, &scores.clusters);
    println!("records            {}", p.records);
    println!("precision          {:.4}", p.precision);
    println!("recall             {:.4}", p.recall);
    println!("F1                 {:.4}", p.f1);
    println!("false pairs        {} (joined, truth apart)", p.false_pairs);
    println!(
        "missed pairs       {} (truth joined, kept apart)",
        p.missed_pairs
    );
    println!(
        "B-cubed            precision {:.4}, recall {:.4}, F1 {:.4}",
        c.bcubed_precision, c.bcubed_recall, c.bcubed_f1
    );
    println!(
        "profiles           {} for {} people; {} over-merged, {} people under-merged",
        c.profiles, c.people, c.over_merged_profiles, c.under_merged_people
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(u32, u32)]) -> HashMap<u32, u32> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn perfect_clustering_scores_one() {
        let truth = map(&[(1, 1), (2, 1), (3, 2), (4, 2)]);
        let pred = map(&[(1, 9), (2, 9), (3, 8), (4, 8)]);
        let s = pairwise(&truth, &pred);
        assert_eq!((s.precision, s.recall, s.f1), (1.0, 1.0, 1.0));
    }

    #[test]
    fn over_merge_costs_precision_and_split_costs_recall() {
        let truth = map(&[(1, 1), (2, 1), (3, 2), (4, 2)]);
        let all_one = map(&[(1, 0), (2, 0), (3, 0), (4, 0)]);
        let s = pairwise(&truth, &all_one);
        assert_eq!(s.recall, 1.0);
        assert!((s.precision - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(s.false_pairs, 4);

        let split = map(&[(1, 1), (2, 2), (3, 3)]); // record 4 unclustered
        let s = pairwise(&truth, &split);
        assert_eq!(s.recall, 0.0);
        assert_eq!(s.missed_pairs, 2);
        assert_eq!(s.f1, 0.0);
    }

    #[test]
    fn bcubed_weighs_records_and_counts_merge_errors() {
        // Person 1 has three records, person 2 one; cdp joins record 4 into person 1's profile
        // and leaves record 3 on its own.
        let truth = map(&[(1, 1), (2, 1), (3, 1), (4, 2)]);
        let pred = map(&[(1, 7), (2, 7), (3, 8), (4, 7)]);
        let c = clusters(&truth, &pred);
        // Precision per record: 2/3, 2/3, 1, 1/3; recall: 2/3, 2/3, 1/3, 1.
        assert!(
            (c.bcubed_precision - (2.0 / 3.0 + 2.0 / 3.0 + 1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-9
        );
        assert!((c.bcubed_recall - (2.0 / 3.0 + 2.0 / 3.0 + 1.0 / 3.0 + 1.0) / 4.0).abs() < 1e-9);
        assert_eq!(c.over_merged_profiles, 1);
        assert_eq!(c.under_merged_people, 1);
        assert_eq!((c.people, c.profiles), (2, 2));
    }

    #[test]
    fn unclustered_records_are_singletons() {
        let truth = map(&[(1, 1), (2, 1)]);
        let pred = map(&[(1, 5)]);
        let c = clusters(&truth, &pred);
        assert_eq!(c.bcubed_precision, 1.0);
        assert!((c.bcubed_recall - 0.5).abs() < 1e-9);
        assert_eq!(c.under_merged_people, 1);
        assert_eq!(c.profiles, 2);
        let perfect = clusters(&truth, &map(&[(1, 5), (2, 5)]));
        assert_eq!((perfect.bcubed_f1, perfect.over_merged_profiles), (1.0, 0));
    }
}
