"""The `kvarn` command line: a Typer app whose commands live in kvarn_cli.commands.

Command modules keep heavy imports (torch, vllm, transformers) inside their functions so that
`kvarn --help` and input validation answer in well under a second.
"""

from __future__ import annotations

import sys

import typer

from kvarn_cli import __version__
from kvarn_cli.commands import analyze as analyze_cmd
from kvarn_cli.commands import compare as compare_cmd
from kvarn_cli.commands import jobs as jobs_cmd
from kvarn_cli.commands import merge as merge_cmd
from kvarn_cli.commands import model as model_cmd
from kvarn_cli.commands import plan as plan_cmd
from kvarn_cli.commands import run as run_cmd
from kvarn_cli.commands import score as score_cmd
from kvarn_cli.errors import KvarnError
from kvarn_cli.console import err_console

app = typer.Typer(
    name="kvarn",
    help=(
        "Offline batch reasoning with a 2-bit KVarN KV cache on an embedded vLLM engine.\n\n"
        "Typical use:  kvarn run prompts.jsonl --bits 2 --model Qwen/Qwen3-4B --out runs/r1;  "
        "kvarn score runs/r1"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("score")(score_cmd.score)
app.command("compare")(compare_cmd.compare)
app.command("merge")(merge_cmd.merge)
app.command("plan")(plan_cmd.plan)
app.add_typer(jobs_cmd.app, name="jobs")
app.command("analyze")(analyze_cmd.analyze)
app.add_typer(model_cmd.app, name="model")


def _version(value: bool) -> None:
    if value:
        print(f"kvarn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Offline batch reasoning with a 2-bit KVarN KV cache."""


def main() -> None:
    """Entry point: turns KvarnError into a one-line message and its exit code, never a traceback."""
    try:
        # Non-standalone click returns a typer.Exit's code instead of raising it.
        code = app(standalone_mode=False)
    except KvarnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # matched by class name: newer typer releases vendor click (typer._click), whose
        # exception classes are not the `click` package's
        if any(cls.__name__ == "ClickException" for cls in type(exc).__mro__):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
