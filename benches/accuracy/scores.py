"""Pairwise precision, recall and F1 of a clustering against truth, defined as `cdp eval`
defines them (src/eval.rs), so the two matchers are scored by one rule."""

from collections import Counter


def pairs(n: int) -> int:
    return n * (n - 1) // 2


def pairwise(truth: dict, predicted: dict) -> dict:
    """truth: record -> person; predicted: record -> cluster (records missing are singletons)."""
    by_truth = Counter(truth.values())
    by_pred = Counter(predicted[r] for r in truth if r in predicted)
    by_both = Counter((truth[r], predicted[r]) for r in truth if r in predicted)
    true_pairs = sum(pairs(n) for n in by_truth.values())
    pred_pairs = sum(pairs(n) for n in by_pred.values())
    both = sum(pairs(n) for n in by_both.values())
    precision = both / pred_pairs if pred_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
