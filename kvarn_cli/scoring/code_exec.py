"""HumanEval checking: turn a completion into a test program, then run it in the sandbox.

Two shapes of answer are understood:

- a raw completion (a base model continuing the function): `code_prompt + completion`;
- a chat answer with fenced code: the last complete fenced Python block that defines the entry
  point. If the block holds the whole function it runs on its own, after the imports and helper
  definitions of `code_prompt` that it does not redefine (some HumanEval functions call helpers
  given in the prompt); a block that is only the body continues `code_prompt` like a raw
  completion.

The program then runs the record's `test` and `check(entry_point)`; it passes when that returns.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from kvarn_cli.scoring.sandbox import ExecResult, SandboxLimits, run_programs

_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+.-]*)[^\n`]*$")
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}


@dataclass(frozen=True)
class CodeProblem:
    """What a HumanEval record provides for checking."""

    code_prompt: str
    test: str
    entry_point: str


def fenced_blocks(text: str) -> tuple[list[str], str | None]:
    """The complete fenced Python (or untagged) blocks of a chat answer, in order, and the
    content of a final block left open (an answer cut off by the token limit), if any."""
    blocks: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        fence, tag = match.group(1), match.group(2).lower()
        body: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                closed = True
                break
            body.append(lines[j])
            j += 1
        if not closed:
            return blocks, ("\n".join(body) if tag in _PYTHON_TAGS else None)
        if tag in _PYTHON_TAGS:
            blocks.append("\n".join(body))
        i = j + 1
    return blocks, None


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _top_level_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def prompt_context(code_prompt: str, entry_point: str, exclude: set[str]) -> str:
    """The imports and helper definitions of `code_prompt`, without the unfinished entry point
    (and without anything in `exclude`, which the answer defines itself)."""
    try:
        tree = ast.parse(code_prompt + "\n    pass\n")
    except SyntaxError:
        return "\n".join(
            line for line in code_prompt.splitlines() if re.match(r"^(import|from)\s+\S+", line)
        )
    keep: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == entry_point or node.name in exclude:
                continue
        segment = ast.get_source_segment(code_prompt + "\n    pass\n", node)
        if segment:
            keep.append(segment)
    return "\n".join(keep)


def solution_code(completion: str, problem: CodeProblem) -> str:
    """The code under test (everything but the test harness) for one completion."""
    blocks, open_block = fenced_blocks(completion)
    candidates = blocks + ([open_block] if open_block is not None else [])
    for block in reversed(candidates):
        if _defines(block, problem.entry_point):
            context = prompt_context(problem.code_prompt, problem.entry_point, _top_level_names(block))
            return f"{context}\n\n{block}\n" if context else block + "\n"
    if candidates:
        return problem.code_prompt + candidates[-1] + "\n"
    return problem.code_prompt + completion + "\n"


def build_test_program(completion: str, problem: CodeProblem) -> str:
    """The full program the sandbox runs: solution, the record's tests, the check call."""
    return (
        solution_code(completion, problem)
        + "\n\n"
        + problem.test
        + "\n\n"
        + f"check({problem.entry_point})\n"
    )


def check_completions(
    items: Sequence[tuple[str, CodeProblem]],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    on_done: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Runs every (completion, problem) pair in its own sandbox, `workers` at a time."""
    programs = [build_test_program(completion, problem) for completion, problem in items]
    return run_programs(programs, limits, workers, on_done)
