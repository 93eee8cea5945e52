"""Sampling metrics: unbiased pass@k and majority-vote accuracy.

pass@k is the estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on
Code": with n samples of which c are correct, the chance that at least one of k samples drawn
without replacement is correct, 1 - C(n-c, k) / C(n, k), computed as a product so that it stays
exact in floating point for large n.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c of them correct (needs k <= n)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def k_values(max_samples: int) -> list[int]:
    """The k reported for runs with up to max_samples completions per problem:
    1, the powers of two below it, and max_samples itself."""
    if max_samples < 1:
        return []
    ks = []
    k = 1
    while k < max_samples:
        ks.append(k)
        k *= 2
    ks.append(max_samples)
    return ks


def majority_vote(keys: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, bool]:
    """The most frequent answer among the completions that have one, and whether it is right.

    Ties go to the answer that appeared first. Completions without an answer (None) do not
    vote; with no votes at all the majority answer is None and counts as wrong."""
    votes = Counter(key for key in keys if key is not None)
    if not votes:
        return None, False
    best = max(votes.values())
    winner = next(key for key in keys if key is not None and votes[key] == best)
    index = list(keys).index(winner)
    return winner, bool(correct[index])


def mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None
