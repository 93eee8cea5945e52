"""`kvarn score` on run directories built here in the format `kvarn run` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest

from kvarn_cli.errors import InputError
from kvarn_cli.scoring.score_run import ScoreOptions, score_run

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ScoreOptions(workers=2, code_timeout_s=5.0)

ADD_PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def output_record(record_id: str, completions: list[str], **fields: object) -> dict:
    return {
        "id": record_id,
        **fields,
        "completions": completions,
        "finish_reasons": ["stop"] * len(completions),
        "num_prompt_tokens": 20,
        "num_completion_tokens": [len(c.split()) for c in completions],
    }


def add_record(record_id: str, completions: list[str]) -> dict:
    return output_record(
        record_id, completions, task="humaneval", prompt="Complete add.", code_prompt=ADD_PROMPT, test=ADD_TEST, entry_point="add"
    )


def write_run(run_dir: Path, records: list[dict], tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "outputs.jsonl").open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
        fh.write(tail)
    return run_dir


def kvarn(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "kvarn_cli", *args], capture_output=True, text=True, env=env, timeout=300)


MIXED = [
    output_record("m-half", [r"\boxed{0.5}", r"\boxed{\dfrac12}", r"\boxed{2}", "no idea"], task="math", answer=r"\frac{1}{2}"),
    output_record("g-eggs", ["She makes $1,234 a day.", r"\boxed{1234}", "1243"], task="gsm8k", answer="work\n#### 1,234"),
    output_record("a-25", [r"\boxed{025}"], task="aime", answer="025"),
    add_record("c-add", ["    return a + b\n", "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n", "    return a - b\n"]),
    output_record("chat", ["Paris."]),
    output_record("quiz", ["B"], task="trivia", answer="B"),
    output_record("m-noanswer", [r"\boxed{1}"], task="math"),
    output_record("c-notest", ["    return 1\n"], task="humaneval", entry_point="f"),
    output_record("m-empty", [], task="math", answer="1"),
]


@pytest.fixture(scope="module")
def mixed_scores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = write_run(tmp_path_factory.mktemp("mixed"), MIXED)
    return run_dir, score_run(run_dir, OPTIONS)


def by_id(scores: dict) -> dict[str, dict]:
    return {entry["id"]: entry for entry in scores["records"]}


def test_every_completion_gets_a_verdict(mixed_scores) -> None:
    records = by_id(mixed_scores[1])
    assert records["m-half"]["correct"] == [True, True, False, False]
    assert records["m-half"]["extracted"] == ["0.5", r"\dfrac12", "2", None]
    assert records["g-eggs"]["correct"] == [True, True, False]
    assert records["a-25"]["correct"] == [True]
    assert records["c-add"]["correct"] == [True, True, False]
    assert records["c-add"]["status"] == ["passed", "passed", "failed"]


def test_records_that_cannot_be_scored_are_counted_with_their_reason(mixed_scores) -> None:
    scores = mixed_scores[1]
    records = by_id(scores)
    reasons = {rid: records[rid]["reason"] for rid in ("chat", "quiz", "m-noanswer", "c-notest", "m-empty")}
    assert reasons == {
        "chat": "no task",
        "quiz": "unknown task 'trivia'",
        "m-noanswer": "no answer",
        "c-notest": "no test",
        "m-empty": "no completions",
    }
    overall = scores["summary"]["overall"]
    assert (overall["records"], overall["scored"], overall["not_scored"]) == (9, 4, 5)
    assert scores["summary"]["by_task"]["none"]["not_scored"] == 1


def test_summary_figures(mixed_scores) -> None:
    summary = mixed_scores[1]["summary"]
    math = summary["by_task"]["math"]
    assert math["pass@1"] == pytest.approx(2 / 4)
    assert math["pass@k"]["2"] == pytest.approx(1 - comb(2, 2) / comb(4, 2))
    assert math["maj@k"] == 1.0  # 0.5 and \dfrac12 are one answer, voted twice
    gsm8k = summary["by_task"]["gsm8k"]
    assert gsm8k["pass@1"] == pytest.approx(2 / 3)
    assert gsm8k["pass@k"]["3"] == 1.0
    code = summary["by_task"]["humaneval"]
    assert code["pass@1"] == pytest.approx(2 / 3) and code["maj@k"] is None
    overall = summary["overall"]
    assert overall["completions"] == 4 + 3 + 1 + 3
    assert overall["correct"] == 2 + 2 + 1 + 2
    assert overall["pass@1"] == pytest.approx((2 / 4 + 2 / 3 + 1 + 2 / 3) / 4)
    # pass@2 averages only the problems with at least two samples (the AIME one has one)
    assert overall["pass@k"]["2"] == pytest.approx((5 / 6 + 1 + 1) / 3)


def test_scores_json_is_written(mixed_scores) -> None:
    run_dir, scores = mixed_scores
    written = json.loads((run_dir / "scores.json").read_text())
    assert written["summary"] == scores["summary"]
    assert [r["id"] for r in written["records"]] == [r["id"] for r in MIXED]


def test_a_torn_last_line_is_ignored_with_a_warning(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", [output_record("a", [r"\boxed{1}"], task="aime", answer="1")], tail='{"id": "b", "compl')
    warnings: list[str] = []
    scores = score_run(run_dir, OPTIONS, warn=warnings.append)
    assert [r["id"] for r in scores["records"]] == ["a"]
    assert len(warnings) == 1 and "outputs.jsonl:2" in warnings[0]


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        ('{"id": "a", "completions": []}\nnot json\n{"id": "b", "completions": []}\n', ":2:", "not valid JSON"),
        ('["a list"]\n', ":1:", "expected a JSON object"),
        ('{"completions": ["x"]}\n', ":1:", "no string `id`"),
        ('{"id": "a", "completions": "x"}\n', ":1:", "list of strings"),
        ('{"id": "a", "completions": []}\n{"id": "a", "completions": []}\n', ":2:", "duplicate id 'a'"),
    ],
)
def test_malformed_outputs_are_input_errors_naming_the_line(tmp_path: Path, content: str, where: str, what: str) -> None:
    (tmp_path / "outputs.jsonl").write_text(content)
    with pytest.raises(InputError) as caught:
        score_run(tmp_path, OPTIONS)
    assert where in str(caught.value) and what in str(caught.value)


def test_lone_surrogates_in_completions_do_not_break_scoring(tmp_path: Path) -> None:
    records = [
        output_record("m", ["\\boxed{\ud800}", "\\boxed{3}"], task="math", answer="3"),
        add_record("c", ["    return a + b  # \udcff\n", "    raise ValueError('\ud800')\n"]),
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # json.dumps escapes the surrogates as \\udXXX, which json.loads turns back into lone surrogates
    (run_dir / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = score_run(run_dir, OPTIONS)
    assert [r["correct"] for r in scores["records"]] == [[False, True], [True, False]]
    assert json.loads((run_dir / "scores.json").read_text())["summary"]["overall"]["correct"] == 2


def test_missing_run_dir_and_missing_outputs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        score_run(tmp_path / "nope", OPTIONS)
    with pytest.raises(InputError, match="no outputs.jsonl"):
        score_run(tmp_path, OPTIONS)


# --- the command line -----------------------------------------------------------------------


def test_cli_score_json(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", MIXED[:4])
    done = kvarn("score", str(run_dir), "--json", "--workers", "2")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["summary"]["overall"]["correct"] == 7
    assert payload["scores"] == str(run_dir / "scores.json")
    assert (run_dir / "scores.json").is_file()


def test_cli_score_table_survives_hostile_code(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    marker = tmp_path / "pwned"
    hostile = [
        f"    import os\n    os.system('touch {marker}')\n    return a + b\n",
        f"    import shutil\n    shutil.rmtree('{tmp_path}')\n    return a + b\n",
        f"    import os\n    os.remove('{victim}')\n    return a + b\n",
        "    while True:\n        pass\n",
        "    import os\n    os._exit(0)\n",
        "    return a + b\n",
    ]
    run_dir = write_run(tmp_path / "run", [add_record("hostile", hostile)])
    done = kvarn("score", str(run_dir), "--timeout", "2")
    assert done.returncode == 0, done.stderr
    assert "overall" in done.stdout and "humaneval" in done.stdout
    assert victim.read_text() == "keep me" and not marker.exists()
    record = json.loads((run_dir / "scores.json").read_text())["records"][0]
    assert record["correct"] == [False, False, False, False, False, True]
    assert record["status"][3] == "timeout"


@pytest.mark.parametrize("target", ["missing-dir", "empty-dir"])
def test_cli_bad_run_dir_is_one_line_and_exit_2(tmp_path: Path, target: str) -> None:
    (tmp_path / "empty-dir").mkdir()
    done = kvarn("score", str(tmp_path / target))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error:")
    assert "Traceback" not in done.stderr
