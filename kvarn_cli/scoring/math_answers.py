"""Final-answer extraction and checking for math tasks (MATH500, AIME, GSM8K).

The final answer of a completion is the content of its last complete `\\boxed{...}` (or
`\\fbox{...}`); for GSM8K, where models often answer in prose, a boxed answer is taken when there
is one and the last number in the text otherwise. Answers are compared with the reference by
math-verify (LaTeX-aware: \\frac{1}{2} = 0.5 = \\dfrac12, intervals, tuples, units in \\text{},
degrees), after a plain numeric comparison for the number-valued tasks.

Every check is bounded in time (math-verify's own timeouts, which use SIGALRM and therefore
only work in a main thread; the scorer runs checks in worker processes whose main thread this
is, and bounds those from outside too) and never raises.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

MATH_TASKS = ("math", "gsm8k", "aime")
#: Extracted answers longer than this are compared as strings only (no symbolic parsing).
MAX_SYMBOLIC_CHARS = 1000

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class MathVerdict:
    """The result of checking one completion."""

    correct: bool
    #: The final answer found in the completion (None: there was none).
    extracted: str | None
    #: Equal for answers that are the same up to notation; what majority voting counts.
    vote_key: str | None
    #: Why the check could not decide normally ("timeout", "error: ..."), else "".
    note: str = ""


def last_boxed(text: str) -> str | None:
    """The content of the last complete \\boxed{...} or \\fbox{...}, braces balanced
    (escaped braces \\{ \\} do not count); also the brace-less form `\\boxed 5`."""
    found: str | None = None
    for match in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text):
        content = _box_argument(text, match.end())
        if content is not None and content.strip():
            found = content.strip()
    return found


def _box_argument(text: str, start: int) -> str | None:
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s$]+", text[i:])
        return token.group(0) if token else None
    depth = 0
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None  # cut off before the closing brace


def last_number(text: str) -> str | None:
    """The last number in the text, with thousands separators and currency signs dropped."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "")


def reference_answer(task: str, answer: Any) -> str:
    """The reference final answer for a task, from a dataset's `answer` field.

    GSM8K answers are full solutions ending in `#### N` (or already a number); AIME answers are
    integers, possibly zero-padded strings ("025"); MATH answers are LaTeX strings.
    Raises ValueError for an answer the task cannot use."""
    if answer is None or isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"answer must be a string or a number, not {type(answer).__name__}")
    text = str(answer).strip()
    if not text:
        raise ValueError("answer is empty")
    if task == "gsm8k":
        final = _GSM8K_FINAL.search(text)
        if final:
            text = final.group(1)
        number = _plain_number(text)
        if number is None:
            raise ValueError(f"GSM8K answer {text[:40]!r} is not a number")
        return _decimal_text(number)
    if task == "aime":
        number = _plain_number(text)
        if number is None or number != number.to_integral_value():
            raise ValueError(f"AIME answer {text[:40]!r} is not an integer")
        return str(int(number))
    if task == "math":
        return text
    raise ValueError(f"unknown math task {task!r}")


def extract_answer(task: str, completion: str) -> str | None:
    """The final answer of a completion: the last \\boxed{}; for GSM8K, else the last number."""
    boxed = last_boxed(completion)
    if boxed is not None or task != "gsm8k":
        return boxed
    return last_number(completion)


def _plain_number(text: str) -> Decimal | None:
    """The number a short answer states, ignoring $, commas, spaces, a trailing period and
    simple LaTeX wrappers (\\text{}, \\$, \\%); None when it is not just a number."""
    cleaned = text.strip()
    cleaned = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", cleaned)
    cleaned = re.sub(r"\\(?:mathrm|textbf|mathbf)\{\s*([^{}]*?)\s*\}", r"\1", cleaned)
    cleaned = cleaned.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    cleaned = cleaned.replace("\\!", "").replace("\\,", "").replace("{,}", "").replace(",", "")
    cleaned = cleaned.replace(" ", "").rstrip(".")
    if cleaned.startswith("(") and cleaned.endswith(")"):
        cleaned = cleaned[1:-1]  # a multiple-choice style "(073)"
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _decimal_text(number: Decimal) -> str:
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "+0") else text


def _normalized_latex(text: str) -> str:
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\[,;:! ]", "", text)
    text = text.replace("$", "")
    return re.sub(r"\s+", "", text)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=4096)
def _parse(latex: str, timeout_s: int) -> tuple[Any, ...]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    timeout = timeout_s if _in_main_thread() else None
    return tuple(
        parse(
            "\\boxed{" + latex + "}",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout,  # type: ignore[arg-type]
        )
    )


def _fraction_key(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _vote_key(extracted: str, parsed: tuple[Any, ...]) -> str:
    number = _plain_number(extracted)
    if number is not None:
        return _fraction_key(Fraction(number))
    if parsed:
        import sympy

        first = parsed[0]
        try:
            if isinstance(first, sympy.Float):
                first = sympy.nsimplify(first, rational=True)
            if isinstance(first, sympy.Rational):  # Integer is a Rational
                return _fraction_key(Fraction(int(first.p), int(first.q)))
            return "sympy:" + str(first)
        except Exception:  # noqa: BLE001 - printing a pathological expression may fail
            pass
    return "latex:" + _normalized_latex(extracted)


def check_math(task: str, completion: str, answer: Any, timeout_s: int = 5) -> MathVerdict:
    """Checks one completion of a math task against the reference answer; never raises.

    An unusable reference answer gives a verdict of False with a note (the scorer normally
    finds those before checking)."""
    try:
        gold = reference_answer(task, answer)
    except ValueError as exc:
        return MathVerdict(False, None, None, f"error: {exc}")
    extracted = extract_answer(task, completion)
    if extracted is None:
        return MathVerdict(False, None, None)
    try:
        return _check_extracted(task, extracted, gold, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a checker bug must cost one verdict, not the run
        return MathVerdict(False, extracted, "latex:" + _normalized_latex(extracted), f"error: {type(exc).__name__}")


def _check_extracted(task: str, extracted: str, gold: str, timeout_s: int) -> MathVerdict:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    if task in ("gsm8k", "aime"):
        number = _plain_number(extracted)
        if number is not None:
            return MathVerdict(number == Decimal(gold), extracted, _fraction_key(Fraction(number)))
    if _normalized_latex(extracted) == _normalized_latex(gold):
        parsed = _parse(extracted, timeout_s) if len(extracted) <= MAX_SYMBOLIC_CHARS else ()
        return MathVerdict(True, extracted, _vote_key(extracted, parsed))
    if len(extracted) > MAX_SYMBOLIC_CHARS:
        return MathVerdict(False, extracted, "latex:" + _normalized_latex(extracted), "too long to parse")

    from math_verify import verify

    gold_parsed = _parse(gold, timeout_s)
    parsed = _parse(extracted, timeout_s)
    timeout = timeout_s if _in_main_thread() else None
    correct = bool(gold_parsed and parsed and verify(list(gold_parsed), list(parsed), timeout_seconds=timeout))  # type: ignore[arg-type]
    return MathVerdict(correct, extracted, _vote_key(extracted, parsed))
