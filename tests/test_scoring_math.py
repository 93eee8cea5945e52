"""Grader cases for math answers: extraction, equivalent forms, wrong answers, bounded checks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvarn_cli.scoring.math_answers import (
    MathVerdict,
    check_math,
    extract_answer,
    last_boxed,
    last_number,
    reference_answer,
)
from kvarn_cli.scoring.math_pool import check_math_items

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))


def data_rows(name: str) -> list[dict]:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: set KVARN_DATA to the directory holding the evaluation data")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- extraction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} and nothing else", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{3}, finally \boxed{4}", "4"),
        (r"\fbox{7}", "7"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{a\}b}", r"a\}b"),
        (r"\boxed{4} then cut off: \boxed{\frac{1}{", "4"),
        (r"\boxed{}", None),
        ("no box here, 12", None),
        (r"\boxedsomething{3}", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sells 9 eggs for $2 each, making $18.", "18"),
        ("The total is $1,234,567.", "1234567"),
        ("It costs 12.50 dollars", "12.50"),
        ("The temperature fell to -5 degrees.", "-5"),
        ("Items 1, 2, and 3", "3"),
        ("no digits", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


def test_gsm8k_prefers_a_boxed_answer_over_the_last_number() -> None:
    assert extract_answer("gsm8k", r"The answer is \boxed{18}. Check: 9 * 2 = 18, step 3") == "18"
    assert extract_answer("gsm8k", "9 * 2 = 18, so she makes 18 dollars") == "18"
    assert extract_answer("math", "9 * 2 = 18") is None  # math needs a boxed answer


@pytest.mark.parametrize(
    ("task", "answer", "expected"),
    [
        ("gsm8k", "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", "18"),
        ("gsm8k", "steps\n#### 1,234", "1234"),
        ("gsm8k", "70000", "70000"),
        ("gsm8k", 18, "18"),
        ("aime", "025", "25"),
        ("aime", "204", "204"),
        ("aime", 73, "73"),
        ("math", r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
    ],
)
def test_reference_answer(task: str, answer: object, expected: str) -> None:
    assert reference_answer(task, answer) == expected


@pytest.mark.parametrize(
    ("task", "answer"),
    [("aime", "twelve"), ("aime", "2.5"), ("gsm8k", "#### many"), ("math", ""), ("math", None), ("math", ["1"])],
)
def test_unusable_reference_answers_are_rejected(task: str, answer: object) -> None:
    with pytest.raises(ValueError):
        reference_answer(task, answer)


# --- equivalence ---------------------------------------------------------------------------

EQUIVALENT = [
    ("math", r"\boxed{0.5}", r"\frac{1}{2}"),
    ("math", r"\boxed{\dfrac12}", r"\frac{1}{2}"),
    ("math", r"\boxed{\tfrac{1}{2}}", r"\frac{1}{2}"),
    ("math", r"\boxed{1/2}", r"\frac{1}{2}"),
    ("math", r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),
    ("math", r"\boxed{[2, 5)}", r"[2,5)"),
    ("math", r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
    ("math", r"\boxed{\{1,2\}}", r"\{1,2\}"),
    ("math", r"\boxed{10}", r"10\text{ cm}"),
    ("math", r"\boxed{10\text{ cm}}", r"10"),
    ("math", r"\boxed{30^\circ}", r"30"),
    ("math", r"\boxed{30}", r"30^\circ"),
    ("math", r"\boxed{\text{(C)}}", r"\text{(C)}"),
    ("math", r"\boxed{C}", r"\text{(C)}"),
    ("math", r"\boxed{(x+1)^2}", r"x^2+2x+1"),
    ("math", r"\boxed{\frac{\sqrt2}{2}}", r"\sqrt{2}/2"),
    ("math", r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    ("math", r"\boxed{1,\!000}", r"1000"),
    ("gsm8k", "So she makes $18 every day.", "#### 18"),
    ("gsm8k", "The total is $1,234.", "work\n#### 1,234"),
    ("gsm8k", "1234.00", "#### 1234"),
    ("gsm8k", r"\boxed{\$18}", "#### 18"),
    ("gsm8k", r"\boxed{18 \text{ dollars}}", "18"),
    ("gsm8k", "It fell by -5 degrees", "#### -5"),
    ("aime", r"\boxed{025}", "025"),
    ("aime", r"\boxed{25}", "025"),
    ("aime", r"\boxed{073}", "73"),
    ("aime", r"\boxed{\textbf{(073)}}", "073"),
    ("aime", r"\boxed{25}", 25),
]

DIFFERENT = [
    ("math", r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
    ("math", r"\boxed{(2,5)}", r"[2,5)"),
    ("math", r"\boxed{(\pi/2, 3)}", r"\left( 3, \frac{\pi}{2} \right)"),
    ("math", r"\boxed{D}", r"\text{(C)}"),
    ("math", r"\boxed{x^2+1}", r"(x+1)^2"),
    ("math", r"\boxed{-2}", r"2"),
    ("math", "The answer is 1/2 (no box)", r"\frac{1}{2}"),
    ("gsm8k", "So she makes $17 every day.", "#### 18"),
    ("gsm8k", "The answer is 1,235", "#### 1,234"),
    ("gsm8k", "no number at all", "#### 3"),
    ("aime", r"\boxed{26}", "025"),
    ("aime", r"\boxed{250}", "025"),
    ("aime", "the answer is 25", "025"),  # AIME needs a boxed answer
]


@pytest.mark.parametrize(("task", "completion", "answer"), EQUIVALENT)
def test_equivalent_answers_are_accepted(task: str, completion: str, answer: object) -> None:
    verdict = check_math(task, completion, answer, timeout_s=5)
    assert verdict.correct, verdict


@pytest.mark.parametrize(("task", "completion", "answer"), DIFFERENT)
def test_wrong_answers_are_rejected(task: str, completion: str, answer: object) -> None:
    verdict = check_math(task, completion, answer, timeout_s=5)
    assert not verdict.correct, verdict


def test_equivalent_forms_share_a_vote_key() -> None:
    keys = {check_math("math", c, r"\frac{1}{2}").vote_key for c in (r"\boxed{0.5}", r"\boxed{\dfrac12}", r"\boxed{\frac{1}{2}}")}
    assert len(keys) == 1
    assert check_math("math", r"\boxed{3}", "3").vote_key != check_math("math", r"\boxed{4}", "3").vote_key


# --- real data ---------------------------------------------------------------------------


def test_every_math500_reference_solution_is_graded_correct() -> None:
    rows = data_rows("math500.jsonl")
    wrong = [r["unique_id"] for r in rows if not check_math("math", r["solution"], r["answer"]).correct]
    assert wrong == []


def test_aime_reference_solutions_with_a_boxed_answer_are_graded_correct() -> None:
    rows = [r for r in data_rows("aime24.jsonl") if last_boxed(r["solution"]) is not None]
    assert len(rows) >= 25
    wrong = [r["id"] for r in rows if not check_math("aime", r["solution"], r["answer"]).correct]
    assert wrong == []


def test_gsm8k_final_numbers_in_prose_with_commas_and_dollars() -> None:
    rows = data_rows("gsm8k_test.jsonl")[:200]
    for row in rows:
        reference = reference_answer("gsm8k", row["answer"])
        if "." in reference:
            continue
        value = int(reference)
        right = f"So the final answer is ${value:,}."
        wrong = f"So the final answer is ${value + 1:,}."
        assert check_math("gsm8k", right, row["answer"]).correct, row["answer"]
        assert not check_math("gsm8k", wrong, row["answer"]).correct, row["answer"]


def test_distinct_integer_answers_of_math500_do_not_match_each_other() -> None:
    integers = sorted({int(r["answer"]) for r in data_rows("math500.jsonl") if r["answer"].lstrip("-").isdigit()})
    for a, b in zip(integers[:40], integers[1:41]):
        assert not check_math("math", rf"\boxed{{{a}}}", str(b)).correct


# --- robustness ----------------------------------------------------------------------------


def test_a_pathological_answer_is_bounded_in_time() -> None:
    started = time.monotonic()
    verdict = check_math("math", r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1)
    assert not verdict.correct
    assert time.monotonic() - started < 30  # a hang would never return; this only catches one


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task=st.sampled_from(["math", "gsm8k", "aime"]),
    completion=st.lists(
        st.sampled_from(list("\\{}()[]^_$0123456789.,-+*/ abcx") + ["\\boxed{", "\\frac", "\\sqrt", "\\left(", "\\text{"]),
        max_size=40,
    ).map("".join),
)
def test_checking_never_raises(task: str, completion: str) -> None:
    verdict = check_math(task, completion, "12" if task != "math" else r"\frac{1}{2}", timeout_s=1)
    assert isinstance(verdict, MathVerdict)


def test_worker_pool_matches_in_process_checking() -> None:
    items = [(task, completion, answer) for task, completion, answer in EQUIVALENT[:8] + DIFFERENT[:8]]
    in_process = check_math_items(items, workers=0)
    pooled = check_math_items(items, workers=2)
    assert [v.correct for v in pooled] == [v.correct for v in in_process] == [True] * 8 + [False] * 8


def test_worker_pool_replaces_a_worker_that_overruns_its_deadline() -> None:
    slow = ("math", r"\boxed{9^{9^{9^{9}}}}", "1")  # math-verify gives up only after timeout_s=5
    items = [slow, ("aime", r"\boxed{025}", "25"), ("gsm8k", "it is 7", "#### 7")]
    verdicts = check_math_items(items, workers=1, timeout_s=5, deadline_s=1.0)
    assert verdicts[0].correct is False and verdicts[0].note == "timeout"
    assert verdicts[0].extracted == "9^{9^{9^{9}}}"
    assert [v.correct for v in verdicts[1:]] == [True, True]
