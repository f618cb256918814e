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


def os_error_message(error: OSError) -> str:
    """An OSError raised while fom read or wrote a file, as one line saying what to do about it."""
    import errno

    # The OS's own words first ("No space left on device"): what the user can search for.
    reason = f"{error.strerror or first_line(error)}{f' ({error.filename})' if error.filename else ''}"
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"{reason}; free some space or write elsewhere, then run again"
    if error.errno == errno.EFBIG:
        return f"{reason}: larger than this system lets a file grow; write to another disk or raise the limit"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; choose a folder you can write to, or fix its permissions"
    return reason


def is_out_of_memory(error) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error. By its type's name, so that checking
    does not import torch (`fom --help` stays fast), and by message for old torch's plain RuntimeError."""
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


def out_of_memory_message(batch_size=None) -> str:
    """One line for a GPU that ran out of memory, naming a --batch-size that uses less."""
    if batch_size:
        hint = f"try --batch-size {batch_size // 2}" if batch_size > 1 else "use a smaller model or a larger GPU"
    else:
        hint = "try a smaller --batch-size (animation uses 32 frames on a GPU by default: --batch-size 16)"
    return f"the GPU ran out of memory; {hint} (or --device cpu)"
