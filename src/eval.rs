//! Pairwise accuracy of the resolved identities against ground truth: every pair of records is
//! either in one profile or not, in truth and in cdp; precision, recall and F1 count the pairs.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq)]
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

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Scores `predicted` (record -> cluster) against `truth` (record -> person). Records of truth
/// that cdp never clustered count as singletons.
pub fn pairwise<R, P, C>(truth: &HashMap<R, P>, predicted: &HashMap<R, C>) -> PairwiseScores
where
    R: Eq + Hash,
    P: Eq + Hash + Clone,
    C: Eq + Hash + Clone,
{
    let mut by_truth: HashMap<&P, u64> = HashMap::new();
    let mut by_pred: HashMap<&C, u64> = HashMap::new();
    let mut by_both: HashMap<(&P, &C), u64> = HashMap::new();
    for (record, person) in truth {
        *by_truth.entry(person).or_default() += 1;
        // A record never clustered (e.g. dead-lettered) is a singleton: it pairs with nothing.
        if let Some(cluster) = predicted.get(record) {
            *by_pred.entry(cluster).or_default() += 1;
            *by_both.entry((person, cluster)).or_default() += 1;
        }
    }
    let true_pairs: u64 = by_truth.values().map(|n| pairs(*n)).sum();
    let pred_pairs: u64 = by_pred.values().map(|n| pairs(*n)).sum();
    let both: u64 = by_both.values().map(|n| pairs(*n)).sum();
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
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    PairwiseScores {
        precision,
        recall,
        f1,
        false_pairs: pred_pairs - both,
        missed_pairs: true_pairs - both,
        records: truth.len() as u64,
    }
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
}
