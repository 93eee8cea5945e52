"""User-facing errors: the CLI prints these as one line and exits with their code."""

from __future__ import annotations

from kvarn_cli import exit_codes


class KvarnError(Exception):
    """An error whose message is meant for the user, printed without a traceback."""

    exit_code: int = exit_codes.INTERNAL_ERROR


class InputError(KvarnError):
    """Bad user input: the message names the file (and line) and what was expected."""

    exit_code = exit_codes.BAD_INPUT

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class EngineError(KvarnError):
    """The inference engine is missing, incompatible, or failed to start."""

    exit_code = exit_codes.INTERNAL_ERROR
