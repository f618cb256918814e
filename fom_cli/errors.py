"""Errors a user can fix. Only cli.py prints them: "fom: error: <message>" and exit code 2."""


class FomError(Exception):
    """Something the user can fix; the message says what to do."""

    exit_code = 2


class BadInput(FomError):
    """An input file or directory that is missing, unreadable or of the wrong kind."""


class BadConfig(FomError):
    """A YAML config that is missing, malformed or has a missing or mistyped key."""


class BadCheckpoint(FomError):
    """A checkpoint that is not one, or whose tensors do not fit the config."""


class BadOutput(FomError):
    """An output path that cannot be written."""


def first_line(error) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
