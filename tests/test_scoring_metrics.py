"""pass@k against brute-force enumeration, k choices, majority vote."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvarn_cli.scoring.metrics import k_values, majority_vote, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The fraction of all k-subsets of the n samples that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    hits = sum(1 for subset in subsets if any(samples[i] for i in subset))
    return Fraction(hits, len(subsets))


@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_enumeration(case: tuple[int, int, int]) -> None:
    n, c, k = case
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_edge_values() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 1, 200) == 1.0
    assert 0.0 < pass_at_k(200, 1, 100) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_inputs(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [(0, []), (1, [1]), (2, [1, 2]), (5, [1, 2, 4, 5]), (8, [1, 2, 4, 8]), (16, [1, 2, 4, 8, 16]), (20, [1, 2, 4, 8, 16, 20])],
)
def test_k_values(samples: int, expected: list[int]) -> None:
    assert k_values(samples) == expected


def test_majority_vote_picks_the_most_frequent_answer() -> None:
    assert majority_vote(["4", "5", "4", None], [True, False, True, False]) == ("4", True)
    assert majority_vote(["5", "4", "5", "4", "5"], [False, True, False, True, False]) == ("5", False)


def test_majority_vote_ties_go_to_the_first_answer_and_missing_answers_do_not_vote() -> None:
    assert majority_vote([None, "7", "8", "8", "7"], [False, False, True, True, False]) == ("7", False)
    assert majority_vote([None, None, "3"], [False, False, True]) == ("3", True)
    assert majority_vote([None, None], [False, False]) == (None, False)
