"""HumanEval answers: finding the code in raw and chat answers, and running it for real.

Positive controls are the canonical solutions of HumanEval itself (from KVARN_DATA), in the two
shapes a model produces: a raw continuation of the prompt, and a chat answer with prose and a
fenced function (which may rely on helpers and imports that only the prompt defines).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from kvarn_cli.scoring.code_exec import CodeProblem, check_completions, fenced_blocks, solution_code
from kvarn_cli.scoring.sandbox import SandboxLimits

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))
LIMITS = SandboxLimits(timeout_s=10.0)
# Plain functions, a helper defined in the prompt (10, 38), a helper plus an import (32),
# typing imports (0, 1), and a string-processing one (16).
CONTROL_IDS = ["HumanEval/0", "HumanEval/1", "HumanEval/10", "HumanEval/16", "HumanEval/32", "HumanEval/38"]


@pytest.fixture(scope="module")
def humaneval() -> dict[str, dict]:
    path = DATA / "humaneval.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found: set KVARN_DATA to the directory holding the evaluation data")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["task_id"]: row for row in rows}


def problem_of(row: dict) -> CodeProblem:
    return CodeProblem(row["prompt"], row["test"], row["entry_point"])


def signature_of(row: dict) -> str:
    match = re.search(rf"^def {re.escape(row['entry_point'])}\(.*$", row["prompt"], re.MULTILINE)
    assert match, row["task_id"]
    return match.group(0)


def chat_answer(row: dict) -> str:
    """A chat-style answer: prose, a fenced function without the prompt's helpers, more prose."""
    function = signature_of(row) + "\n" + row["canonical_solution"]
    return (
        "Sure! Here is an implementation.\n\n"
        f"```python\n{function}```\n\n"
        "It runs in linear time. Example:\n\n"
        f"```python\nprint({row['entry_point']})\n```\n"
    )


# --- finding the code -------------------------------------------------------------------------


def test_fenced_blocks_finds_python_and_untagged_blocks_only() -> None:
    text = "a\n```python\nx = 1\n```\nb\n```bash\nrm -rf /\n```\n~~~\ny = 2\n~~~\n```Python3\nz = 3\n```"
    blocks, open_block = fenced_blocks(text)
    assert blocks == ["x = 1", "y = 2", "z = 3"]
    assert open_block is None


def test_fenced_blocks_reports_a_block_cut_off_by_the_token_limit() -> None:
    blocks, open_block = fenced_blocks("```python\nx = 1\n```\nnow:\n```python\ndef f():\n    return 1")
    assert blocks == ["x = 1"]
    assert open_block == "def f():\n    return 1"


def test_a_raw_completion_continues_the_prompt() -> None:
    problem = CodeProblem("def f(x):\n    \"\"\"doc\"\"\"\n", "def check(c):\n    assert c(1) == 2\n", "f")
    assert solution_code("    return x + 1\n", problem) == problem.code_prompt + "    return x + 1\n\n"


def test_a_full_function_in_a_chat_answer_runs_with_the_prompt_imports_and_helpers() -> None:
    prompt = "import math\nfrom typing import List\n\n\ndef helper(x):\n    return x * 2\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"doc\"\"\"\n"
    problem = CodeProblem(prompt, "", "f")
    code = solution_code("Here:\n```python\ndef f(xs):\n    return helper(sum(xs))\n```\nDone.", problem)
    assert "import math" in code and "from typing import List" in code and "def helper(x)" in code
    assert code.count("def f(") == 1
    assert code.rstrip().endswith("return helper(sum(xs))")


def test_a_helper_the_answer_redefines_is_not_taken_from_the_prompt() -> None:
    prompt = "def helper(x):\n    return x * 2\n\n\ndef f(x):\n    \"\"\"doc\"\"\"\n"
    code = solution_code("```python\ndef helper(x):\n    return x * 3\n\ndef f(x):\n    return helper(x)\n```", CodeProblem(prompt, "", "f"))
    assert code.count("def helper(") == 1 and "x * 3" in code


def test_the_last_block_defining_the_entry_point_wins() -> None:
    answer = "```python\ndef f(x):\n    return 1\n```\nbetter:\n```python\ndef f(x):\n    return 2\n```\nusage:\n```python\nprint(f(3))\n```"
    code = solution_code(answer, CodeProblem("def f(x):\n    \"\"\"doc\"\"\"\n", "", "f"))
    assert "return 2" in code and "return 1" not in code and "print" not in code


def test_a_block_with_only_the_body_continues_the_prompt() -> None:
    problem = CodeProblem("def f(x):\n    \"\"\"doc\"\"\"\n", "", "f")
    assert solution_code("```python\n    return x + 1\n```", problem) == problem.code_prompt + "    return x + 1\n"


# --- running it ---------------------------------------------------------------------------


def test_canonical_solutions_pass_as_raw_and_as_chat_answers(humaneval: dict[str, dict]) -> None:
    rows = [humaneval[task_id] for task_id in CONTROL_IDS]
    items = [(row["canonical_solution"], problem_of(row)) for row in rows]
    items += [(chat_answer(row), problem_of(row)) for row in rows]
    results = check_completions(items, LIMITS, workers=2)
    failures = [(i, r.status, r.detail) for i, r in enumerate(results) if not r.passed]
    assert failures == []


def test_wrong_and_broken_solutions_fail(humaneval: dict[str, dict]) -> None:
    first, second = humaneval["HumanEval/0"], humaneval["HumanEval/2"]
    items = [
        (second["canonical_solution"], problem_of(first)),  # another problem's solution
        ("    return False\n", problem_of(first)),  # right type, wrong answer
        ("I cannot solve this problem.", problem_of(first)),  # prose, no code
        ("```python\ndef has_close_elements(numbers, threshold):\n    return True\n```", problem_of(first)),
        ("```python\ndef has_close_elements(numbers, threshold):\n    while True:\n        pass\n```", problem_of(first)),
    ]
    results = check_completions(items, SandboxLimits(timeout_s=3.0), workers=2)
    assert [r.passed for r in results] == [False] * len(items)
    assert results[4].status == "timeout"
